package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRestoreConfigValidate(t *testing.T) {
	t.Parallel()
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "state.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := RestoreConfig{Exe: "/bin/plinth", Small: 50}
	for _, tt := range []struct {
		name string
		edit func(*RestoreConfig)
		want string // "" when valid
	}{
		{"defaults", func(*RestoreConfig) {}, ""},
		{"no small tenants", func(c *RestoreConfig) { c.Small = 0 }, ""},
		{"the issue's mass run", func(c *RestoreConfig) { c.BigMB, c.Small, c.Mass = 64, 10, 400 }, ""},
		{"an empty home", func(c *RestoreConfig) { c.Home = t.TempDir() }, ""},
		{"a home to be made", func(c *RestoreConfig) { c.Home = filepath.Join(t.TempDir(), "new") }, ""},
		{"negative size", func(c *RestoreConfig) { c.BigMB = -1 }, "--big-mb"},
		{"huge size", func(c *RestoreConfig) { c.BigMB = 65537 }, "--big-mb"},
		{"negative small", func(c *RestoreConfig) { c.Small = -1 }, "--small"},
		{"too many small", func(c *RestoreConfig) { c.Small = 1001 }, "--small"},
		{"mass beyond one request", func(c *RestoreConfig) { c.Mass = 1001 }, "--mass"},
		{"negative mass", func(c *RestoreConfig) { c.Mass = -1 }, "--mass"},
		{"concurrency", func(c *RestoreConfig) { c.Concurrency = 33 }, "--concurrency"},
		{"no binary", func(c *RestoreConfig) { c.Exe = "" }, "plinth binary"},
		{"a used home", func(c *RestoreConfig) { c.Home = full }, "not empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := ok
			tt.edit(&c)
			err := c.validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("want an error about %q, got %v", tt.want, err)
			}
		})
	}
	c := ok
	if err := c.validate(); err != nil || c.BigMB != RestoreBigMBDefault {
		t.Fatalf("BigMB 0 should become %d, got %d (%v)", RestoreBigMBDefault, c.BigMB, err)
	}
}
