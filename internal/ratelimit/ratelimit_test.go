package ratelimit_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/ratelimit"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func count(l ratelimit.Limiter, key string, n, perSecond int) (allowed int, last ratelimit.Decision) {
	for range n {
		last = l.Allow(context.Background(), key, perSecond)
		if last.Allowed {
			allowed++
		}
	}
	return allowed, last
}

func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{}) // the tests dial a dead Redis on purpose
	os.Exit(m.Run())
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func TestLocalTokenBucket(t *testing.T) {
	t.Parallel()
	l := ratelimit.NewLocal(0)
	allowed, last := count(l, "caller:notes", 25, 10)
	if allowed != 10 || last.Allowed || last.RetryAfter <= 0 || last.RetryAfter > 150*time.Millisecond {
		t.Fatalf("allowed %d of 25 at 10/s; last %+v", allowed, last)
	}
	if a, _ := count(l, "caller:other", 5, 10); a != 5 {
		t.Fatal("keys share a bucket")
	}
	if d := l.Allow(context.Background(), "x", 0); !d.Allowed {
		t.Fatal("a zero limit must mean no limit")
	}
}

// Two replicas sharing Redis enforce one limit between them.
func TestSharedLimitAcrossReplicas(t *testing.T) {
	t.Parallel()
	rdb := testkit.Redis(t)
	prefix := "plinth:test:" + uuid.NewString() + ":"
	a := ratelimit.NewShared(rdb, prefix, ratelimit.FallbackLocal)
	b := ratelimit.NewShared(rdb, prefix, ratelimit.FallbackLocal)
	allowed := 0
	for i := range 40 {
		l := a
		if i%2 == 1 {
			l = b
		}
		if l.Allow(context.Background(), "caller:edge", 20).Allowed {
			allowed++
		}
	}
	if allowed < 20 || allowed > 22 { // GCRA may admit one more as time passes
		t.Fatalf("the replicas together admitted %d of 40 at 20/s, want about 20", allowed)
	}
	if a.Degraded()+b.Degraded() != 0 {
		t.Fatal("decisions were degraded with Redis up")
	}
}

// With Redis unreachable each fallback does what it says, and says it.
func TestSharedFallbacks(t *testing.T) {
	t.Parallel()
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	defer down.Close()
	for _, tt := range []struct {
		fb      ratelimit.Fallback
		allowed int
	}{
		{ratelimit.FallbackLocal, 10}, {ratelimit.FallbackOpen, 30}, {ratelimit.FallbackClosed, 0},
	} {
		s := ratelimit.NewShared(down, "p:", tt.fb)
		allowed, last := count(s, "k", 30, 10)
		if allowed != tt.allowed || !last.Degraded || s.Degraded() != 30 {
			t.Errorf("%s: allowed %d, degraded %v (%d)", tt.fb, allowed, last.Degraded, s.Degraded())
		}
	}
}

func TestHeaders(t *testing.T) {
	t.Parallel()
	h := ratelimit.Headers("caller", ratelimit.Decision{Allowed: false, Limit: 100, Remaining: 0,
		RetryAfter: 1500 * time.Millisecond, Reset: 2 * time.Second})
	got := map[string]string{}
	for _, kv := range h {
		got[kv[0]] = kv[1]
	}
	if got["RateLimit-Policy"] != `"caller";q=100;w=1` || got["RateLimit"] != `"caller";r=0;t=2` || got["Retry-After"] != "2" {
		t.Fatalf("headers %v", got)
	}
	if h := ratelimit.Headers("caller", ratelimit.Decision{Allowed: true, Limit: 10, Remaining: 9}); strings.Contains(formatted(h), "Retry-After") {
		t.Fatal("Retry-After on an allowed request")
	}
}

func formatted(h [][2]string) string {
	var b strings.Builder
	for _, kv := range h {
		b.WriteString(kv[0] + ": " + kv[1] + "\n")
	}
	return b.String()
}
