// Package serviceauth verifies Plinth service tokens inside a Go service,
// for services that run without a sidecar. It does what the sidecar does
// inbound: verify the caller's token against the key repository (strictly,
// with the same caches), check the caller against an allow-list, and give
// handlers the verified caller and tenant.
//
//	h, err := serviceauth.Middleware(serviceauth.Config{
//		Service:        "notes",
//		KeyRepository:  "https://plinth.example.com", // the control plane
//		AllowedCallers: []string{"edge", "tracker"},
//	}, mux)
//
// Services behind a sidecar do not need this: they read the Plinth-Caller
// and Plinth-Tenant-Id headers the sidecar sets.
package serviceauth

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/auth"
)

// Config configures the middleware.
type Config struct {
	// Service is this service's name: tokens must be addressed to it.
	Service string
	// KeyRepository is the control plane's URL, where callers' public keys are.
	KeyRepository string
	// AllowedCallers are the services that may call this one.
	AllowedCallers []string
	// ReplayProtection accepts each token once; Redis shares the record
	// between replicas (in-process when nil).
	ReplayProtection bool
	Redis            *redis.Client
}

// Middleware returns next behind token verification. Refusals are RFC 9457
// problems with the same codes the sidecar uses.
func Middleware(cfg Config, next http.Handler) (http.Handler, error) {
	if cfg.Service == "" || cfg.KeyRepository == "" {
		return nil, errors.New("serviceauth: Service and KeyRepository are required")
	}
	vc := auth.VerifierConfig{
		Audience:    cfg.Service,
		Keys:        auth.NewRepository(auth.RepositoryConfig{BaseURL: cfg.KeyRepository}),
		AllowIssuer: func(iss string) bool { return slices.Contains(cfg.AllowedCallers, iss) },
	}
	if cfg.ReplayProtection {
		vc.Replay = auth.NewMemoryReplay(time.Now)
		if cfg.Redis != nil {
			vc.Replay = auth.NewRedisReplay(cfg.Redis, "plinth:", time.Now)
		}
	}
	return auth.Middleware(auth.NewVerifier(vc), next), nil
}

// Caller returns the verified caller of the request ctx belongs to.
func Caller(ctx context.Context) (string, bool) {
	c, ok := auth.ClaimsFrom(ctx)
	if !ok {
		return "", false
	}
	return c.Issuer, true
}

// Tenant is the tenant a call is made on behalf of.
type Tenant struct {
	ID, Slug, Region string
}

// TenantFrom returns the verified tenant of the request ctx belongs to, if
// the call carries one.
func TenantFrom(ctx context.Context) (Tenant, bool) {
	c, ok := auth.ClaimsFrom(ctx)
	if !ok || c.TenantID == "" {
		return Tenant{}, false
	}
	return Tenant{ID: c.TenantID, Slug: c.TenantSlug, Region: c.Region}, true
}
