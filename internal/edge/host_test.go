package edge

import (
	"strings"
	"testing"
)

func TestParseHost(t *testing.T) {
	t.Parallel()
	const base = "plinth.localhost"
	tests := []struct {
		host   string
		slug   string
		domain string
		bad    bool
	}{
		{host: "acme.plinth.localhost", slug: "acme"},
		{host: "ACME.Plinth.LocalHost", slug: "acme"},
		{host: "acme.plinth.localhost.", slug: "acme"},
		{host: "acme.plinth.localhost:8080", slug: "acme"},
		{host: "acme.plinth.localhost.:8080", slug: "acme"},
		{host: "support.acme.example", domain: "support.acme.example"},
		{host: "Support.Acme.Example.:443", domain: "support.acme.example"},
		{host: "acme.plinth.localhost.evil.test", domain: "acme.plinth.localhost.evil.test"}, // a custom domain nobody proved
		{host: "xn--80ak6aa92e.com", domain: "xn--80ak6aa92e.com"},                           // punycode is an ordinary name
		{host: "", bad: true},
		{host: "plinth.localhost", bad: true},
		{host: ".plinth.localhost", bad: true},
		{host: "a.b.plinth.localhost", bad: true}, // nested labels under the base
		{host: "ab.plinth.localhost", bad: true},  // too short a slug
		{host: "xn--cme-8cd.plinth.localhost", bad: true},
		{host: "аcme.plinth.localhost", bad: true}, // Cyrillic а
		{host: "acme.plinth.localhost:", bad: true},
		{host: "acme.plinth.localhost:99999x", bad: true},
		{host: "acme.plinth.localhost:123456", bad: true},
		{host: "user@acme.plinth.localhost", bad: true},
		{host: "acme..plinth.localhost", bad: true},
		{host: "127.0.0.1", bad: true},
		{host: "127.0.0.1:8080", bad: true},
		{host: "[::1]:8080", bad: true},
		{host: "acme.plinth.localhost/evil", bad: true},
		{host: "acme plinth.localhost", bad: true},
		{host: "-acme.plinth.localhost", bad: true},
		{host: "www.plinth.localhost", bad: true}, // reserved
		{host: "localhost", bad: true},
		{host: strings.Repeat("a", 300) + ".example", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseHost(tt.host, base)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseHost(%q) = %+v, want an error", tt.host, got)
			}
			continue
		}
		if err != nil || got.Slug != tt.slug || got.Domain != tt.domain {
			t.Errorf("ParseHost(%q) = %+v, %v; want slug %q domain %q", tt.host, got, err, tt.slug, tt.domain)
		}
	}
}

func TestCleanPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target string
		ok     bool
	}{
		{"/notes", true},
		{"/notes/12?x=../y", true}, // the query is not a path
		{"/", true},
		{"/notes/../admin", false},
		{"/notes/..", false},
		{"/./notes", false},
		{"/notes/%2e%2e/admin", false},
		{"/notes/%2E./admin", false},
		{"/notes%2fadmin", false},
		{"/notes\\..\\admin", false},
		{"/notes/...", true},
		{"*", false},
	}
	for _, tt := range tests {
		if got := cleanPath(tt.target); got != tt.ok {
			t.Errorf("cleanPath(%q) = %v, want %v", tt.target, got, tt.ok)
		}
	}
}

func TestMatchPrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target, prefix string
		ok             bool
	}{
		{"/notes", "/notes", true},
		{"/notes/1", "/notes", true},
		{"/notes?x=1", "/notes", true},
		{"/notesX", "/notes", false},
		{"/note", "/notes", false},
		{"/anything", "/", true},
		{"/api/v1/x", "/api/", true},
	}
	for _, tt := range tests {
		if got := matchPrefix(tt.target, tt.prefix); got != tt.ok {
			t.Errorf("matchPrefix(%q, %q) = %v, want %v", tt.target, tt.prefix, got, tt.ok)
		}
	}
}

func TestTraceparent(t *testing.T) {
	t.Parallel()
	for s, ok := range map[string]bool{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": true,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0":  false,
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01": false,
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": false,
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": false,
		"": false,
	} {
		if validTraceparent(s) != ok {
			t.Errorf("validTraceparent(%q) = %v", s, !ok)
		}
	}
}

// FuzzParseHost checks the host parser never panics, and that what it
// accepts is canonical: lower-case ASCII, no port, no trailing dot, and a
// slug only when the host sits directly under the base domain.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"acme.plinth.localhost", "ACME.plinth.localhost.:80", "a.b.plinth.localhost",
		"support.acme.example", "[::1]:80", "127.0.0.1", "аcme.plinth.localhost", "acme.plinth.localhost.evil.test", ":", "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		got, err := ParseHost(host, "plinth.localhost")
		if err != nil {
			return
		}
		if (got.Slug == "") == (got.Domain == "") {
			t.Fatalf("ParseHost(%q) = %+v: exactly one of slug and domain", host, got)
		}
		name := got.Slug + got.Domain
		if name != strings.ToLower(name) || strings.HasSuffix(name, ".") || strings.Contains(name, ":") {
			t.Fatalf("ParseHost(%q) = %+v: not canonical", host, got)
		}
		if got.Slug != "" && strings.Contains(got.Slug, ".") {
			t.Fatalf("ParseHost(%q) = %+v: a slug with a dot", host, got)
		}
		if got.Domain != "" && strings.HasSuffix(got.Domain, ".plinth.localhost") {
			t.Fatalf("ParseHost(%q) = %+v: a name under the base domain taken as a custom domain", host, got)
		}
	})
}

func TestNewTraceparentIsValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tp := newTraceparent()
		if !validTraceparent(tp) {
			t.Fatalf("newTraceparent() = %q, not a valid traceparent", tp)
		}
		if seen[tp[3:35]] {
			t.Fatalf("trace ID %s repeated", tp[3:35])
		}
		seen[tp[3:35]] = true
	}
}
