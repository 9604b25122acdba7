package auth

import (
	"context"
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// KeySource finds verification keys by kid.
type KeySource interface {
	Key(ctx context.Context, kid string) (PublicKey, error)
}

// ReplayStore remembers token IDs. Seen records jti for audience until the
// given time and reports whether it was already recorded.
type ReplayStore interface {
	Seen(ctx context.Context, audience, jti string, until time.Time) (replayed bool, err error)
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Audience is the name tokens must be addressed to (this service).
	Audience string
	Keys     KeySource
	// Replay, when set, refuses a token ID seen before (within its lifetime).
	// Callers of such an audience must mint a fresh token per request.
	Replay ReplayStore
	// AllowIssuer is consulted before any key is fetched, so tokens from
	// callers that may not call at all never cause a key fetch. Nil allows all.
	AllowIssuer func(issuer string) bool
	// AllowSubject permits sub ≠ iss for some issuers. Nil: sub must equal iss.
	AllowSubject func(issuer, subject string) bool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// CacheSize bounds the verified-token cache (default 10000).
	CacheSize int
}

// Verifier checks service tokens addressed to one audience. It remembers
// verified tokens until they expire, so a caller reusing its token pays the
// signature check once; the replay check is never skipped.
type Verifier struct {
	cfg    VerifierConfig
	shards [16]cacheShard
	hits   atomic.Int64
	misses atomic.Int64
}

type cacheShard struct {
	mu      sync.Mutex
	entries map[[32]byte]*Claims
}

// NewVerifier returns a Verifier.
func NewVerifier(cfg VerifierConfig) *Verifier {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 10000
	}
	v := &Verifier{cfg: cfg}
	for i := range v.shards {
		v.shards[i].entries = map[[32]byte]*Claims{}
	}
	return v
}

// CacheStats returns how many verifications the cache answered and how many
// needed the full check.
func (v *Verifier) CacheStats() (hits, misses int64) { return v.hits.Load(), v.misses.Load() }

// Verify checks token and returns its claims, or an *Error with the reason.
// The returned claims are shared: do not modify them.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, refuse("token_missing", "a service token is required (Authorization: Bearer <token>)")
	}
	if len(token) > MaxTokenBytes {
		return nil, refuse("token_malformed", "the token is larger than %d bytes", MaxTokenBytes)
	}
	now := v.cfg.Now()
	// The hash only reads the token: no need to copy it first.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	shard := &v.shards[sum[0]&15]
	shard.mu.Lock()
	c, ok := shard.entries[sum]
	shard.mu.Unlock()
	if ok {
		v.hits.Add(1)
		if now.Unix() >= c.Expiry+int64(Leeway/time.Second) {
			shard.mu.Lock()
			delete(shard.entries, sum)
			shard.mu.Unlock()
			return nil, refuse("token_expired", "the token expired at %s", time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339))
		}
		return c, v.checkReplay(ctx, c)
	}
	v.misses.Add(1)
	p, err := parse(token)
	if err != nil {
		return nil, err
	}
	c = &p.claims
	if err := v.checkClaims(p, now); err != nil {
		return nil, err
	}
	if v.cfg.AllowIssuer != nil && !v.cfg.AllowIssuer(c.Issuer) {
		return nil, refuse("caller_not_allowed", "%s may not call %s", truncate(c.Issuer, 64), v.cfg.Audience)
	}
	key, err := v.cfg.Keys.Key(ctx, p.header.Kid)
	if err != nil {
		return nil, err
	}
	if err := p.verifySignature(key); err != nil {
		return nil, err
	}
	if err := v.checkReplay(ctx, c); err != nil {
		return nil, err
	}
	shard.mu.Lock()
	if len(shard.entries) >= v.cfg.CacheSize/len(v.shards) {
		shard.evict(now)
	}
	shard.entries[sum] = c
	shard.mu.Unlock()
	return c, nil
}

// checkClaims checks everything that needs no key: who issued the token,
// for whom, and when.
func (v *Verifier) checkClaims(p *parsed, now time.Time) error {
	c := &p.claims
	issuer, _ := ValidateKid(p.header.Kid) // parse validated it
	switch {
	case c.Issuer == "":
		return refuse("token_malformed", "the token has no iss")
	case issuer != c.Issuer:
		return refuse("kid_not_owned_by_issuer", "kid %s does not belong to issuer %s", p.header.Kid, truncate(c.Issuer, 64))
	case c.Subject != c.Issuer && (v.cfg.AllowSubject == nil || !v.cfg.AllowSubject(c.Issuer, c.Subject)):
		return refuse("bad_subject", "sub must equal iss")
	case !c.Audience.Contains(v.cfg.Audience):
		return refuse("bad_audience", "the token is not addressed to %s", v.cfg.Audience)
	case c.ID == "" || len(c.ID) > 128:
		return refuse("token_malformed", "jti must be 1 to 128 characters")
	case c.IssuedAt == 0 || c.Expiry == 0:
		return refuse("token_malformed", "iat and exp are required")
	}
	leeway := int64(Leeway / time.Second)
	unix := now.Unix()
	switch {
	case c.IssuedAt > unix+leeway:
		return refuse("token_not_yet_valid", "the token was issued in the future")
	case c.NotBefore > unix+leeway:
		return refuse("token_not_yet_valid", "the token is not valid before %s", time.Unix(c.NotBefore, 0).UTC().Format(time.RFC3339))
	case c.Expiry <= c.IssuedAt:
		return refuse("token_malformed", "exp must be after iat")
	case c.Expiry-c.IssuedAt > int64(MaxLifetime/time.Second):
		return refuse("token_lifetime_too_long", "the token lives longer than %s", MaxLifetime)
	case unix >= c.Expiry+leeway:
		return refuse("token_expired", "the token expired at %s", time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

func (v *Verifier) checkReplay(ctx context.Context, c *Claims) error {
	if v.cfg.Replay == nil {
		return nil
	}
	replayed, err := v.cfg.Replay.Seen(ctx, v.cfg.Audience, c.ID, time.Unix(c.Expiry, 0).Add(Leeway))
	if err != nil {
		return &Error{Code: "replay_check_failed", Message: "cannot check the token for replay", Err: err}
	}
	if replayed {
		return refuse("replayed", "the token was already used (jti %s)", truncate(c.ID, 40))
	}
	return nil
}

// evict drops expired entries, or every other entry when none expired.
func (s *cacheShard) evict(now time.Time) {
	n := 0
	for k, c := range s.entries {
		if now.Unix() >= c.Expiry {
			delete(s.entries, k)
			n++
		}
	}
	if n > 0 {
		return
	}
	i := 0
	for k := range s.entries {
		if i%2 == 0 {
			delete(s.entries, k)
		}
		i++
	}
}
