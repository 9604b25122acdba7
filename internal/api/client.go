package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
)

// Client calls the control API. POSTs carry a fresh Idempotency-Key and are
// retried with it when the connection fails, so a retry never does the work
// twice.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// NewClient returns a client for the API at baseURL.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 90 * time.Second}}
}

func newKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Do sends a request and decodes a JSON response into out (when not nil).
// A problem response is returned as a *Problem error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	key := ""
	if method == http.MethodPost {
		key = newKey()
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * 300 * time.Millisecond):
			}
		}
		req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if key != "" {
			req.Header.Set(headerIdempotencyKey, key)
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		resp, err := c.HTTP.Do(req)
		if err != nil {
			lastErr = fmt.Errorf("cannot reach the Plinth API at %s: %w", c.BaseURL, err)
			if method != http.MethodGet && key == "" {
				return lastErr // not safe to retry
			}
			continue
		}
		return decodeResponse(resp, out)
	}
	return lastErr
}

func decodeResponse(resp *http.Response, out any) error {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		p := &Problem{}
		if json.Unmarshal(data, p) != nil || p.Code == "" {
			return &Problem{Status: resp.StatusCode, Code: "http_error", Title: resp.Status,
				Detail: strings.TrimSpace(truncate(string(data), 200))}
		}
		return p
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode %s response: %w", resp.Request.URL.Path, err)
	}
	return nil
}

// IsCode reports whether err is a problem with the given code.
func IsCode(err error, code string) bool {
	var p *Problem
	return errors.As(err, &p) && p.Code == code
}

// ListRegions returns all regions.
func (c *Client) ListRegions(ctx context.Context) ([]catalog.Region, error) {
	var out List[catalog.Region]
	return out.Items, c.Do(ctx, "GET", "/v1/regions", nil, &out)
}

// CreateRegion adds a region.
func (c *Client) CreateRegion(ctx context.Context, req CreateRegionRequest) (catalog.Region, error) {
	var out catalog.Region
	return out, c.Do(ctx, "POST", "/v1/regions", req, &out)
}

// ListShards returns the shards (of one region when region is not empty).
func (c *Client) ListShards(ctx context.Context, region string) ([]Shard, error) {
	var out List[Shard]
	return out.Items, c.Do(ctx, "GET", "/v1/shards?region="+url.QueryEscape(region), nil, &out)
}

// CreateShard registers a shard.
func (c *Client) CreateShard(ctx context.Context, req CreateShardRequest) (Shard, error) {
	var out Shard
	return out, c.Do(ctx, "POST", "/v1/shards", req, &out)
}

// GetShard returns one shard.
func (c *Client) GetShard(ctx context.Context, name string) (Shard, error) {
	var out Shard
	return out, c.Do(ctx, "GET", "/v1/shards/"+url.PathEscape(name), nil, &out)
}

// DrainShard drains (or, with drain false, undrains) a shard.
func (c *Client) DrainShard(ctx context.Context, name string, drain bool, reason string) (Shard, error) {
	verb := "undrain"
	if drain {
		verb = "drain"
	}
	var out Shard
	return out, c.Do(ctx, "POST", "/v1/shards/"+url.PathEscape(name)+"/"+verb, ActionRequest{Reason: reason}, &out)
}

// SetShardBackups records who backs a shard up (plinth or provider).
func (c *Client) SetShardBackups(ctx context.Context, name, backups, reason string) (Shard, error) {
	var out Shard
	return out, c.Do(ctx, "POST", "/v1/shards/"+url.PathEscape(name)+"/backups", ShardBackupsRequest{Backups: backups, Reason: reason}, &out)
}

// ListProducts returns all products.
func (c *Client) ListProducts(ctx context.Context) ([]catalog.Product, error) {
	var out List[catalog.Product]
	return out.Items, c.Do(ctx, "GET", "/v1/products", nil, &out)
}

// RegisterProduct registers a product or appends migrations to it.
func (c *Client) RegisterProduct(ctx context.Context, req RegisterProductRequest) (ProductResponse, error) {
	var out ProductResponse
	return out, c.Do(ctx, "POST", "/v1/products", req, &out)
}

// GetProduct returns one product.
func (c *Client) GetProduct(ctx context.Context, name string) (catalog.Product, error) {
	var out catalog.Product
	return out, c.Do(ctx, "GET", "/v1/products/"+url.PathEscape(name), nil, &out)
}

// ListWarmPools returns the warm pools.
func (c *Client) ListWarmPools(ctx context.Context) ([]catalog.WarmPool, error) {
	var out List[catalog.WarmPool]
	return out.Items, c.Do(ctx, "GET", "/v1/warm-pools", nil, &out)
}

// SetWarmPool sets a warm pool's size.
func (c *Client) SetWarmPool(ctx context.Context, shard, product string, size int) (catalog.WarmPool, error) {
	var out catalog.WarmPool
	return out, c.Do(ctx, "PUT", "/v1/warm-pools/"+url.PathEscape(shard)+"/"+url.PathEscape(product), SetWarmPoolRequest{Size: size}, &out)
}

