// Package ratelimit limits request rates per key (a caller, a tenant). The
// default is a token bucket in the process; Shared is a GCRA limit held in
// Redis, so every replica of a service enforces one limit together. When
// Redis fails, Shared falls back to the local limit (or lets everything
// through, or nothing, as configured) and says so, and it stops asking
// Redis for a moment so an outage does not cost every request a timeout.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// Decision is the answer for one request.
type Decision struct {
	Allowed    bool
	Limit      int // requests per second
	Remaining  int
	RetryAfter time.Duration // when refused: until a request would pass
	Reset      time.Duration // until the limit is fully available again
	// Degraded is set when the shared store failed and the fallback decided.
	Degraded bool
}

// Limiter decides whether a request for key may pass under a limit of
// perSecond requests per second (bursts of up to perSecond).
type Limiter interface {
	Allow(ctx context.Context, key string, perSecond int) Decision
}

// Local is a token bucket per key, in this process.
type Local struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	maxKeys int
}

type bucket struct {
	lim       *rate.Limiter
	perSecond int
}

// NewLocal returns a local limiter remembering up to maxKeys keys (100,000
// when 0).
func NewLocal(maxKeys int) *Local {
	if maxKeys <= 0 {
		maxKeys = 100_000
	}
	return &Local{buckets: map[string]*bucket{}, maxKeys: maxKeys}
}

// Allow implements Limiter.
func (l *Local) Allow(_ context.Context, key string, perSecond int) Decision {
	if perSecond <= 0 {
		return Decision{Allowed: true}
	}
	now := time.Now()
	l.mu.Lock()
	b, ok := l.buckets[key]
	if !ok || b.perSecond != perSecond {
		if len(l.buckets) >= l.maxKeys {
			clear(l.buckets) // a flood of keys: start over rather than grow
		}
		b = &bucket{lim: rate.NewLimiter(rate.Limit(perSecond), perSecond), perSecond: perSecond}
		l.buckets[key] = b
	}
	r := b.lim.ReserveN(now, 1)
	delay := r.DelayFrom(now)
	if delay > 0 {
		r.CancelAt(now)
	}
	tokens := b.lim.TokensAt(now)
	l.mu.Unlock()
	d := Decision{Allowed: delay == 0, Limit: perSecond, Remaining: max(int(tokens), 0)}
	d.Reset = time.Duration(float64(perSecond)-tokens) * time.Second / time.Duration(perSecond)
	if !d.Allowed {
		d.RetryAfter = delay
	}
	return d
}

// Fallback is what Shared does when Redis fails.
type Fallback string

// Fallbacks.
const (
	FallbackLocal  Fallback = "local"  // enforce the limit in this process only
	FallbackOpen   Fallback = "open"   // let requests through
	FallbackClosed Fallback = "closed" // refuse requests
)

// ParseFallback parses a Fallback.
func ParseFallback(s string) (Fallback, error) {
	switch f := Fallback(s); f {
	case FallbackLocal, FallbackOpen, FallbackClosed:
		return f, nil
	}
	return "", fmt.Errorf("unknown rate-limit fallback %q: use local, open or closed", s)
}

// Shared is a GCRA limit in Redis, shared by every replica.
type Shared struct {
	limiter   *redis_rate.Limiter
	local     *Local
	fallback  Fallback
	prefix    string
	downUntil atomic.Int64 // unix nanos: skip Redis until then
	degraded  atomic.Int64
}

// NewShared returns a limiter on rdb (whose timeouts should be short: a
// slow Redis slows every request). Keys are prefixed with prefix.
func NewShared(rdb *redis.Client, prefix string, fallback Fallback) *Shared {
	return &Shared{limiter: redis_rate.NewLimiter(rdb), local: NewLocal(0), fallback: fallback, prefix: prefix}
}

// Degraded returns how many decisions the fallback made.
func (s *Shared) Degraded() int64 { return s.degraded.Load() }

// Allow implements Limiter.
func (s *Shared) Allow(ctx context.Context, key string, perSecond int) Decision {
	if perSecond <= 0 {
		return Decision{Allowed: true}
	}
	if time.Now().UnixNano() >= s.downUntil.Load() {
		res, err := s.limiter.Allow(ctx, s.prefix+key, redis_rate.PerSecond(perSecond))
		if err == nil {
			return Decision{Allowed: res.Allowed > 0, Limit: perSecond, Remaining: res.Remaining,
				RetryAfter: max(res.RetryAfter, 0), Reset: max(res.ResetAfter, 0)}
		}
		s.downUntil.Store(time.Now().Add(time.Second).UnixNano())
	}
	s.degraded.Add(1)
	switch s.fallback {
	case FallbackOpen:
		return Decision{Allowed: true, Limit: perSecond, Remaining: perSecond, Degraded: true}
	case FallbackClosed:
		return Decision{Allowed: false, Limit: perSecond, RetryAfter: time.Second, Degraded: true}
	}
	d := s.local.Allow(ctx, key, perSecond)
	d.Degraded = true
	return d
}

// Headers returns the response fields that describe a decision under the
// named policy: RateLimit-Policy and RateLimit (the IETF httpapi draft) and,
// when the request was refused, Retry-After in whole seconds.
func Headers(policy string, d Decision) [][2]string {
	if d.Limit == 0 {
		return nil
	}
	h := [][2]string{
		{"RateLimit-Policy", fmt.Sprintf("%q;q=%d;w=1", policy, d.Limit)},
		{"RateLimit", fmt.Sprintf("%q;r=%d;t=%d", policy, d.Remaining, ceilSeconds(d.Reset))},
	}
	if !d.Allowed {
		h = append(h, [2]string{"Retry-After", strconv.Itoa(max(ceilSeconds(d.RetryAfter), 1))})
	}
	return h
}

func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}
