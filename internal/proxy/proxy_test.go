package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/plinth-platform/plinth/internal/proxy"
)

// upstream is a test service that records what reached it.
type upstream struct {
	*httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last *http.Request
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.mu.Lock()
		u.last = r.Clone(context.Background())
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-Host", r.Host)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// start serves h on a loopback port and returns its address.
func start(t *testing.T, h proxy.Handler) (string, *proxy.Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &proxy.Server{Handler: h}
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return l.Addr().String(), s
}

func to(u *upstream) proxy.Handler {
	return func(req *proxy.Request) proxy.Route {
		req.Header.DelPrefix("Plinth-")
		req.Header.Set("Plinth-Caller", "tester")
		return proxy.Route{Upstream: u.addr()}
	}
}

// raw sends bytes on a new connection and returns everything the proxy
// answers until it closes the connection or goes quiet.
func raw(t *testing.T, addr, data string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, data); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	out, _ := io.ReadAll(c)
	return string(out)
}

func TestForwardsAndRewrites(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	addr, _ := start(t, to(up))
	client := &http.Client{}
	for i := range 3 { // keep-alive: several requests on one connection
		req, _ := http.NewRequest("POST", "http://"+addr+"/notes?x=1", strings.NewReader(fmt.Sprintf("body-%d", i)))
		req.Header.Set("Plinth-Tenant-Id", "spoofed")
		req.Header.Set("Connection", "keep-alive, X-Private")
		req.Header.Set("X-Private", "hop")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != fmt.Sprintf("POST /notes?x=1 body-%d", i) || resp.Header.Get("X-Seen-Host") != addr {
			t.Fatalf("response %d: %q host %q", i, body, resp.Header.Get("X-Seen-Host"))
		}
	}
	up.mu.Lock()
	last := up.last
	up.mu.Unlock()
	if last.Header.Get("Plinth-Tenant-Id") != "" || last.Header.Get("Plinth-Caller") != "tester" || last.Header.Get("X-Private") != "" {
		t.Fatalf("upstream saw headers %v", last.Header)
	}
}

// Every shape that lets two parsers disagree on where a request ends is
// refused before anything reaches the upstream.
func TestSmugglingShapesAreRefused(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	addr, _ := start(t, to(up))
	tests := map[string]string{
		"CL and TE":             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"TE gzip":               "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"two TE":                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"two different CL":      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
		"negative CL":           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
		"plus CL":               "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
		"obs-fold":              "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
		"space before colon":    "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
		"two Host":              "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"no Host":               "GET / HTTP/1.1\r\n\r\n",
		"absolute-form":         "GET http://evil.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"authority-form":        "CONNECT evil.test:443 HTTP/1.1\r\nHost: a\r\n\r\n",
		"HTTP/2 preface":        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"control char in value": "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
		"bare target":           "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n",
		"space in target":       "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
	}
	for name, req := range tests {
		t.Run(name, func(t *testing.T) {
			out := raw(t, addr, req)
			if !strings.HasPrefix(out, "HTTP/1.1 400 ") || !strings.Contains(out, `"code":"bad_request"`) {
				t.Fatalf("answer: %q", out)
			}
		})
	}
	huge := "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 80) + "\r\n"
	if out := raw(t, addr, huge); !strings.HasPrefix(out, "HTTP/1.1 431 ") {
		t.Fatalf("oversized head: %q", out)
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("the upstream saw %d of the refused requests", n)
	}
}