// CreateTenant creates a tenant; provisioning continues in the background.
func (c *Client) CreateTenant(ctx context.Context, req CreateTenantRequest) (TenantResponse, error) {
	var out TenantResponse
	return out, c.Do(ctx, "POST", "/v1/tenants", req, &out)
}

// TenantQuery filters ListTenants.
type TenantQuery struct {
	State, Region, Shard, Product, Cursor string
	Limit                                 int
}

// ListTenants returns a page of tenants.
func (c *Client) ListTenants(ctx context.Context, q TenantQuery) (List[catalog.Tenant], error) {
	v := url.Values{}
	for k, s := range map[string]string{"state": q.State, "region": q.Region, "shard": q.Shard, "product": q.Product, "cursor": q.Cursor} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out List[catalog.Tenant]
	return out, c.Do(ctx, "GET", "/v1/tenants?"+v.Encode(), nil, &out)
}

// GetTenant returns a tenant by slug or ID.
func (c *Client) GetTenant(ctx context.Context, ref string) (catalog.Tenant, error) {
	var out catalog.Tenant
	return out, c.Do(ctx, "GET", "/v1/tenants/"+url.PathEscape(ref), nil, &out)
}

// TenantAudit returns a tenant's audit history.
func (c *Client) TenantAudit(ctx context.Context, ref string) ([]catalog.AuditEntry, error) {
	var out List[catalog.AuditEntry]
	return out.Items, c.Do(ctx, "GET", "/v1/tenants/"+url.PathEscape(ref)+"/audit", nil, &out)
}

// TenantAction runs a lifecycle action (suspend, resume, …) on a tenant.
func (c *Client) TenantAction(ctx context.Context, ref string, action catalog.Action, reason string) (TenantResponse, error) {
	var out TenantResponse
	return out, c.Do(ctx, "POST", "/v1/tenants/"+url.PathEscape(ref)+"/"+string(action), ActionRequest{Reason: reason}, &out)
}

// GetOperation returns an operation, waiting up to wait for it to finish.
func (c *Client) GetOperation(ctx context.Context, id string, wait time.Duration) (catalog.Operation, error) {
	var out catalog.Operation
	path := "/v1/operations/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + min(wait, maxWait).String()
	}
	return out, c.Do(ctx, "GET", path, nil, &out)
}

// WaitOperation waits until an operation finishes (or ctx ends), calling
// progress after each long poll.
func (c *Client) WaitOperation(ctx context.Context, id string, progress func(catalog.Operation)) (catalog.Operation, error) {
	for {
		op, err := c.GetOperation(ctx, id, 30*time.Second)
		if err != nil {
			return op, err
		}
		if progress != nil {
			progress(op)
		}
		if op.State != catalog.OperationRunning {
			return op, nil
		}
	}
}

// CreateService registers a service; the answer holds its registration
// credential, shown this once.
func (c *Client) CreateService(ctx context.Context, req ServiceRequest) (ServiceCreated, error) {
	var out ServiceCreated
	return out, c.Do(ctx, "POST", "/v1/services", req, &out)
}

// ListServices returns all services.
func (c *Client) ListServices(ctx context.Context) ([]catalog.Service, error) {
	var out List[catalog.Service]
	return out.Items, c.Do(ctx, "GET", "/v1/services", nil, &out)
}

// GetService returns one service.
func (c *Client) GetService(ctx context.Context, name string) (catalog.Service, error) {
	var out catalog.Service
	return out, c.Do(ctx, "GET", "/v1/services/"+url.PathEscape(name), nil, &out)
}

// UpdateService sets a service's allowed callers, replay protection and limits.
func (c *Client) UpdateService(ctx context.Context, name string, req ServiceRequest) (catalog.Service, error) {
	var out catalog.Service
	return out, c.Do(ctx, "PUT", "/v1/services/"+url.PathEscape(name), req, &out)
}

// RotateKeys asks a service's sidecars for new keys.
func (c *Client) RotateKeys(ctx context.Context, name string) (catalog.Service, error) {
	var out catalog.Service
	return out, c.Do(ctx, "POST", "/v1/services/"+url.PathEscape(name)+"/rotate-keys", nil, &out)
}

// Endpoints returns a service's live instances.
func (c *Client) Endpoints(ctx context.Context, name string) (Endpoints, error) {
	var out Endpoints
	return out, c.Do(ctx, "GET", "/v1/services/"+url.PathEscape(name)+"/endpoints", nil, &out)
}

// Routes returns the edge's route table.
func (c *Client) Routes(ctx context.Context) ([]catalog.Route, error) {
	var out List[catalog.Route]
	return out.Items, c.Do(ctx, "GET", "/v1/routes", nil, &out)
}

