package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// decode never panics, and every body it refuses is refused with a 4xx
// httpError (a clear client error, never an internal one).
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"slug":"acme"}`, `{"slug":`, `{"slug":1}`, `{}{}`, ``, `null`, `[]`, `{"tier":1e400}`, "\xff"} {
		f.Add(s, "application/json")
	}
	f.Add(`{"slug":"acme"}`, "text/plain")
	f.Fuzz(func(t *testing.T, body, contentType string) {
		r := httptest.NewRequest("POST", "/v1/tenants", strings.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		rec := httptest.NewRecorder()
		r.Body = http.MaxBytesReader(rec, r.Body, maxBodyBytes)
		var req CreateTenantRequest
		err := decode(r, &req, false)
		if err == nil {
			return
		}
		var he *httpError
		if !errors.As(err, &he) || he.status < 400 || he.status >= 500 {
			t.Fatalf("decode(%q) = %v, want a 4xx httpError", body, err)
		}
	})
}
