package auth_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/auth/authtest"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func mustKey(t testing.TB, alg auth.Alg, kid string) *auth.PrivateKey {
	t.Helper()
	k, err := auth.GenerateKey(alg, kid)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newVerifier(keys ...*auth.PrivateKey) *auth.Verifier {
	static := auth.StaticKeys{}
	for _, k := range keys {
		static[k.Kid] = k.Public()
	}
	return auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: static, Replay: auth.NewMemoryReplay(nil)})
}

func TestAttacksAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	v := newVerifier(key)
	f := authtest.Forger{Issuer: "edge", Audience: "notes", Key: key, Now: time.Now()}
	used := f.Valid()
	if _, err := v.Verify(ctx, used); err != nil {
		t.Fatalf("a valid token was refused: %v", err)
	}
	for _, a := range f.Attacks(used) {
		t.Run(a.Name, func(t *testing.T) {
			c, err := v.Verify(ctx, a.Token)
			if err == nil {
				t.Fatalf("accepted, with claims %+v", c)
			}
			if got := auth.Code(err); got != a.Code {
				t.Fatalf("refused with %q (%v), want %q", got, err, a.Code)
			}
		})
	}
}

func TestEveryAlgorithm(t *testing.T) {
	t.Parallel()
	for _, alg := range []auth.Alg{auth.ES256, auth.RS256, auth.EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			t.Parallel()
			key := mustKey(t, alg, "edge/"+strings.ToLower(string(alg)))
			m, err := auth.NewMinter("edge", key, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := m.Token("notes", auth.Tenant{ID: "t1", Slug: "acme", Region: "local-1"}, false)
			if err != nil {
				t.Fatal(err)
			}
			// Through the PEM the key repository serves.
			pub, err := auth.ParsePublicKeyPEM(key.Kid, key.Public().PEM())
			if err != nil || pub.Alg != alg {
				t.Fatalf("PEM round trip: %v alg %s", err, pub.Alg)
			}
			// And through the JWKS the key repository serves.
			fromJWK, err := key.Public().JWK().PublicKey()
			if err != nil || fromJWK.Alg != alg {
				t.Fatalf("JWK round trip: %v alg %s", err, fromJWK.Alg)
			}
			for _, k := range []auth.PublicKey{pub, fromJWK} {
				v := auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: auth.StaticKeys{key.Kid: k}})
				if _, err := v.Verify(context.Background(), tok); err != nil {
					t.Fatal(err)
				}
			}
			v := auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: auth.StaticKeys{key.Kid: pub}})
			c, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatal(err)
			}
			if c.TenantID != "t1" || c.TenantSlug != "acme" || c.Region != "local-1" || c.Issuer != "edge" {
				t.Fatalf("claims = %+v", c)
			}
		})
	}
}

func TestVerifiedTokensAreCachedUntilExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	now := time.Now()
	clock := func() time.Time { return now }
	v := auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: auth.StaticKeys{key.Kid: key.Public()}, Now: clock})
	m, _ := auth.NewMinter("edge", key, time.Minute, clock)
	tok, _ := m.Token("notes", auth.Tenant{}, false)
	for range 5 {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if hits, misses := v.CacheStats(); hits != 4 || misses != 1 {
		t.Fatalf("hits=%d misses=%d, want 4 and 1", hits, misses)
	}
	now = now.Add(time.Minute + auth.Leeway + time.Second)
	if _, err := v.Verify(ctx, tok); auth.Code(err) != "token_expired" {
		t.Fatalf("a cached token past its expiry: %v", err)
	}
}

// With replay protection the cache never skips the jti check.
func TestReplayIsCheckedOnCacheHits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	v := newVerifier(key)
	m, _ := auth.NewMinter("edge", key, 0, nil)
	fresh1, _ := m.Token("notes", auth.Tenant{}, true)
	fresh2, _ := m.Token("notes", auth.Tenant{}, true)
	if fresh1 == fresh2 {
		t.Fatal("fresh tokens were reused")
	}
	for _, tok := range []string{fresh1, fresh2} {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, tok); auth.Code(err) != "replayed" {
			t.Fatalf("second use: %v", err)
		}
	}
}

