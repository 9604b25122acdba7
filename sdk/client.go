package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/plinth-platform/plinth/internal/ari"
)

// ServiceClient calls another service through this service's sidecar,
// which finds the service, signs the call with a service token, retries
// idempotent requests and balances across instances.
type ServiceClient struct {
	service string
	egress  string
	http    *http.Client
}

// Client returns a client for service, through the sidecar of the running
// App (Config.Egress).
func Client(service string) *ServiceClient {
	egress := ""
	if a := defaultApp.Load(); a != nil {
		egress = a.cfg.Egress
	}
	return &ServiceClient{service: service, egress: egress, http: &http.Client{Timeout: 30 * time.Second}}
}

// Do sends req, whose URL path is the path on the service (its scheme and
// host are ignored). The request's trace context goes along.
func (c *ServiceClient) Do(req *http.Request) (*http.Response, error) {
	if c.egress == "" {
		return nil, errors.New("sdk: no sidecar egress is configured (PLINTH_EGRESS)")
	}
	if c.service == "" || strings.ContainsAny(c.service, "/?#") {
		return nil, errors.New("sdk: a service name is one path segment")
	}
	u := *req.URL
	u.Scheme, u.Host = "http", c.egress
	u.Path = "/" + c.service + "/" + strings.TrimPrefix(u.Path, "/")
	u.RawPath = ""
	out := req.Clone(req.Context())
	out.URL, out.Host, out.RequestURI = &u, c.egress, ""
	if tp, ok := req.Context().Value(traceKey{}).(string); ok && tp != "" && out.Header.Get("traceparent") == "" {
		out.Header.Set("traceparent", tp)
	}
	return c.http.Do(out)
}

// Get fetches path from the service.
func (c *ServiceClient) Get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://service"+path, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// Post sends body to path on the service.
func (c *ServiceClient) Post(ctx context.Context, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://service"+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	return c.Do(req)
}

// ARI is a Plinth resource identifier,
// ari:cloud:<product>:<tenant-id>:<type>/<id>.
type ARI = ari.ARI

// NewARI returns the ARI of a resource of this request's tenant in product.
func NewARI(ctx context.Context, product, typ, id string) (ARI, error) {
	t, ok := Tenant(ctx)
	if !ok {
		return ARI{}, ErrNoTenant
	}
	return ari.New(product, t.ID, typ, id)
}

// ParseARI parses an ARI and checks it names a resource of this request's
// tenant in product: a crafted ARI naming another tenant is refused.
func ParseARI(ctx context.Context, product, s string) (ARI, error) {
	t, ok := Tenant(ctx)
	if !ok {
		return ARI{}, ErrNoTenant
	}
	a, err := ari.Parse(s)
	if err != nil {
		return ARI{}, err
	}
	if a.Tenant != t.ID || a.Product != product {
		return ARI{}, ErrForeignARI
	}
	return a, nil
}

// ErrForeignARI: an ARI names another tenant's (or product's) resource.
var ErrForeignARI = errors.New("the ARI names a resource of another tenant or product")
