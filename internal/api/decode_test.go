package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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

// A restore target is an RFC 3339 time or a duration before now; anything
// else is refused, and nothing parses to a time after now by way of a
// duration.
func FuzzParseRestoreTarget(f *testing.F) {
	for _, s := range []string{"-15m", "2026-12-07T10:00:00Z", "-1h30m", "15m", "", "yesterday", "-0s", "2026-12-07T10:00:00.123+01:00"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseRestoreTarget(s, now)
		if err != nil {
			return
		}
		if strings.HasPrefix(strings.TrimSpace(s), "-") && !got.Before(now) {
			t.Fatalf("%q parsed to %s, not before now", s, got)
		}
	})
}