func TestRedisReplayIsShared(t *testing.T) {
	t.Parallel()
	rdb := testkit.Redis(t)
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	aud := "notes-" + uuid.NewString()
	replicas := []*auth.Verifier{}
	for range 2 {
		replicas = append(replicas, auth.NewVerifier(auth.VerifierConfig{Audience: aud,
			Keys: auth.StaticKeys{key.Kid: key.Public()}, Replay: auth.NewRedisReplay(rdb, "plinth:test:", nil)}))
	}
	m, _ := auth.NewMinter("edge", key, 0, nil)
	tok, _ := m.Token(aud, auth.Tenant{}, true)
	if _, err := replicas[0].Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := replicas[1].Verify(ctx, tok); auth.Code(err) != "replayed" {
		t.Fatalf("the other replica accepted a replay: %v", err)
	}
}

func TestMinterReusesUntil95PercentAndRotates(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	k1 := mustKey(t, auth.ES256, "notes/k1")
	m, err := auth.NewMinter("notes", k1, 100*time.Second, clock)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := m.Token("echo", auth.Tenant{}, false)
	now = now.Add(94 * time.Second)
	if b, _ := m.Token("echo", auth.Tenant{}, false); b != a {
		t.Fatal("token not reused within 95% of its lifetime")
	}
	if b, _ := m.Token("echo", auth.Tenant{ID: "t2"}, false); b == a {
		t.Fatal("a token for another tenant was reused")
	}
	now = now.Add(2 * time.Second)
	if b, _ := m.Token("echo", auth.Tenant{}, false); b == a {
		t.Fatal("token reused past 95% of its lifetime")
	}
	k2 := mustKey(t, auth.ES256, "notes/k2")
	if err := m.Rotate(k2); err != nil {
		t.Fatal(err)
	}
	tok, _ := m.Token("echo", auth.Tenant{}, false)
	v := auth.NewVerifier(auth.VerifierConfig{Audience: "echo", Keys: auth.StaticKeys{k2.Kid: k2.Public()}, Now: clock})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("token after rotation: %v", err)
	}
	if err := m.Rotate(mustKey(t, auth.ES256, "other/k3")); err == nil {
		t.Fatal("rotated to a key of another issuer")
	}
}

// ASAP interoperability: tokens from golang-jwt verify here, and ours
// verify with golang-jwt.
func TestInteropWithGolangJWT(t *testing.T) {
	t.Parallel()
	key := mustKey(t, auth.ES256, "legacy-service/key1")
	now := time.Now()
	theirs := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": "legacy-service", "sub": "legacy-service", "aud": []string{"notes"},
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": uuid.NewString(),
	})
	theirs.Header["kid"] = key.Kid
	signed, err := theirs.SignedString(key.Signer())
	if err != nil {
		t.Fatal(err)
	}
	v := auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: auth.StaticKeys{key.Kid: key.Public()}})
	if _, err := v.Verify(context.Background(), signed); err != nil {
		t.Fatalf("a golang-jwt token was refused: %v", err)
	}
	m, _ := auth.NewMinter("legacy-service", key, 0, nil)
	ours, _ := m.Token("notes", auth.Tenant{}, false)
	parsed, err := jwt.Parse(ours, func(tok *jwt.Token) (any, error) {
		return key.Public().Crypto().(*ecdsa.PublicKey), nil
	}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithAudience("notes"), jwt.WithIssuer("legacy-service"))
	if err != nil || !parsed.Valid || parsed.Header["kid"] != key.Kid {
		t.Fatalf("golang-jwt refused our token: %v", err)
	}
}

// keyServer serves one key like the control plane's repository, counting
// requests; down makes it fail.
type keyServer struct {
	*httptest.Server
	key      *auth.PrivateKey
	requests atomic.Int64
	down     atomic.Bool
}

func newKeyServer(t *testing.T, key *auth.PrivateKey) *keyServer {
	ks := &keyServer{key: key}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.requests.Add(1)
		if ks.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		issuer, _ := auth.ValidateKid(key.Kid)
		if r.URL.Path != "/v1/keys/"+issuer {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "max-age=60")
		_ = json.NewEncoder(w).Encode(auth.JWKS{Keys: []auth.JWK{key.Public().JWK()}})
	}))
	t.Cleanup(ks.Close)
	return ks
}