// AddDomain claims a custom domain for a tenant.
func (c *Client) AddDomain(ctx context.Context, ref, domain string) (DomainResponse, error) {
	var out DomainResponse
	return out, c.Do(ctx, "POST", "/v1/tenants/"+url.PathEscape(ref)+"/domains", DomainRequest{Domain: domain}, &out)
}

// ListDomains returns a tenant's custom domains.
func (c *Client) ListDomains(ctx context.Context, ref string) ([]DomainResponse, error) {
	var out List[DomainResponse]
	return out.Items, c.Do(ctx, "GET", "/v1/tenants/"+url.PathEscape(ref)+"/domains", nil, &out)
}

// VerifyDomain checks a tenant's proof of control of a domain.
func (c *Client) VerifyDomain(ctx context.Context, ref, domain string) (DomainResponse, error) {
	var out DomainResponse
	return out, c.Do(ctx, "POST", "/v1/tenants/"+url.PathEscape(ref)+"/domains/"+url.PathEscape(domain)+"/verify", nil, &out)
}

// RemoveDomain drops a tenant's custom domain.
func (c *Client) RemoveDomain(ctx context.Context, ref, domain string) error {
	return c.Do(ctx, "DELETE", "/v1/tenants/"+url.PathEscape(ref)+"/domains/"+url.PathEscape(domain), nil, nil)
}

// StartMigration starts migrating every tenant database of product.
func (c *Client) StartMigration(ctx context.Context, product string, req MigrateRequest) (MigrationRunResponse, error) {
	var out MigrationRunResponse
	return out, c.Do(ctx, "POST", "/v1/products/"+url.PathEscape(product)+"/migrations", req, &out)
}

// ListMigrations returns a product's migration runs, newest first.
func (c *Client) ListMigrations(ctx context.Context, product string) ([]catalog.MigrationRun, error) {
	var out List[catalog.MigrationRun]
	return out.Items, c.Do(ctx, "GET", "/v1/products/"+url.PathEscape(product)+"/migrations", nil, &out)
}

// GetMigration returns a run and its failed tasks.
func (c *Client) GetMigration(ctx context.Context, id string) (MigrationRunResponse, error) {
	var out MigrationRunResponse
	return out, c.Do(ctx, "GET", "/v1/migrations/"+url.PathEscape(id), nil, &out)
}

// MigrationAction pauses or resumes a run.
func (c *Client) MigrationAction(ctx context.Context, id, action string) (MigrationRunResponse, error) {
	var out MigrationRunResponse
	return out, c.Do(ctx, "POST", "/v1/migrations/"+url.PathEscape(id)+"/"+url.PathEscape(action), nil, &out)
}

// ListBackups returns each backed-up shard's backups.
func (c *Client) ListBackups(ctx context.Context) ([]backup.Info, error) {
	var out List[backup.Info]
	return out.Items, c.Do(ctx, "GET", "/v1/backups", nil, &out)
}

// StartBackup queues a backup of a shard; GetBackupRun follows it.
func (c *Client) StartBackup(ctx context.Context, req BackupRequest) (provision.BackupRun, error) {
	var out provision.BackupRun
	return out, c.Do(ctx, "POST", "/v1/backups", req, &out)
}

// GetBackupRun returns a backup run.
func (c *Client) GetBackupRun(ctx context.Context, id int64) (provision.BackupRun, error) {
	var out provision.BackupRun
	return out, c.Do(ctx, "GET", fmt.Sprintf("/v1/backups/runs/%d", id), nil, &out)
}

// RunBackup backs a shard up, waiting (polling each second) until the
// backup has finished, and returns the shard's backups.
func (c *Client) RunBackup(ctx context.Context, req BackupRequest) (backup.Info, error) {
	run, err := c.StartBackup(ctx, req)
	for err == nil && !run.Finished() {
		select {
		case <-ctx.Done():
			return backup.Info{}, fmt.Errorf("stopped waiting; backup run %d goes on: %w", run.ID, ctx.Err())
		case <-time.After(time.Second):
		}
		run, err = c.GetBackupRun(ctx, run.ID)
	}
	if err != nil {
		return backup.Info{}, err
	}
	if run.State != "succeeded" {
		return backup.Info{}, fmt.Errorf("the backup of %s failed after %d attempt(s): %s", run.Shard, run.Attempts, run.Error)
	}
	infos, err := c.ListBackups(ctx)
	if err != nil {
		return backup.Info{}, err
	}
	for _, in := range infos {
		if in.Name == req.Shard {
			return in, nil
		}
	}
	return backup.Info{}, fmt.Errorf("shard %s is missing from the repository's list", req.Shard)
}

// RebuildCatalog recreates, from the identity rows of the databases on the
// shards, the tenants, installations and databases the catalog lacks (with
// dryRun, reports what it would recreate and writes nothing).
func (c *Client) RebuildCatalog(ctx context.Context, dryRun bool) (provision.RebuildReport, error) {
	var out provision.RebuildReport
	return out, c.Do(ctx, "POST", "/v1/catalog/rebuild", RebuildCatalogRequest{FromShards: true, DryRun: dryRun}, &out)
}
