package api_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
)

// callAs sends a request with the given bearer credential and decodes the
// response into out; it returns the status and problem code.
func (b bundle) callAs(t *testing.T, cred, method, path string, body, out any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = strings.NewReader(string(data))
	}
	req, err := http.NewRequestWithContext(b.ctx, method, b.base+path, rd)
	must(t, err)
	req.Header.Set("Authorization", "Bearer "+cred)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.client.HTTP.Do(req)
	must(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var p api.Problem
		_ = json.Unmarshal(data, &p)
		return resp.StatusCode, p.Code
	}
	if out != nil && len(data) > 0 {
		must(t, json.Unmarshal(data, out))
	}
	return resp.StatusCode, ""
}

func TestServiceRegistryAndKeyRepository(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var notes, echo api.ServiceCreated
	if st, code := b.callAs(t, token, "POST", "/v1/services", api.ServiceRequest{Name: "notes", AllowedCallers: []string{"edge"}}, &notes); st != 201 {
		t.Fatalf("create notes: %d %s", st, code)
	}
	if st, code := b.callAs(t, token, "POST", "/v1/services", api.ServiceRequest{Name: "echo", AllowedCallers: []string{"notes"}}, &echo); st != 201 {
		t.Fatalf("create echo: %d %s", st, code)
	}
	if !strings.HasPrefix(notes.Credential, "plinthsvc_notes_") {
		t.Fatalf("credential %q", notes.Credential)
	}

	key, err := auth.GenerateKey(auth.ES256, "notes/i1-g1")
	must(t, err)
	reg := api.RegisterInstanceRequest{ID: uuid.New(), Address: "http://127.0.0.1:9001", Kid: key.Kid, PublicKey: string(key.Public().PEM())}
	path := "/v1/services/notes/instances"

	// Only the service's own credential may register it.
	for _, tt := range []struct {
		cred, code string
		status     int
	}{
		{"", "credential_missing", 401},
		{"plinthsvc_notes_forged", "credential_invalid", 401},
		{token, "credential_invalid", 401}, // not even the admin token
		{echo.Credential, "credential_wrong_service", 403},
	} {
		if st, code := b.callAs(t, tt.cred, "POST", path, reg, nil); st != tt.status || code != tt.code {
			t.Errorf("register with %q: %d %s, want %d %s", tt.cred, st, code, tt.status, tt.code)
		}
	}
	// A key whose kid names another service is refused.
	other, _ := auth.GenerateKey(auth.ES256, "echo/i1-g1")
	bad := reg
	bad.Kid, bad.PublicKey = other.Kid, string(other.Public().PEM())
	if st, code := b.callAs(t, notes.Credential, "POST", path, bad, nil); st != 422 || code != "kid_not_owned_by_issuer" {
		t.Fatalf("foreign kid: %d %s", st, code)
	}
	var inst api.InstanceResponse
	if st, code := b.callAs(t, notes.Credential, "POST", path, reg, &inst); st != 201 {
		t.Fatalf("register: %d %s", st, code)
	}
	if inst.Service.AllowedCallers[0] != "edge" {
		t.Fatalf("registration did not return the configuration: %+v", inst)
	}

	// The key repository serves the public key, as PEM and as a JWKS, to anyone.
	resp, err := http.Get(b.base + "/v1/keys/" + key.Kid)
	must(t, err)
	pemBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(pemBody) != string(key.Public().PEM()) || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") {
		t.Fatalf("PEM: %d %q %s", resp.StatusCode, pemBody, resp.Header.Get("Cache-Control"))
	}
	repo := auth.NewRepository(auth.RepositoryConfig{BaseURL: b.base})
	got, err := repo.Key(b.ctx, key.Kid)
	if err != nil || got.Alg != auth.ES256 {
		t.Fatalf("repository client: %v", err)
	}

	// Discovery: any service's credential (or the admin token) may read endpoints.
	var eps api.Endpoints
	if st, code := b.callAs(t, echo.Credential, "GET", "/v1/services/notes/endpoints", nil, &eps); st != 200 || len(eps.Endpoints) != 1 || eps.Endpoints[0].Address != reg.Address {
		t.Fatalf("endpoints: %d %s %+v", st, code, eps)
	}
	// A long poll wakes when the set changes.
	done := make(chan api.Endpoints, 1)
	go func() {
		var e api.Endpoints
		b.callAs(t, echo.Credential, "GET", "/v1/services/notes/endpoints?wait=30s&version="+eps.Version, nil, &e)
		done <- e
	}()
	time.Sleep(200 * time.Millisecond)
	key2, _ := auth.GenerateKey(auth.ES256, "notes/i2-g1")
	reg2 := api.RegisterInstanceRequest{ID: uuid.New(), Address: "http://127.0.0.1:9002", Kid: key2.Kid, PublicKey: string(key2.Public().PEM())}
	if st, code := b.callAs(t, notes.Credential, "POST", path, reg2, nil); st != 201 {
		t.Fatalf("second instance: %d %s", st, code)
	}
	select {
	case e := <-done:
		if len(e.Endpoints) != 2 || e.Version == eps.Version {
			t.Fatalf("long poll returned %+v", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long poll did not wake on a new instance")
	}

	// Rotation: the instance publishes a new key; the old one stays
	// published (tokens signed with it are still valid) but will expire.
	var rotated catalog.Service
	if st, code := b.callAs(t, token, "POST", "/v1/services/notes/rotate-keys", nil, &rotated); st != 200 || rotated.KeyGeneration != 2 {
		t.Fatalf("rotate: %d %s %+v", st, code, rotated)
	}
	key3, _ := auth.GenerateKey(auth.ES256, "notes/i1-g2")
	if st, code := b.callAs(t, notes.Credential, "POST", "/v1/services/notes/instances/"+reg.ID.String()+"/keys",
		api.PublishKeyRequest{Kid: key3.Kid, PublicKey: string(key3.Public().PEM())}, nil); st != 200 {
		t.Fatalf("publish key: %d %s", st, code)
	}
	var set auth.JWKS
	resp, err = http.Get(b.base + "/v1/keys/notes")
	must(t, err)
	must(t, json.NewDecoder(resp.Body).Decode(&set))
	resp.Body.Close()
	if len(set.Keys) != 3 {
		t.Fatalf("JWKS has %d keys, want 3 (the rotated-out one stays until it expires)", len(set.Keys))
	}
	var expiring int
	must(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM service_keys WHERE kid = $1 AND expires_at > now()`, key.Kid).Scan(&expiring))
	if expiring != 1 {
		t.Fatal("the rotated-out key has no expiry")
	}

	// Heartbeat and deregistration.
	if st, code := b.callAs(t, notes.Credential, "POST", "/v1/services/notes/instances/"+reg.ID.String()+"/heartbeat", nil, &inst); st != 200 || inst.Service.KeyGeneration != 2 {
		t.Fatalf("heartbeat: %d %s %+v", st, code, inst)
	}
	if st, code := b.callAs(t, notes.Credential, "DELETE", "/v1/services/notes/instances/"+reg.ID.String(), nil, nil); st != 204 {
		t.Fatalf("deregister: %d %s", st, code)
	}
	if st, code := b.callAs(t, notes.Credential, "POST", "/v1/services/notes/instances/"+reg.ID.String()+"/heartbeat", nil, nil); st != 404 || code != "instance_not_found" {
		t.Fatalf("heartbeat after deregistering: %d %s", st, code)
	}
	// The change log never carries credential hashes.
	var leaked int
	must(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM change_log WHERE data ? 'credential_hash'`).Scan(&leaked))
	if leaked != 0 {
		t.Fatal("the change log holds credential hashes")
	}
}
