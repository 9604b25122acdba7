package auth

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// MemoryReplay is a ReplayStore for one process.
type MemoryReplay struct {
	mu   sync.Mutex
	seen map[string]time.Time
	now  func() time.Time
	next time.Time // next sweep of expired entries
}

// NewMemoryReplay returns an in-process ReplayStore.
func NewMemoryReplay(now func() time.Time) *MemoryReplay {
	if now == nil {
		now = time.Now
	}
	return &MemoryReplay{seen: map[string]time.Time{}, now: now}
}

// Seen implements ReplayStore.
func (m *MemoryReplay) Seen(_ context.Context, audience, jti string, until time.Time) (bool, error) {
	now := m.now()
	k := audience + "\x00" + jti
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.After(m.next) {
		for key, exp := range m.seen {
			if now.After(exp) {
				delete(m.seen, key)
			}
		}
		m.next = now.Add(10 * time.Second)
	}
	if exp, ok := m.seen[k]; ok && now.Before(exp) {
		return true, nil
	}
	m.seen[k] = until
	return false, nil
}

// RedisReplay is a ReplayStore shared by every replica of an audience.
type RedisReplay struct {
	client *redis.Client
	prefix string
	now    func() time.Time
}

// NewRedisReplay returns a ReplayStore in Redis, its keys under prefix.
func NewRedisReplay(client *redis.Client, prefix string, now func() time.Time) *RedisReplay {
	if now == nil {
		now = time.Now
	}
	return &RedisReplay{client: client, prefix: prefix, now: now}
}

// Seen implements ReplayStore with SET NX and an expiry at until.
func (r *RedisReplay) Seen(ctx context.Context, audience, jti string, until time.Time) (bool, error) {
	ttl := until.Sub(r.now())
	if ttl < time.Second {
		ttl = time.Second
	}
	ok, err := r.client.SetNX(ctx, r.prefix+"jti:"+audience+":"+jti, 1, ttl).Result()
	if err != nil {
		return false, err
	}
	return !ok, nil
}
