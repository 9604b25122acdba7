package catalog

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"
)

// Region is a set of shards and edges; tenant data never leaves its home region.
type Region struct {
	Name      string    `json:"name"`
	EdgeURL   string    `json:"edge_url"`
	CreatedAt time.Time `json:"created_at"`
}

// ShardHealth is the result of the periodic health check.
type ShardHealth string

// Shard health values.
const (
	ShardHealthy   ShardHealth = "healthy"
	ShardUnhealthy ShardHealth = "unhealthy"
)

// Shard is one Postgres server holding many tenant databases.
type Shard struct {
	Name            string      `json:"name"`
	Region          string      `json:"region"`
	DSN             string      `json:"-"` // may hold a password: never serialised
	Capacity        int         `json:"capacity"`
	Draining        bool        `json:"draining"`
	Health          ShardHealth `json:"health"`
	HealthError     string      `json:"health_error"`
	HealthChangedAt time.Time   `json:"health_changed_at"`
	CreatedAt       time.Time   `json:"created_at"`
	// Backups says who backs the shard up: BackupsByPlinth or, for a
	// managed database, BackupsByProvider.
	Backups string `json:"backups"`
	// Databases counts the live tenant databases on the shard (assigned,
	// warm and in flight); filled by ListShards and GetShard.
	Databases int `json:"databases"`
}

// Who backs a shard up.
const (
	BackupsByPlinth   = "plinth"
	BackupsByProvider = "provider"
)

// Product is an application whose tenants each get one database.
type Product struct {
	Name           string    `json:"name"`
	CurrentVersion int64     `json:"current_version"`
	WarmPoolSize   int       `json:"warm_pool_size"`
	Default        bool      `json:"default"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// Migration is one tenant-database migration of a product, in goose's SQL
// format (with "-- +goose Up" and optionally "-- +goose Down" sections).
type Migration struct {
	Version  int64  `json:"version"`
	Name     string `json:"name"`
	SQL      string `json:"sql"`
	Checksum string `json:"checksum,omitempty"`
}

// Tenant is a customer organisation.
type Tenant struct {
	ID                uuid.UUID   `json:"id"`
	Slug              string      `json:"slug"`
	DisplayName       string      `json:"display_name"`
	Region            string      `json:"region"`
	Tier              int         `json:"tier"`
	State             TenantState `json:"state"`
	StateReason       string      `json:"state_reason,omitempty"`
	StateBeforeDelete TenantState `json:"state_before_delete,omitempty"`
	CreatedAt         time.Time   `json:"created_at"`
	UpdatedAt         time.Time   `json:"updated_at"`
	DeletedAt         *time.Time  `json:"deleted_at,omitempty"`
	PurgeAfter        *time.Time  `json:"purge_after,omitempty"`
	PurgedAt          *time.Time  `json:"purged_at,omitempty"`

	Installations []Installation `json:"installations"`
}

// InstallationState is the state of a (tenant, product) pair.
type InstallationState string

// Installation states.
const (
	InstallationPending InstallationState = "pending"
	InstallationReady   InstallationState = "ready"
	InstallationPurged  InstallationState = "purged"
)

// Installation is a product enabled for a tenant; it owns one tenant database.
type Installation struct {
	ID        uuid.UUID         `json:"id"`
	TenantID  uuid.UUID         `json:"tenant_id"`
	Product   string            `json:"product"`
	State     InstallationState `json:"state"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// The installation's live database, when it has one.
	DatabaseID    *uuid.UUID `json:"database_id,omitempty"`
	Shard         string     `json:"shard,omitempty"`
	Database      string     `json:"database,omitempty"`
	SchemaVersion int64      `json:"schema_version"`
}

// DatabaseState is the state of a tenant database Plinth created or intends to create.
type DatabaseState string

// Database states.
const (
	DatabaseCreating DatabaseState = "creating"
	DatabaseWarm     DatabaseState = "warm"
	DatabaseAssigned DatabaseState = "assigned"
	DatabaseDropping DatabaseState = "dropping"
	DatabaseDropped  DatabaseState = "dropped"
	// DatabaseReplaced was swapped out by a restore; it is kept for the
	// retention window so that the restore can be undone.
	DatabaseReplaced DatabaseState = "replaced"
)

// Database is a tenant database on a shard, or the intent to create one.
type Database struct {
	ID             uuid.UUID     `json:"id"`
	Name           string        `json:"name"`
	Shard          string        `json:"shard"`
	Product        string        `json:"product"`
	State          DatabaseState `json:"state"`
	SchemaVersion  int64         `json:"schema_version"`
	InstallationID *uuid.UUID    `json:"installation_id,omitempty"`
	CreatedAt      time.Time     `json:"created_at"`
	UpdatedAt      time.Time     `json:"updated_at"`
}

// OperationState is the state of long-running work.
type OperationState string

// Operation states.
const (
	OperationRunning   OperationState = "running"
	OperationSucceeded OperationState = "succeeded"
	OperationFailed    OperationState = "failed"
)

// Operation is long-running work the API accepted and a worker carries out.
type Operation struct {
	ID         uuid.UUID      `json:"id"`
	Kind       string         `json:"kind"`
	TenantID   *uuid.UUID     `json:"tenant_id,omitempty"`
	State      OperationState `json:"state"`
	Error      string         `json:"error,omitempty"`
	CreatedAt  time.Time      `json:"created_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	FinishedAt *time.Time     `json:"finished_at,omitempty"`
	JobID      *int64         `json:"-"`
}

// AuditEntry records who did what to which target, when and why.
type AuditEntry struct {
	ID         int64     `json:"id"`
	At         time.Time `json:"at"`
	Actor      string    `json:"actor"`
	Action     string    `json:"action"`
	TargetKind string    `json:"target_kind"`
	TargetID   string    `json:"target_id"`
	FromState  string    `json:"from_state,omitempty"`
	ToState    string    `json:"to_state,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	RequestID  string    `json:"request_id,omitempty"`
}

// Change is one row of the change log.
type Change struct {
	Version     int64           `json:"version"`
	Entity      string          `json:"entity"`
	EntityID    string          `json:"entity_id"`
	TenantID    *uuid.UUID      `json:"tenant_id,omitempty"`
	Op          string          `json:"op"`
	Data        json.RawMessage `json:"data"`
	CommittedAt time.Time       `json:"committed_at"`
}

// WarmPool is the configured and actual size of one product's warm pool on one shard.
type WarmPool struct {
	Shard   string `json:"shard"`
	Product string `json:"product"`
	// Size is the target number of warm databases; Configured says whether it
	// was set for this shard or comes from the product's default.
	Size       int  `json:"size"`
	Configured bool `json:"configured"`
	Ready      int  `json:"ready"`
	Creating   int  `json:"creating"`
}
