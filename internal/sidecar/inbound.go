package sidecar

import (
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/proxy"
	"github.com/plinth-platform/plinth/internal/ratelimit"
)

// Headers the sidecar sets for the service, after removing any a client sent.
const (
	HeaderCaller     = "Plinth-Caller"
	HeaderTenantID   = "Plinth-Tenant-Id"
	HeaderTenantSlug = "Plinth-Tenant-Slug"
	HeaderRegion     = "Plinth-Region"
)

// inbound admits a request to the service: a valid token from an allowed
// caller, within the caller's and the tenant's rate limits. The service
// sees verified Plinth-* headers and never the token.
func (s *Sidecar) inbound(req *proxy.Request) proxy.Route {
	claims, err := s.verifier.Verify(s.ctx, bearer(req.Header.Get("Authorization")))
	if err != nil {
		code := auth.Code(err)
		if code == "" {
			code = "internal"
		}
		s.metrics.rejected(code)
		msg := "the token could not be verified"
		if e, ok := err.(*auth.Error); ok {
			msg = e.Message
		}
		return proxy.Route{Reply: proxy.Problem(auth.Status(code), code, msg)}
	}
	svc := s.service.Load()
	var limitHeaders [][2]string
	if svc.CallerRateLimit > 0 {
		d := s.limiter.Allow(s.ctx, "caller:"+claims.Issuer, svc.CallerRateLimit)
		if !d.Allowed {
			return s.limited("caller", "the caller "+claims.Issuer+" is over its rate limit", d)
		}
		limitHeaders = ratelimit.Headers("caller", d)
	}
	if claims.TenantID != "" && svc.TenantRateLimit > 0 {
		d := s.limiter.Allow(s.ctx, "tenant:"+claims.TenantID, svc.TenantRateLimit)
		if !d.Allowed {
			return s.limited("tenant", "the tenant is over its rate limit", d)
		}
		limitHeaders = append(limitHeaders, ratelimit.Headers("tenant", d)...)
	}
	h := &req.Header
	h.Del("Authorization")
	h.DelPrefix("Plinth-")
	h.Add(HeaderCaller, claims.Issuer)
	if claims.TenantID != "" {
		h.Add(HeaderTenantID, claims.TenantID)
		if claims.TenantSlug != "" {
			h.Add(HeaderTenantSlug, claims.TenantSlug)
		}
		if claims.Region != "" {
			h.Add(HeaderRegion, claims.Region)
		}
	}
	route := proxy.Route{Upstream: s.upstream}
	if len(limitHeaders) > 0 {
		route.OnResponse = func(r *proxy.Response) {
			for _, kv := range limitHeaders {
				r.Header.Add(kv[0], kv[1])
			}
		}
	}
	return route
}

func (s *Sidecar) limited(policy, msg string, d ratelimit.Decision) proxy.Route {
	s.metrics.rejected("rate_limited_" + policy)
	return proxy.Route{Reply: proxy.Problem(429, "rate_limited", msg, ratelimit.Headers(policy, d)...)}
}

func bearer(h string) string {
	if len(h) > 7 && (h[:7] == "Bearer " || h[:7] == "bearer ") {
		return h[7:]
	}
	return ""
}
