package catalog_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// dnsLabel is RFC 1123's label, lower case.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// A slug that validates is a lower-case DNS label of 3-63 bytes, not
// reserved and not IDN-shaped; everything else gets a catalog error.
func FuzzValidateSlug(f *testing.F) {
	for _, s := range []string{"acme", "ab", "xn--80ak6aa92e", "admin", "a-b-c", "ACME", "acme-", "é-acme", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := catalog.ValidateSlug(s)
		if err != nil {
			if _, ok := catalog.AsError(err); !ok {
				t.Fatalf("ValidateSlug(%q) returned a non-catalog error %v", s, err)
			}
		}
		valid := len(s) >= 3 && len(s) <= 63 && dnsLabel.MatchString(s) && !strings.HasPrefix(s[2:], "--") && !slices.Contains(catalog.ReservedSlugs, s)
		if (err == nil) != valid {
			t.Fatalf("ValidateSlug(%q) = %v, but it is valid: %v", s, err, valid)
		}
	})
}

// ReadMigrations never panics, and what it accepts is sorted, positive and
// annotated for goose.
func FuzzReadMigrations(f *testing.F) {
	f.Add("00001_init.sql", "-- +goose Up\nCREATE TABLE a (id int);", "00002_more.sql", "-- +goose Up\nSELECT 1;")
	f.Add("1_x.sql", "CREATE TABLE a (id int);", "README.md", "hello")
	f.Add("00001_a.sql", "-- +goose Up\nSELECT 1;", "00001_b.sql", "-- +goose Up\nSELECT 2;")
	f.Fuzz(func(t *testing.T, name1, body1, name2, body2 string) {
		if name1 == "" || name2 == "" || strings.ContainsAny(name1+name2, "/\\\x00") || name1 == name2 || name1 == "." || name2 == "." || name1 == ".." || name2 == ".." {
			return
		}
		ms, err := catalog.ReadMigrations(fstest.MapFS{name1: {Data: []byte(body1)}, name2: {Data: []byte(body2)}})
		if err != nil {
			return
		}
		for i, m := range ms {
			if m.Version <= 0 || (i > 0 && m.Version <= ms[i-1].Version) || !strings.Contains(m.SQL, "-- +goose Up") {
				t.Fatalf("accepted %+v", ms)
			}
		}
	})
}