func TestRepositoryCachesAndSurvivesOutages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	ks := newKeyServer(t, key)
	now := time.Now()
	repo := auth.NewRepository(auth.RepositoryConfig{BaseURL: ks.URL, Now: func() time.Time { return now }})
	for range 10 {
		if _, err := repo.Key(ctx, key.Kid); err != nil {
			t.Fatal(err)
		}
	}
	if n := ks.requests.Load(); n != 1 {
		t.Fatalf("%d fetches for one key within its max-age, want 1", n)
	}
	// Past max-age with the repository down: the cached key keeps working.
	now = now.Add(2 * time.Minute)
	ks.down.Store(true)
	if _, err := repo.Key(ctx, key.Kid); err != nil {
		t.Fatalf("stale-if-error: %v", err)
	}
	if ks.requests.Load() != 2 {
		t.Fatal("the stale key was not refetched")
	}
	// Unknown kids are cached as unknown.
	ks.down.Store(false)
	for range 5 {
		if _, err := repo.Key(ctx, "edge/nope"); auth.Code(err) != "unknown_key" {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := ks.requests.Load(); n != 3 {
		t.Fatalf("%d fetches after five lookups of one unknown kid, want 3 in all", n)
	}
}

// A flood of tokens with random unknown kids makes a bounded number of
// requests to the key repository.
func TestUnknownKidFloodIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := mustKey(t, auth.ES256, "edge/k1")
	ks := newKeyServer(t, key)
	repo := auth.NewRepository(auth.RepositoryConfig{BaseURL: ks.URL})
	v := auth.NewVerifier(auth.VerifierConfig{Audience: "notes", Keys: repo,
		AllowIssuer: func(iss string) bool { return iss == "edge" }})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 250 {
				for _, iss := range []string{"edge", "intruder"} {
					attacker := mustKeyNoT(auth.ES256, fmt.Sprintf("%s/random-%d-%d", iss, i, j))
					f := authtest.Forger{Issuer: iss, Audience: "notes", Key: attacker, Now: time.Now()}
					if _, err := v.Verify(ctx, f.Valid()); err == nil {
						t.Error("a token with an unknown kid was accepted")
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// 4,000 forged tokens: the intruder's never fetch (not an allowed
	// caller); edge's fetch at most the burst plus one per second.
	if n := ks.requests.Load(); n > 20 {
		t.Fatalf("the key repository saw %d requests during the flood, want at most 20", n)
	}
}

func mustKeyNoT(alg auth.Alg, kid string) *auth.PrivateKey {
	k, err := auth.GenerateKey(alg, kid)
	if err != nil {
		panic(err)
	}
	return k
}

func TestMiddleware(t *testing.T) {
	t.Parallel()
	key := mustKey(t, auth.ES256, "edge/k1")
	v := newVerifier(key)
	h := auth.Middleware(v, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := auth.ClaimsFrom(r.Context())
		fmt.Fprint(w, c.Issuer)
	}))
	m, _ := auth.NewMinter("edge", key, 0, nil)
	tok, _ := m.Token("notes", auth.Tenant{}, true)
	for _, tt := range []struct {
		auth   string
		status int
		body   string
	}{
		{"Bearer " + tok, 200, "edge"},
		{"", 401, `"code":"token_missing"`},
		{"Bearer " + tok, 401, `"code":"replayed"`},
		{"Basic abc", 401, `"code":"token_missing"`},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/notes", nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		h.ServeHTTP(rec, req)
		if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.body) {
			t.Errorf("%q: %d %s", tt.auth, rec.Code, rec.Body)
		}
	}
}

func TestValidateKid(t *testing.T) {
	t.Parallel()
	for kid, ok := range map[string]bool{
		"edge/k1": true, "my.service/key-2024+01": true, "a/b/c": true,
		"": false, "edge": false, "/edge/k1": false, "edge/../k": false, "edge//k": false, "edge/k1/": false,
		"edge/k 1": false, "edge/k1\x00": false, strings.Repeat("a", 300) + "/k": false,
	} {
		if _, err := auth.ValidateKid(kid); (err == nil) != ok {
			t.Errorf("ValidateKid(%q) = %v, want ok=%v", kid, err, ok)
		}
	}
}
