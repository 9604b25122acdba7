package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// File names under PLINTH_HOME.
const (
	stateFile = "state.json"
	tokenFile = "admin-token"
	lockFile  = "dev.lock"
	logFile   = "plinth.log"
)

// State is what `plinth dev` keeps in PLINTH_HOME/state.json: the ports it
// chose and how to reach what it started, so the next start reuses them and
// the CLI finds the API. The file is private (0600): it holds the local
// clusters' password.
type State struct {
	Version  int           `json:"version"`
	APIURL   string        `json:"api_url"`
	Password string        `json:"password"`
	Control  *ClusterInfo  `json:"control,omitempty"` // nil when PLINTH_DATABASE_URL is used
	Shards   []ClusterInfo `json:"shards"`
	// Samples says where the sample services and their sidecars listen.
	Samples map[string]Sample `json:"samples,omitempty"`
	// EdgeURL is the first region's edge; Edges every region's.
	EdgeURL string            `json:"edge_url,omitempty"`
	Edges   map[string]string `json:"edges,omitempty"`
}

// ClusterInfo is one local Postgres cluster.
type ClusterInfo struct {
	Name   string `json:"name"`
	Region string `json:"region,omitempty"`
	Port   int    `json:"port"`
}

// DefaultHome is PLINTH_HOME, or ./.plinth.
func DefaultHome() string {
	if h := os.Getenv("PLINTH_HOME"); h != "" {
		return h
	}
	return ".plinth"
}

// ReadState reads the state `plinth dev` left in home.
func ReadState(home string) (State, error) {
	var st State
	data, err := os.ReadFile(filepath.Join(home, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%s is damaged (%v): remove it or run plinth dev --reset", filepath.Join(home, stateFile), err)
	}
	if st.Version != 1 {
		return st, fmt.Errorf("%s has unknown version %d", filepath.Join(home, stateFile), st.Version)
	}
	return st, nil
}

func writeState(home string, st State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(home, stateFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(home, stateFile))
}

// ReadToken reads the admin token `plinth dev` created in home.
func ReadToken(home string) (string, error) {
	data, err := os.ReadFile(filepath.Join(home, tokenFile))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

// readOrCreateToken returns the admin token in home, creating it on first use.
func readOrCreateToken(home string, generate func() string) (string, error) {
	tok, err := ReadToken(home)
	if err == nil && tok != "" {
		return tok, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	tok = generate()
	return tok, os.WriteFile(filepath.Join(home, tokenFile), []byte(tok+"\n"), 0o600)
}

// PsqlCommand returns a psql command connected to the tenant's database of
// product (its first one when empty) on the local fleet of home.
func PsqlCommand(ctx context.Context, home string, t catalog.Tenant, product string, args []string) (*exec.Cmd, error) {
	st, err := ReadState(home)
	if err != nil {
		return nil, err
	}
	var inst *catalog.Installation
	for i := range t.Installations {
		if product == "" || t.Installations[i].Product == product {
			inst = &t.Installations[i]
			break
		}
	}
	if inst == nil || inst.Database == "" {
		return nil, fmt.Errorf("tenant %s has no database for product %q", t.Slug, product)
	}
	port := 0
	for _, s := range st.Shards {
		if s.Name == inst.Shard {
			port = s.Port
		}
	}
	if port == 0 {
		return nil, fmt.Errorf("shard %s is not one plinth dev runs in %s", inst.Shard, home)
	}
	bin, err := exec.LookPath("psql")
	if err != nil {
		dir, derr := localpg.FindBinDir()
		if derr != nil {
			return nil, errors.New("psql not found: install the PostgreSQL client")
		}
		bin = filepath.Join(dir, "psql")
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", localpg.Superuser, inst.Database}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+st.Password)
	return cmd, nil
}
