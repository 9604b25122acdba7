package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// RepositoryConfig configures a Repository.
type RepositoryConfig struct {
	// BaseURL is the control plane's URL; an issuer's keys are at
	// <BaseURL>/v1/keys/<issuer> (a JWKS).
	BaseURL string
	HTTP    *http.Client
	// MissTTL is how long a kid the repository does not know is remembered
	// as unknown (default 30s).
	MissTTL time.Duration
	// IssuerFetchInterval is how often keys of one issuer may be fetched
	// (default 1s, burst 5); FetchesPerSecond caps all fetches (default 10,
	// burst 20). Together they bound what a flood of unknown kids costs the
	// repository.
	IssuerFetchInterval time.Duration
	FetchesPerSecond    float64
	// DefaultTTL applies when a response has no max-age (default 5m).
	DefaultTTL time.Duration
	Now        func() time.Time
}

// Repository is a KeySource backed by the control plane's key repository.
// An unknown kid fetches its issuer's whole key set, so one request learns
// every key a rotation published. Keys are cached for the max-age the
// repository sends; one fetch per issuer is in flight at a time; when the
// repository is down, cached keys keep working past their max-age.
type Repository struct {
	cfg     RepositoryConfig
	group   singleflight.Group
	global  *rate.Limiter
	fetches atomic.Int64

	mu      sync.Mutex
	keys    map[string]cachedKey
	misses  map[string]time.Time // kid -> unknown until
	issuers map[string]*rate.Limiter
}

type cachedKey struct {
	key   PublicKey
	fresh time.Time
}

// NewRepository returns a Repository.
func NewRepository(cfg RepositoryConfig) *Repository {
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.MissTTL == 0 {
		cfg.MissTTL = 30 * time.Second
	}
	if cfg.IssuerFetchInterval == 0 {
		cfg.IssuerFetchInterval = time.Second
	}
	if cfg.FetchesPerSecond == 0 {
		cfg.FetchesPerSecond = 10
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = 5 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return &Repository{
		cfg: cfg, global: rate.NewLimiter(rate.Limit(cfg.FetchesPerSecond), 20),
		keys: map[string]cachedKey{}, misses: map[string]time.Time{}, issuers: map[string]*rate.Limiter{},
	}
}

var errFetchLimited = errors.New("key fetches are rate limited")

// Fetches returns how many times the repository was asked for a key.
func (r *Repository) Fetches() int64 { return r.fetches.Load() }

// Key returns the public key kid names.
func (r *Repository) Key(ctx context.Context, kid string) (PublicKey, error) {
	issuer, err := ValidateKid(kid)
	if err != nil {
		return PublicKey{}, err
	}
	now := r.cfg.Now()
	r.mu.Lock()
	cached, ok := r.keys[kid]
	if ok && now.Before(cached.fresh) {
		r.mu.Unlock()
		return cached.key, nil
	}
	if until, missed := r.misses[kid]; missed && now.Before(until) {
		r.mu.Unlock()
		return PublicKey{}, refuse("unknown_key", "key %s is not in the key repository", kid)
	}
	r.mu.Unlock()
	// Callers waiting for the same issuer share one fetch, and only a real
	// fetch is charged to the budgets.
	_, err, _ = r.group.Do(issuer, func() (any, error) {
		r.mu.Lock()
		allowed := r.issuerLimiter(issuer).Allow() && r.global.Allow()
		r.mu.Unlock()
		if !allowed {
			return nil, errFetchLimited
		}
		return nil, r.fetch(ctx, issuer)
	})
	if err != nil {
		if ok {
			return cached.key, nil // stale-if-error: the repository is down or busy, the key is not gone
		}
		if errors.Is(err, errFetchLimited) {
			return PublicKey{}, refuse("unknown_key", "key %s is unknown and key fetches are rate limited", kid)
		}
		return PublicKey{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, found := r.keys[kid]; found && !k.fresh.Before(now) {
		return k.key, nil
	}
	if len(r.misses) >= 10000 {
		clear(r.misses)
	}
	r.misses[kid] = now.Add(r.cfg.MissTTL)
	return PublicKey{}, refuse("unknown_key", "key %s is not in the key repository", kid)
}

func (r *Repository) issuerLimiter(issuer string) *rate.Limiter {
	l, ok := r.issuers[issuer]
	if !ok {
		if len(r.issuers) >= 10000 {
			clear(r.issuers)
		}
		l = rate.NewLimiter(rate.Every(r.cfg.IssuerFetchInterval), 5)
		r.issuers[issuer] = l
	}
	return l
}

// fetch loads every published key of issuer into the cache.
func (r *Repository) fetch(ctx context.Context, issuer string) error {
	r.fetches.Add(1)
	req, err := http.NewRequestWithContext(ctx, "GET", r.cfg.BaseURL+"/v1/keys/"+issuer, nil)
	if err != nil {
		return err
	}
	resp, err := r.cfg.HTTP.Do(req)
	if err != nil {
		return &Error{Code: "key_repository_unavailable", Message: "the key repository is unreachable", Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &Error{Code: "key_repository_unavailable", Message: "reading from the key repository failed", Err: err}
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil // an issuer without keys: every kid of it is unknown
	}
	if resp.StatusCode != http.StatusOK {
		return &Error{Code: "key_repository_unavailable", Message: fmt.Sprintf("the key repository answered %d", resp.StatusCode)}
	}
	var set JWKS
	if err := json.Unmarshal(body, &set); err != nil {
		return &Error{Code: "key_repository_unavailable", Message: "the key repository sent an unreadable key set", Err: err}
	}
	fresh := r.cfg.Now().Add(maxAge(resp.Header.Get("Cache-Control"), r.cfg.DefaultTTL))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, j := range set.Keys {
		k, err := j.PublicKey()
		if err != nil || !strings.HasPrefix(k.Kid, issuer+"/") {
			continue // a key that is unusable or not the issuer's is never trusted
		}
		r.keys[k.Kid] = cachedKey{key: k, fresh: fresh}
		delete(r.misses, k.Kid)
	}
	return nil
}

// maxAge reads max-age from a Cache-Control header, kept between 10s and
// 1h; def when absent.
func maxAge(cc string, def time.Duration) time.Duration {
	for _, part := range strings.Split(cc, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "max-age="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				return min(max(time.Duration(n)*time.Second, 10*time.Second), time.Hour)
			}
		}
	}
	return def
}

// StaticKeys is a KeySource over a fixed set of keys (tests, and services
// that pin their callers' keys).
type StaticKeys map[string]PublicKey

// Key implements KeySource.
func (s StaticKeys) Key(_ context.Context, kid string) (PublicKey, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return PublicKey{}, refuse("unknown_key", "key %s is unknown", kid)
}
