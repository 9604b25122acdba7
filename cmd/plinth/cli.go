package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
)

// globals are the flags every command shares.
type globals struct {
	url, token, home, output string
}

func (g *globals) homeDir() string {
	if g.home != "" {
		return g.home
	}
	return devstack.DefaultHome()
}

// client finds the control API: flags, then PLINTH_URL / PLINTH_TOKEN, then
// what plinth dev left in PLINTH_HOME.
func (g *globals) client() (*api.Client, error) {
	url, token := g.url, g.token
	if url == "" {
		url = os.Getenv("PLINTH_URL")
	}
	if token == "" {
		token = os.Getenv("PLINTH_TOKEN")
	}
	if url == "" {
		st, err := devstack.ReadState(g.homeDir())
		if errors.Is(err, os.ErrNotExist) {
			return nil, errors.New("no Plinth API to talk to: start one with `plinth dev`, or set PLINTH_URL and PLINTH_TOKEN")
		}
		if err != nil {
			return nil, err
		}
		url = st.APIURL
	}
	if token == "" {
		t, err := devstack.ReadToken(g.homeDir())
		if err != nil {
			return nil, errors.New("no admin token: set PLINTH_TOKEN or --token")
		}
		token = t
	}
	return api.NewClient(url, token), nil
}

// print writes v as JSON, or as a table made by table.
func (g *globals) print(v any, table func(w io.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func row(w io.Writer, cols ...any) {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(w, strings.Join(s, "\t"))
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02")
}

// wait waits for an operation, showing progress on a terminal, and fails
// when the operation failed.
func wait(ctx context.Context, c *api.Client, op *catalog.Operation, what string) error {
	if op == nil {
		return nil
	}
	stop := progress(what)
	done, err := c.WaitOperation(ctx, op.ID.String(), nil)
	stop(err == nil && done.State == catalog.OperationSucceeded)
	if err != nil {
		return err
	}
	if done.State == catalog.OperationFailed {
		return fmt.Errorf("%s failed: %s (operation %s)", what, done.Error, done.ID)
	}
	return nil
}

// progress shows a spinner with the elapsed time on stderr when it is a
// terminal; stop ends it with a tick or a cross.
func progress(what string) (stop func(ok bool)) {
	fi, err := os.Stderr.Stat()
	start := time.Now()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return func(bool) {}
	}
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		frames := `⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏`
		for i := 0; ; i++ {
			r := []rune(frames)[i%10]
			fmt.Fprintf(os.Stderr, "\r%c %s… %.1fs ", r, what, time.Since(start).Seconds())
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func(ok bool) {
		close(quit)
		<-finished
		mark := "✓"
		if !ok {
			mark = "✗"
		}
		fmt.Fprintf(os.Stderr, "\r%s %s in %.1fs\n", mark, what, time.Since(start).Seconds())
	}
}
