package auth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Tenant is the tenant a call is made on behalf of.
type Tenant struct {
	ID     string
	Slug   string
	Region string
}

// Minter mints service tokens for one issuer and reuses each until 95% of
// its lifetime. Rotate swaps the signing key without a pause: tokens signed
// with the old key stay valid until they expire.
type Minter struct {
	issuer   string
	lifetime time.Duration
	now      func() time.Time
	key      atomic.Pointer[PrivateKey]

	mu    sync.Mutex
	cache map[mintKey]minted
}

type mintKey struct {
	audience string
	tenant   Tenant
}

type minted struct {
	token      string
	reuseUntil time.Time
}

// maxMintCache bounds the minted-token cache.
const maxMintCache = 4096

// NewMinter returns a Minter that signs with key (whose kid must belong to
// issuer) and mints tokens living lifetime (DefaultLifetime when 0, at most
// MaxLifetime).
func NewMinter(issuer string, key *PrivateKey, lifetime time.Duration, now func() time.Time) (*Minter, error) {
	if lifetime == 0 {
		lifetime = DefaultLifetime
	}
	if lifetime < time.Second || lifetime > MaxLifetime {
		return nil, errors.New("token lifetime must be between 1s and 1h")
	}
	if now == nil {
		now = time.Now
	}
	m := &Minter{issuer: issuer, lifetime: lifetime, now: now, cache: map[mintKey]minted{}}
	if err := m.Rotate(key); err != nil {
		return nil, err
	}
	return m, nil
}

// Issuer is the minter's issuer (its service name).
func (m *Minter) Issuer() string { return m.issuer }

// Key is the key tokens are signed with now.
func (m *Minter) Key() *PrivateKey { return m.key.Load() }

// Rotate makes key the signing key for new tokens.
func (m *Minter) Rotate(key *PrivateKey) error {
	issuer, err := ValidateKid(key.Kid)
	if err != nil {
		return err
	}
	if issuer != m.issuer {
		return errors.New("the key's kid must start with " + m.issuer + "/")
	}
	m.key.Store(key)
	m.mu.Lock()
	clear(m.cache)
	m.mu.Unlock()
	return nil
}

// Token returns a token for audience, on behalf of tenant (zero for none).
// It reuses a cached token until 95% of its lifetime, unless fresh is set
// (audiences with replay protection need a new token per request).
func (m *Minter) Token(audience string, tenant Tenant, fresh bool) (string, error) {
	now := m.now()
	k := mintKey{audience: audience, tenant: tenant}
	if !fresh {
		m.mu.Lock()
		t, ok := m.cache[k]
		m.mu.Unlock()
		if ok && now.Before(t.reuseUntil) {
			return t.token, nil
		}
	}
	key := m.key.Load()
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	c := &Claims{
		Issuer: m.issuer, Subject: m.issuer, Audience: Audience{audience},
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Add(m.lifetime).Unix(),
		ID:       base64.RawURLEncoding.EncodeToString(jti),
		TenantID: tenant.ID, TenantSlug: tenant.Slug, Region: tenant.Region,
	}
	token, err := Sign(key, c)
	if err != nil {
		return "", err
	}
	if !fresh {
		m.mu.Lock()
		if len(m.cache) >= maxMintCache {
			clear(m.cache)
		}
		m.cache[k] = minted{token: token, reuseUntil: now.Add(m.lifetime * 95 / 100)}
		m.mu.Unlock()
	}
	return token, nil
}
