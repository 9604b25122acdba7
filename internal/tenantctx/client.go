package tenantctx

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Client is a Fetcher on the control plane's API.
type Client struct {
	BaseURL    string
	Credential string // a service's registration credential, or the admin token
	http       *http.Client
	stream     *http.Client
}

// NewClient returns a Client for the control plane at baseURL.
func NewClient(baseURL, credential string) *Client {
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"), Credential: credential,
		http: &http.Client{Timeout: 5 * time.Second},
		// No overall timeout on the feed: a watchdog ends a silent stream.
		stream: &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, ResponseHeaderTimeout: 10 * time.Second}},
	}
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Credential)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound && strings.Contains(string(body), `"tenant_not_found"`):
		return ErrNotFound
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.Unmarshal(body, out)
}

// BySlug implements Fetcher.
func (c *Client) BySlug(ctx context.Context, slug string) (Context, error) {
	var tc Context
	return tc, c.get(ctx, "/v1/tenant-context/by-slug/"+url.PathEscape(slug), &tc)
}

// ByID implements Fetcher.
func (c *Client) ByID(ctx context.Context, id uuid.UUID) (Context, error) {
	var tc Context
	return tc, c.get(ctx, "/v1/tenant-context/by-id/"+id.String(), &tc)
}

// ByDomain implements Fetcher.
func (c *Client) ByDomain(ctx context.Context, domain string) (Context, error) {
	var tc Context
	return tc, c.get(ctx, "/v1/tenant-context/by-domain/"+url.PathEscape(domain), &tc)
}

// Snapshot implements Fetcher.
func (c *Client) Snapshot(ctx context.Context, after uuid.UUID, limit int) (Page, error) {
	var p Page
	q := "?limit=" + strconv.Itoa(limit)
	if after != uuid.Nil {
		q += "&cursor=" + after.String()
	}
	return p, c.get(ctx, "/v1/tenant-context/snapshot"+q, &p)
}

// Follow implements Fetcher over server-sent events.
func (c *Client) Follow(ctx context.Context, after int64, fn func(Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+"/v1/tenant-context/changes?after="+strconv.FormatInt(after, 10), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Credential)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.stream.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("follow the tenant-context feed: %s", resp.Status)
	}
	// The server sends a heartbeat every few seconds: a feed silent for
	// longer has broken without saying so.
	watchdog := time.AfterFunc(feedHealthy, cancel)
	defer watchdog.Stop()
	return ReadEvents(resp.Body, func(ev Event) error {
		watchdog.Reset(feedHealthy)
		return fn(ev)
	})
}

// maxEvent bounds the data of one event (and a line).
const maxEvent = 1 << 20

// ReadEvents reads a stream of server-sent events whose data are Events.
// Lines and events are at most 1 MiB; comments and unknown fields are
// ignored; an event whose data is not an Event ends the stream with an
// error.
func ReadEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEvent)
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() == 0 {
				continue
			}
			var ev Event
			if err := json.Unmarshal([]byte(data.String()), &ev); err != nil {
				return fmt.Errorf("a feed event is not valid: %w", err)
			}
			data.Reset()
			if ev.Type == "" {
				return errors.New("a feed event has no type")
			}
			if err := fn(ev); err != nil {
				return err
			}
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			part := strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
			if data.Len()+len(part) > maxEvent {
				return errors.New("a feed event is larger than 1 MiB")
			}
			data.WriteString(part)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}

// WriteEvent writes ev as a server-sent event.
func WriteEvent(w io.Writer, ev Event) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	// The type is repeated for generic SSE readers; a line break in it
	// must not add lines to the stream (the data, JSON, has none).
	typ := strings.NewReplacer("\r", "", "\n", "").Replace(ev.Type)
	_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Version, typ, data)
	return err
}
