package auth

import (
	"context"
	"net/http"
	"strings"

	"github.com/plinth-platform/plinth/internal/problem"
)

// Status is the HTTP status for a refusal code.
func Status(code string) int {
	switch code {
	case "caller_not_allowed":
		return http.StatusForbidden
	case "rate_limited":
		return http.StatusTooManyRequests
	case "replay_check_failed", "key_repository_unavailable":
		return http.StatusServiceUnavailable
	case "":
		return http.StatusInternalServerError
	}
	return http.StatusUnauthorized
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header, or "".
func BearerToken(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

type claimsKey struct{}

// WithClaims returns ctx carrying verified claims.
func WithClaims(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFrom returns the verified claims of the request ctx belongs to.
func ClaimsFrom(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// Middleware verifies the service token of every request with v and
// refuses those without a valid one with a problem; handlers find the
// claims with ClaimsFrom. It is what the sidecar does inbound, for services
// that run without one.
func Middleware(v *Verifier, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := v.Verify(r.Context(), BearerToken(r))
		if err != nil {
			code := Code(err)
			msg := "the token could not be verified"
			if e, ok := err.(*Error); ok {
				msg = e.Message
			}
			if code == "" {
				code = "internal"
			}
			problem.Write(w, r, &problem.Problem{Status: Status(code), Code: code, Detail: msg})
			return
		}
		next.ServeHTTP(w, r.WithContext(WithClaims(r.Context(), c)))
	})
}