func TestChunkedBodiesStreamBothWays(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: got %d bytes\n\n", len(body))
		w.(http.Flusher).Flush()
		<-release // the rest comes later: the client must see the first event now
		fmt.Fprint(w, "data: done\n\n")
	})
	addr, _ := start(t, to(up))
	pr, pw := io.Pipe()
	go func() {
		for range 10 {
			_, _ = pw.Write([]byte(strings.Repeat("x", 1000)))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/stream", pr) // unknown length: sent chunked
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "data: got 10000 bytes\n" {
		t.Fatalf("first event %q, %v", first, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: done") {
		t.Fatalf("rest %q", rest)
	}
}

func TestWebSocketPassesThrough(t *testing.T) {
	t.Parallel()
	ws := httptest.NewServer(websocket.Handler(func(c *websocket.Conn) {
		var msg string
		for websocket.Message.Receive(c, &msg) == nil {
			_ = websocket.Message.Send(c, "echo: "+msg)
		}
	}))
	defer ws.Close()
	addr, _ := start(t, func(req *proxy.Request) proxy.Route {
		return proxy.Route{Upstream: strings.TrimPrefix(ws.URL, "http://")}
	})
	c, err := websocket.Dial("ws://"+addr+"/socket", "", "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range []string{"hello", "world"} {
		if err := websocket.Message.Send(c, m); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(c, &got); err != nil || got != "echo: "+m {
			t.Fatalf("got %q, %v", got, err)
		}
	}
}

// A kept-alive upstream connection that the upstream closed is retried once
// on a fresh connection, invisibly to the client.
func TestStaleUpstreamConnectionIsRetried(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	addr, _ := start(t, to(up))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	ask := func(body string) string {
		fmt.Fprintf(conn, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	if got := ask("one"); got != "POST /x one" {
		t.Fatal(got)
	}
	up.CloseClientConnections() // the upstream drops its idle keep-alive connections
	time.Sleep(50 * time.Millisecond)
	if got := ask("two"); got != "POST /x two" {
		t.Fatalf("after the upstream closed its connection: %q", got)
	}
}

func TestFailoverTimeoutAndUnreachable(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	slow := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { time.Sleep(2 * time.Second) })
	dead := "127.0.0.1:1"
	var attempts []string
	var mu sync.Mutex
	addr, _ := start(t, func(req *proxy.Request) proxy.Route {
		switch req.Target {
		case "/failover":
			return proxy.Route{Upstream: dead, Next: func(n int, err error) (string, bool) { return up.addr(), n == 0 },
				Attempted: func(u string, status int, err error) {
					mu.Lock()
					attempts = append(attempts, fmt.Sprintf("%s:%d:%v", u, status, err != nil))
					mu.Unlock()
				}}
		case "/slow":
			return proxy.Route{Upstream: slow.addr(), TryTimeout: 200 * time.Millisecond}
		}
		return proxy.Route{Upstream: dead}
	})
	for _, tt := range []struct{ path, want string }{
		{"/failover", "200"}, {"/slow", `504`}, {"/dead", "502"},
	} {
		resp, err := http.Get("http://" + addr + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if fmt.Sprint(resp.StatusCode) != tt.want {
			t.Errorf("%s: %d, want %s", tt.path, resp.StatusCode, tt.want)
		}
	}
	if len(attempts) != 2 || !strings.HasSuffix(attempts[0], ":0:true") || !strings.HasSuffix(attempts[1], ":200:false") {
		t.Fatalf("attempts = %v", attempts)
	}
}

func TestExpectContinueAndBodiless(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(body)
	})
	addr, _ := start(t, to(up))
	out := raw(t, addr, "POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
	if !strings.HasPrefix(out, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ") || !strings.HasSuffix(out, "hello") {
		t.Fatalf("expect-continue: %q", out)
	}
	out = raw(t, addr, "GET /empty HTTP/1.1\r\nHost: a\r\n\r\nHEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if strings.Count(out, "HTTP/1.1 ") != 2 || !strings.Contains(out, " 204 ") {
		t.Fatalf("204 then HEAD on one connection: %q", out)
	}
}

// Shutdown lets a request in flight finish and closes idle connections.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	inFlight := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		close(inFlight)
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, "finished")
	})
	addr, srv := start(t, to(up))
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	result := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/work")
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- string(b)
	}()
	<-inFlight
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := <-result; got != "finished" {
		t.Fatalf("the request in flight got %q", got)
	}
	_ = idle.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("an idle connection was left open")
	}
}

// A 503 the route deems retryable is dropped unseen when another upstream
// is offered; with none left, the client gets it.
func TestRetryOnStatus(t *testing.T) {
	t.Parallel()
	busy := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, "busy")
	})
	ok := newUpstream(t, nil)
	addr, _ := start(t, func(req *proxy.Request) proxy.Route {
		return proxy.Route{Upstream: busy.addr(), RetryOn: func(s int) bool { return s == 503 },
			Next: func(n int, _ error) (string, bool) {
				if req.Target == "/only-busy" {
					return busy.addr(), n == 0
				}
				return ok.addr(), n == 0
			}}
	})
	for path, want := range map[string]int{"/retried": 200, "/only-busy": 503} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
