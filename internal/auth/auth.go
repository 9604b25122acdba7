// Package auth is Plinth's service-to-service authentication: short-lived
// service tokens compatible with the ASAP conventions (compact JWS signed
// with ES256 by default, RS256 or EdDSA; kid "<issuer>/<key-name>"), their
// minting and strict verification, and the caches that make both cheap: a
// minted token is reused until 95% of its lifetime, a verified token is
// remembered until it expires, and public keys come from the control
// plane's key repository with HTTP caching, a negative cache and
// stale-if-error.
//
// Verification trusts nothing in a token's header but the kid: the
// algorithm is the one bound to the key's type, and jku, x5u, jwk and x5c
// are never read. Sizes and shapes are checked before anything is decoded.
package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Alg is a JWS signature algorithm Plinth accepts.
type Alg string

// Algorithms. ES256 is the default, for interoperability with ASAP libraries.
const (
	ES256 Alg = "ES256"
	RS256 Alg = "RS256"
	EdDSA Alg = "EdDSA"
)

// Limits.
const (
	// MaxTokenBytes bounds a token; longer ones are refused unread.
	MaxTokenBytes = 8 << 10
	// MaxLifetime bounds exp - iat.
	MaxLifetime = time.Hour
	// DefaultLifetime is the lifetime of minted tokens.
	DefaultLifetime = 60 * time.Second
	// Leeway is the clock skew tolerated on iat, nbf and exp.
	Leeway = 30 * time.Second
	// MaxKidBytes bounds a key ID.
	MaxKidBytes = 255
)

// Error is a refusal with a stable code (token_expired, bad_signature, …).
type Error struct {
	Code    string
	Message string
	Err     error // the cause, for logs
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Code returns the refusal code of err, or "" when err is not a refusal.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Claims are the claims of a service token. The tenant claims are set when
// a call is made on behalf of a tenant (by the edge, or a service passing
// its caller's tenant on).
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  Audience `json:"aud"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"`

	TenantID   string `json:"tid,omitempty"`
	TenantSlug string `json:"tslug,omitempty"`
	Region     string `json:"region,omitempty"`
}

// ExpiresAt is the token's expiry as a time.
func (c *Claims) ExpiresAt() time.Time { return time.Unix(c.Expiry, 0) }

// Audience is the aud claim: one string or a list of them.
type Audience []string

// Contains reports whether aud names audience.
func (a Audience) Contains(audience string) bool {
	for _, s := range a {
		if s == audience {
			return true
		}
	}
	return false
}

// MarshalJSON writes a single audience as a string, as ASAP libraries do.
func (a Audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

// UnmarshalJSON accepts a non-empty string or a non-empty list of at most
// 16 non-empty strings, and nothing else.
func (a *Audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		if one == "" {
			return errors.New("empty audience")
		}
		*a = Audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud must be a string or a list of strings")
	}
	if len(many) == 0 || len(many) > 16 {
		return errors.New("aud must list 1 to 16 audiences")
	}
	for _, s := range many {
		if s == "" {
			return errors.New("empty audience")
		}
	}
	*a = many
	return nil
}
