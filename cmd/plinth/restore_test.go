package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// Flags that cannot go together are refused before anything is asked of
// the server (the URL here answers nothing).
func TestTenantRestoreRefusesBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"acme", "--to", "-1h", "--deleted-between", "-3h,-1h"}, "not more than one"},
		{[]string{"--deleted-between", "-1h", "--to", "-3h"}, "two times A,B"},
		{[]string{"--deleted-between", "-1h,-3h", "--to", "-3h"}, "end after it begins"},
		{[]string{"--deleted-between", "-3h,soon", "--to", "-3h"}, "deletion window's end"},
		{[]string{"--as", "acme-old", "--to", "-1h", "--file", "ids.txt"}, "--as restores one named tenant"},
		{[]string{"acme", "--as", "acme-old", "--undo"}, "--as restores one named tenant"},
		{[]string{"acme"}, "--to is required"},
		{[]string{}, "name the tenant to restore"},
	} {
		root := newRoot()
		root.SetArgs(append([]string{"--url", "http://127.0.0.1:1", "--token", "x", "tenant", "restore"}, tt.args...))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("plinth tenant restore %s: %v, want an error with %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}
