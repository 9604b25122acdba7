package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Load is a minimal HTTP/1.1 load generator on raw keep-alive connections:
// cheap enough per request that on a small machine it measures the server,
// not itself. At a fixed rate, latency counts from when a request was due,
// not when it was sent, so a slow server cannot hide queueing (no
// coordinated omission).
type Load struct {
	Addr        string // host:port
	Host        string // Host header
	Path        string
	Body        []byte
	Headers     map[string]string
	Connections int
	// Rate is requests per second over all connections; 0 saturates.
	Rate     float64
	Duration time.Duration
	// Header, when set, returns extra headers per request (a fresh token,
	// say); it is called on the request's connection goroutine.
	Header func() map[string]string
}

// LoadResult is what a run measured.
type LoadResult struct {
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	Non2xx     int     `json:"non_2xx"`
	Seconds    float64 `json:"seconds"`
	Throughput float64 `json:"throughput_rps"`
	Latency    Stats   `json:"latency"`
	FirstError string  `json:"first_error,omitempty"`

	latencies []time.Duration
}

// merge adds another run's results to r.
func (r *LoadResult) merge(o LoadResult) {
	r.Requests += o.Requests
	r.Errors += o.Errors
	r.Non2xx += o.Non2xx
	r.Seconds += o.Seconds
	if r.FirstError == "" {
		r.FirstError = o.FirstError
	}
	r.latencies = append(r.latencies, o.latencies...)
	r.Throughput = float64(r.Requests) / r.Seconds
	r.Latency = Summarise(r.latencies)
}

// Interleave runs each load in rounds of round, one after another, so that
// whatever else the machine does lands on all of them alike, and returns
// the pooled result of each.
func Interleave(ctx context.Context, loads []Load, total, round time.Duration) ([]LoadResult, error) {
	out := make([]LoadResult, len(loads))
	for elapsed := time.Duration(0); elapsed < total; elapsed += round {
		for i, l := range loads {
			l.Duration = min(round, total-elapsed)
			r, err := l.Run(ctx)
			if err != nil {
				return nil, err
			}
			out[i].merge(r)
		}
	}
	return out, nil
}

func (l Load) request(extra map[string]string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n", l.Path, l.Host, len(l.Body))
	for k, v := range l.Headers {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	for k, v := range extra {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	b.Write(l.Body)
	return b.Bytes()
}

// Run drives the load and returns the result.
func (l Load) Run(ctx context.Context) (LoadResult, error) {
	if l.Connections < 1 {
		l.Connections = 16
	}
	if l.Path == "" {
		l.Path = "/"
	}
	if l.Host == "" {
		l.Host = l.Addr
	}
	ctx, cancel := context.WithTimeout(ctx, l.Duration)
	defer cancel()
	type connResult struct {
		lat      []time.Duration
		errors   int
		non2xx   int
		firstErr error
	}
	results := make([]connResult, l.Connections)
	var wg sync.WaitGroup
	start := time.Now()
	fixed := l.Rate > 0
	for i := range l.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			var interval time.Duration
			var next time.Time
			if fixed {
				interval = time.Duration(float64(time.Second) * float64(l.Connections) / l.Rate)
				next = start.Add(interval * time.Duration(i) / time.Duration(l.Connections))
			}
			var conn net.Conn
			var br *bufio.Reader
			static := l.request(nil)
			for ctx.Err() == nil {
				due := time.Now()
				if fixed {
					if d := time.Until(next); d > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(d):
						}
					}
					due = next
					next = next.Add(interval)
				}
				if conn == nil {
					var err error
					conn, err = net.DialTimeout("tcp", l.Addr, 5*time.Second)
					if err != nil {
						r.errors++
						if r.firstErr == nil {
							r.firstErr = err
						}
						time.Sleep(10 * time.Millisecond)
						continue
					}
					br = bufio.NewReaderSize(conn, 16<<10)
				}
				req := static
				if l.Header != nil {
					req = l.request(l.Header())
				}
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				status, err := roundTrip(conn, br, req)
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					r.errors++
					if r.firstErr == nil {
						r.firstErr = err
					}
					conn.Close()
					conn = nil
					continue
				}
				r.lat = append(r.lat, time.Since(due))
				if status < 200 || status > 299 {
					r.non2xx++
				}
			}
			if conn != nil {
				conn.Close()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	var all []time.Duration
	out := LoadResult{Seconds: took.Seconds()}
	for _, r := range results {
		all = append(all, r.lat...)
		out.Errors += r.errors
		out.Non2xx += r.non2xx
		if r.firstErr != nil && out.FirstError == "" {
			out.FirstError = r.firstErr.Error()
		}
	}
	out.Requests = len(all)
	out.Throughput = float64(out.Requests) / took.Seconds()
	out.Latency = Summarise(all)
	out.latencies = all
	return out, nil
}

// roundTrip writes one request and reads one response (Content-Length or
// chunked), returning its status.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, errors.New("bad status line")
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, err
	}
	length, chunked := -1, false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(bytes.TrimRight(h, "\r\n"), []byte(":")); ok {
			switch {
			case bytes.EqualFold(k, []byte("Content-Length")):
				length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
			case bytes.EqualFold(k, []byte("Transfer-Encoding")):
				chunked = bytes.Contains(bytes.ToLower(v), []byte("chunked"))
			}
		}
	}
	switch {
	case chunked:
		for {
			sz, err := br.ReadSlice('\n')
			if err != nil {
				return 0, err
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.SplitN(sz, []byte(";"), 2)[0])), 16, 64)
			if err != nil {
				return 0, err
			}
			if _, err := br.Discard(int(n) + 2); err != nil {
				return 0, err
			}
			if n == 0 {
				return status, nil
			}
		}
	case length >= 0:
		_, err := br.Discard(length)
		return status, err
	}
	_, err = io.Copy(io.Discard, br)
	return status, err
}
