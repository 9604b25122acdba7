package api

import (
	"github.com/plinth-platform/plinth/internal/catalog"
)

// Request and response bodies of the control API, shared by the server and
// the Go client. Field names and shapes are the contract documented in
// openapi.json.

// CreateRegionRequest is the body of POST /v1/regions.
type CreateRegionRequest struct {
	Name    string `json:"name"`
	EdgeURL string `json:"edge_url,omitempty"`
}

// CreateShardRequest is the body of POST /v1/shards.
type CreateShardRequest struct {
	Name     string `json:"name"`
	Region   string `json:"region"`
	DSN      string `json:"dsn"`
	Capacity int    `json:"capacity,omitempty"`
	// Backups is who backs the shard up: "plinth" (the default: pgBackRest,
	// with restores and drills) or "provider" (a managed database).
	Backups string `json:"backups,omitempty"`
}

// Shard is a shard as the API shows it: its DSN without the password.
type Shard struct {
	catalog.Shard
	DSN string `json:"dsn"`
	// Backup is what Plinth's scheduled backups last did for the shard;
	// absent when Plinth does not back it up (a managed shard relies on
	// its provider's backups).
	Backup *catalog.BackupStatus `json:"backup,omitempty"`
}

// RegisterProductRequest is the body of POST /v1/products.
type RegisterProductRequest struct {
	Name         string              `json:"name"`
	Migrations   []catalog.Migration `json:"migrations"`
	WarmPoolSize *int                `json:"warm_pool_size,omitempty"`
	Default      bool                `json:"default,omitempty"`
}

// ProductResponse is a product and whether the request changed it.
type ProductResponse struct {
	Product catalog.Product `json:"product"`
	Changed bool            `json:"changed"`
}

// SetWarmPoolRequest is the body of PUT /v1/warm-pools/{shard}/{product}.
type SetWarmPoolRequest struct {
	Size int `json:"size"`
}

// CreateTenantRequest is the body of POST /v1/tenants.
type CreateTenantRequest struct {
	Slug        string   `json:"slug"`
	DisplayName string   `json:"display_name,omitempty"`
	Region      string   `json:"region,omitempty"`
	Tier        *int     `json:"tier,omitempty"`
	Products    []string `json:"products,omitempty"`
}

// ActionRequest is the optional body of POST /v1/tenants/{ref}/{action}.
type ActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

// ShardBackupsRequest is the body of POST /v1/shards/{name}/backups.
type ShardBackupsRequest struct {
	// Backups is plinth or provider.
	Backups string `json:"backups"`
	Reason  string `json:"reason,omitempty"`
}

// TenantResponse is a tenant and, for work that continues in the
// background, the operation that carries it out.
type TenantResponse struct {
	Tenant    catalog.Tenant     `json:"tenant"`
	Operation *catalog.Operation `json:"operation,omitempty"`
}

// List is a page of items and the cursor of the next page ("" on the last).
type List[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Health is the body of /healthz and /readyz.
type Health struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks,omitempty"`
}
