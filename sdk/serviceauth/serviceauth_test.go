package serviceauth_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/sdk/serviceauth"
)

func TestMiddleware(t *testing.T) {
	t.Parallel()
	keys := map[string]*auth.PrivateKey{}
	for _, svc := range []string{"edge", "intruder"} {
		k, err := auth.GenerateKey(auth.ES256, svc+"/k1")
		if err != nil {
			t.Fatal(err)
		}
		keys[svc] = k
	}
	repo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, ok := keys[strings.TrimPrefix(r.URL.Path, "/v1/keys/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(auth.JWKS{Keys: []auth.JWK{k.Public().JWK()}})
	}))
	defer repo.Close()
	h, err := serviceauth.Middleware(serviceauth.Config{Service: "notes", KeyRepository: repo.URL,
		AllowedCallers: []string{"edge"}, ReplayProtection: true},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			caller, _ := serviceauth.Caller(r.Context())
			tenant, _ := serviceauth.TenantFrom(r.Context())
			fmt.Fprintf(w, "%s %s", caller, tenant.Slug)
		}))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	token := func(svc string) string {
		m, _ := auth.NewMinter(svc, keys[svc], 0, nil)
		tok, _ := m.Token("notes", auth.Tenant{ID: "t1", Slug: "acme"}, true)
		return tok
	}
	edge := token("edge")
	for _, tt := range []struct {
		token  string
		status int
		body   string
	}{
		{edge, 200, "edge acme"},
		{edge, 401, `"code":"replayed"`},
		{"", 401, `"code":"token_missing"`},
		{token("intruder"), 403, `"code":"caller_not_allowed"`},
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/notes", nil)
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.body) {
			t.Errorf("got %d %s, want %d %s", resp.StatusCode, body, tt.status, tt.body)
		}
	}
}
