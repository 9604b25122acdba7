package api_test

import (
	"net/http"
	"testing"
)

// POST /v1/catalog/rebuild needs the admin token and from_shards, and its
// dry run reports (in the documented shape) without writing. The rebuild
// itself is tested in internal/provision.
func TestCatalogRebuildAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.createActive(t, "acme")
	before := b.snapshot(t)
	for _, tc := range []struct {
		name, auth, body string
		status           int
		code             string
	}{
		{"no token", "", `{"from_shards": true}`, http.StatusUnauthorized, "token_missing"},
		{"no body", "Bearer " + token, ``, http.StatusBadRequest, "invalid_json"},
		{"without from_shards", "Bearer " + token, `{"dry_run": true}`, http.StatusUnprocessableEntity, "from_shards_required"},
		{"unknown field", "Bearer " + token, `{"from_shards": true, "from_backups": true}`, http.StatusBadRequest, "invalid_json"},
	} {
		if status, code := b.raw(t, "POST", "/v1/catalog/rebuild", tc.auth, "application/json", tc.body); status != tc.status || code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, status, code, tc.status, tc.code)
		}
	}
	// The shard is shared with the package's other tests, whose databases
	// this catalog does not have: a dry run reports them and writes nothing.
	rep, err := b.client.RebuildCatalog(b.ctx, true)
	must(t, err)
	if !rep.DryRun || rep.Shards != 1 || rep.Unchanged < 1 {
		t.Errorf("dry run: %+v", rep)
	}
	if after := b.snapshot(t); after != before {
		t.Fatalf("the requests changed the catalog:\n before: %s\n after:  %s", before, after)
	}
}
