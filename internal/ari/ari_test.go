package ari_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/ari"
)

const tenant = "01a209cf-ceac-7875-8189-ba2f30d64a83"

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want ari.ARI
		ok   bool
	}{
		{"ari:cloud:tracker:" + tenant + ":issue/42", ari.ARI{Product: "tracker", Tenant: uuid.MustParse(tenant), Type: "issue", ID: "42"}, true},
		{"ari:cloud:tracker:" + tenant + ":comment/42/7", ari.ARI{Product: "tracker", Tenant: uuid.MustParse(tenant), Type: "comment", ID: "42/7"}, true},
		{"ari:cloud:platform::tenant/" + tenant, ari.ARI{Product: "platform", Type: "tenant", ID: tenant}, true},
		{"ari:cloud:tracker:" + tenant + ":issue/", ari.ARI{}, false},
		{"ari:cloud:tracker:" + tenant + ":issue", ari.ARI{}, false},
		{"ari:cloud:tracker:" + tenant + ":issue/../x", ari.ARI{}, false},
		{"ari:cloud:tracker:" + tenant + ":issue/a//b", ari.ARI{}, false},
		{"ari:cloud:tracker:" + tenant + ":Issue/1", ari.ARI{}, false},
		{"ari:cloud:Tracker:" + tenant + ":issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:01A209CF-CEAC-7875-8189-BA2F30D64A83:issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:{" + tenant + "}:issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:urn:uuid:" + tenant + ":issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:00000000-0000-0000-0000-000000000000:issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:acme:issue/1", ari.ARI{}, false},
		{"ari:cloud:tracker:" + tenant + ":issue/1 2", ari.ARI{}, false},
		{"ari:site:tracker:" + tenant + ":issue/1", ari.ARI{}, false},
		{"", ari.ARI{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ari.Parse(tt.in)
			if tt.ok != (err == nil) {
				t.Fatalf("Parse(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if !tt.ok {
				if !errors.Is(err, ari.ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	t.Parallel()
	a, err := ari.New("tracker", uuid.MustParse(tenant), "issue", "42")
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(map[string]ari.ARI{"ari": a})
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]ari.ARI
	if err := json.Unmarshal(data, &back); err != nil || back["ari"] != a {
		t.Fatalf("round trip through JSON: %v %+v", err, back)
	}
	if err := json.Unmarshal([]byte(`{"ari":"ari:cloud:x"}`), &back); err == nil {
		t.Fatal("decoded an invalid ARI")
	}
}

// Whatever parses formats back to the same string, and re-parses equal.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"ari:cloud:tracker:" + tenant + ":issue/42",
		"ari:cloud:platform::tenant/" + tenant,
		"ari:cloud:tracker:" + tenant + ":comment/42/7",
		"ari:cloud:a:b:c/d", "ari:cloud:::/", "ari:cloud:tracker:" + tenant + ":issue/../x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ari.Parse(s)
		if err != nil {
			return
		}
		if a.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, a.String())
		}
		b, err := ari.Parse(a.String())
		if err != nil || b != a {
			t.Fatalf("re-parse of %q: %+v, %v", s, b, err)
		}
	})
}

// Whatever validates formats to a string that parses back to it.
func FuzzRoundTrip(f *testing.F) {
	f.Add("tracker", tenant, "issue", "42")
	f.Add("platform", "", "tenant", "x/y")
	f.Add("a", "not-a-uuid", "T", "")
	f.Fuzz(func(t *testing.T, product, tenantID, typ, id string) {
		var u uuid.UUID
		if tenantID != "" {
			var err error
			if u, err = uuid.Parse(tenantID); err != nil {
				return
			}
		}
		a, err := ari.New(product, u, typ, id)
		if err != nil {
			return
		}
		b, err := ari.Parse(a.String())
		if err != nil || b != a {
			t.Fatalf("%+v formats to %q which parses to %+v, %v", a, a.String(), b, err)
		}
	})
}
