package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadTenantFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct {
		name, body string
		want       []string // nil: refused
	}{
		{"slugs, comments and blank lines", "acme\n# deleted by the script\n\n  globex  \n01a24ede-a79a-755c-9b2e-4ab2b694b872\n",
			[]string{"acme", "globex", "01a24ede-a79a-755c-9b2e-4ab2b694b872"}},
		{"no tenant", "# nothing\n\n", nil},
		{"two on a line", "acme globex\n", nil},
		{"too long", string(make([]byte, 64)) + "\n", nil},
	} {
		path := filepath.Join(dir, tt.name)
		if err := os.WriteFile(path, []byte(tt.body), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readTenantFile(path)
		if tt.want == nil {
			if err == nil {
				t.Errorf("%s: accepted as %q", tt.name, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if _, err := readTenantFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}
