// Package proxy is Plinth's HTTP/1.1 reverse-proxy engine, used by the
// sidecar and the edge. It was chosen by measurement: on a 2-core machine
// net/http's ReverseProxy reaches about half of nginx's throughput, this
// engine more than nginx's, because it works on raw connections with pooled
// buffers, keeps one upstream connection per client connection, and
// allocates little per request.
//
// It is strict where two HTTP parsers could disagree (request smuggling):
// one Host, never both Content-Length and Transfer-Encoding, chunked as the
// only coding, no obs-fold, origin-form targets only. Headers are parsed
// and written anew, never passed through raw; hop-by-hop fields are
// dropped. Bodies stream in both directions (Content-Length, chunked, or
// until close), flushed as they arrive, so server-sent events and long
// uploads pass through; WebSocket and other upgrades are spliced.
package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults.
const (
	MaxHeaderBytesDefault    = 64 << 10
	ReadHeaderTimeoutDefault = 10 * time.Second
	IdleTimeoutDefault       = 120 * time.Second
	DialTimeoutDefault       = 5 * time.Second
	TryTimeoutDefault        = 60 * time.Second
	// maxReplayBody is the largest body kept in memory so that a request
	// can be retried on another connection or upstream.
	maxReplayBody = 64 << 10
)

// Route is what a Handler decides for a request: answer it (Reply), or
// forward it to Upstream.
type Route struct {
	Reply *Reply
	// Upstream is the host:port to forward to.
	Upstream string
	// Next, when set, picks the upstream for a retry after attempt failed
	// (before any response came back); ok=false stops. Requests whose body
	// is too large to replay are never retried.
	Next func(attempt int, err error) (upstream string, ok bool)
	// BeforeRetry, when set, may edit the request before it goes to
	// upstream on a retry (a fresh token, say).
	BeforeRetry func(upstream string, req *Request)
	// RetryOn, when set, names response statuses (a 503, say) worth another
	// attempt: the response is dropped, unseen by the client, if Next
	// offers another upstream.
	RetryOn func(status int) bool
	// TryTimeout bounds the wait for each attempt's response head.
	TryTimeout time.Duration
	// Attempted is told the outcome of every attempt: the upstream's status,
	// or the error that ended the attempt.
	Attempted func(upstream string, status int, err error)
	// OnResponse may edit the response head before the client gets it.
	OnResponse func(*Response)
	// Done, when set, is called once the forwarded exchange has ended
	// (body relayed, upgrade closed, or failed), with the status sent.
	Done func(status int)
}

// Reply is a response the proxy makes itself.
type Reply struct {
	Status      int
	ContentType string
	Header      [][2]string
	Body        []byte
}

// Problem makes an RFC 9457 problem reply.
func Problem(status int, code, detail string, header ...[2]string) *Reply {
	body, _ := json.Marshal(map[string]any{
		"type": "https://plinth.dev/problems/" + strings.ReplaceAll(code, "_", "-"), "title": statusText(status),
		"status": status, "detail": detail, "code": code,
	})
	return &Reply{Status: status, ContentType: "application/problem+json", Header: header, Body: append(body, '\n')}
}

// Handler routes requests. It may edit the request's header (the proxy
// forwards what the handler leaves). It runs on the connection's goroutine.
type Handler func(req *Request) Route

// Server serves a Handler on listeners.
type Server struct {
	Handler           Handler
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	DialTimeout       time.Duration
	// Observe, when set, is told of every finished request.
	Observe func(req *Request, status int, took time.Duration)
	Logger  *slog.Logger

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[*conn]struct{}
	shutdown  atomic.Bool
	wg        sync.WaitGroup
}

func (s *Server) defaults() {
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = MaxHeaderBytesDefault
	}
	if s.ReadHeaderTimeout == 0 {
		s.ReadHeaderTimeout = ReadHeaderTimeoutDefault
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = IdleTimeoutDefault
	}
	if s.DialTimeout == 0 {
		s.DialTimeout = DialTimeoutDefault
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	s.defaults()
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := &conn{srv: s, nc: nc}
		s.mu.Lock()
		if s.shutdown.Load() {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish (their connections close after them), and waits until all
// are done or ctx ends, when it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	s.mu.Lock()
	for _, l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		if c.idle.Load() {
			c.nc.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-ticker.C:
			s.mu.Lock()
			for c := range s.conns {
				if c.idle.Load() {
					c.nc.Close()
				}
			}
			s.mu.Unlock()
		case <-ctx.Done():
			s.mu.Lock()
			for c := range s.conns {
				c.nc.Close()
			}
			s.mu.Unlock()
			<-done
			return ctx.Err()
		}
	}
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	bufPool    = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// conn is one client connection and the upstream connections pinned to it.
type conn struct {
	srv     *Server
	nc      net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	idle    atomic.Bool
	ups     map[string]*upConn
	req     Request
	resp    Response
	body    []byte // a request body kept for replays
	scratch []byte // the head being read
	remote  string
}

type upConn struct {
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
}

func (u *upConn) close() {
	u.nc.Close()
	readerPool.Put(u.br)
	writerPool.Put(u.bw)
}

func (c *conn) serve() {
	s := c.srv
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	c.bw = writerPool.Get().(*bufio.Writer)
	c.bw.Reset(c.nc)
	c.ups = map[string]*upConn{}
	c.remote = c.nc.RemoteAddr().String()
	defer func() {
		if v := recover(); v != nil {
			s.Logger.Error("proxy: panic serving a connection", "panic", v)
		}
		c.nc.Close()
		for _, u := range c.ups {
			u.close()
		}
		c.br.Reset(nil)
		c.bw.Reset(nil)
		readerPool.Put(c.br)
		writerPool.Put(c.bw)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	for {
		c.idle.Store(true)
		if s.shutdown.Load() {
			return
		}
		_ = c.nc.SetReadDeadline(time.Now().Add(s.IdleTimeout))
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		c.idle.Store(false)
		// One deadline for the head and a small body; it stays until the
		// next read sets its own (cleared only before streaming a body).
		_ = c.nc.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
		start := time.Now()
		c.req.Header.reset()
		c.req = Request{Header: c.req.Header, RemoteAddr: c.remote}
		if err := readRequest(c.br, &c.req, s.MaxHeaderBytes, &c.scratch); err != nil {
			c.refuse(err)
			return
		}
		status, keep := c.handle()
		if s.Observe != nil {
			s.Observe(&c.req, status, time.Since(start))
		}
		if !keep {
			return
		}
	}
}

// refuse answers a request that could not be read, then the connection closes.
func (c *conn) refuse(err error) {
	var r *Reply
	var br badRequest
	switch {
	case errors.Is(err, errHeadTooLarge):
		r = Problem(431, "headers_too_large", "the request head is larger than the limit")
	case errors.As(err, &br):
		r = Problem(400, "bad_request", br.msg)
	default:
		return // the client went away or timed out
	}
	c.writeReply(r, true)
	_ = c.bw.Flush()
}

// handle routes and answers one request. It returns the status sent and
// whether the connection may serve another request.
func (c *conn) handle() (int, bool) {
	req := &c.req
	route := c.srv.Handler(req)
	shutting := c.srv.shutdown.Load()
	if route.Reply != nil {
		// The body was not read: keep the connection only if it is small
		// enough to skip.
		keep := !req.Close && !shutting && c.discardBody()
		c.writeReply(route.Reply, !keep)
		return route.Reply.Status, keep && c.bw.Flush() == nil
	}
	status, keep := c.forward(route)
	if route.Done != nil {
		route.Done(status)
	}
	return status, keep && !req.Close && !shutting
}

// discardBody reads and drops a small request body.
func (c *conn) discardBody() bool {
	req := &c.req
	if req.Chunked || req.ContentLength > maxReplayBody {
		return false
	}
	_, err := c.br.Discard(int(req.ContentLength)) // within the head's deadline
	return err == nil
}

func (c *conn) writeReply(r *Reply, closing bool) {
	w := c.bw
	writeStatus(w, r.Status, statusText(r.Status))
	if r.ContentType != "" {
		w.WriteString("Content-Type: " + r.ContentType + "\r\n")
	}
	for _, h := range r.Header {
		w.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	w.WriteString("Cache-Control: no-store\r\nContent-Length: " + strconv.Itoa(len(r.Body)) + "\r\n")
	if closing {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if c.req.Method != "HEAD" {
		w.Write(r.Body)
	}
}

// forward sends the request upstream, retrying where it is safe, and
// relays the response.
func (c *conn) forward(route Route) (int, bool) {
	req := &c.req
	upgrade := req.Upgrade
	expect := strings.EqualFold(req.Header.Get("Expect"), "100-continue")
	stripHop(&req.Header)
	req.Header.Del("Expect")
	if expect && (req.ContentLength > 0 || req.Chunked) {
		// The client waits for this before it sends the body.
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if c.bw.Flush() != nil {
			return 0, false
		}
	}
	replayable := !req.Chunked && req.ContentLength <= maxReplayBody
	if !replayable || upgrade != "" {
		_ = c.nc.SetReadDeadline(time.Time{}) // a streamed body or a spliced connection may take as long as it takes
	}
	if replayable && req.ContentLength > 0 {
		if cap(c.body) < int(req.ContentLength) {
			c.body = make([]byte, req.ContentLength)
		}
		c.body = c.body[:req.ContentLength]
		if _, err := io.ReadFull(c.br, c.body); err != nil { // within the head's deadline
			return 0, false
		}
	}
	addr := route.Upstream
	tryTimeout := route.TryTimeout
	if tryTimeout == 0 {
		tryTimeout = TryTimeoutDefault
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 && route.BeforeRetry != nil {
			route.BeforeRetry(addr, req)
		}
		u, err := c.upstream(addr)
		bodySent := false
		if err == nil {
			bodySent, err = c.send(u, upgrade, replayable)
		}
		if err == nil {
			_ = u.nc.SetReadDeadline(time.Now().Add(tryTimeout))
			err = c.readUpstream(u)
		}
		if err == nil {
			if route.Attempted != nil {
				route.Attempted(addr, c.resp.Status, nil)
			}
			if route.RetryOn != nil && route.Next != nil && replayable && route.RetryOn(c.resp.Status) {
				if next, ok := route.Next(attempt, fmt.Errorf("status %d", c.resp.Status)); ok {
					c.dropUpstream(addr) // unread body and all
					addr = next
					continue
				}
			}
			return c.relay(u, addr, route, upgrade)
		}
		stale := u != nil && u.reused && !isTimeout(err)
		if u != nil {
			c.dropUpstream(addr)
		}
		if route.Attempted != nil {
			route.Attempted(addr, 0, err)
		}
		lastErr = err
		if !replayable && bodySent {
			break // part of a body we did not keep went to a dead upstream
		}
		if stale && attempt == 0 {
			continue // a kept-alive connection the upstream had closed: once more, on a fresh one
		}
		if route.Next == nil {
			break
		}
		next, ok := route.Next(attempt, err)
		if !ok {
			break
		}
		addr = next
	}
	if isTimeout(lastErr) {
		c.writeReply(Problem(504, "upstream_timeout", "the service did not answer in time"), true)
		_ = c.bw.Flush()
		return 504, false
	}
	c.writeReply(Problem(502, "upstream_unavailable", "the service could not be reached"), true)
	_ = c.bw.Flush()
	return 502, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// upstream returns the connection to addr pinned to this client
// connection, dialling one when there is none.
func (c *conn) upstream(addr string) (*upConn, error) {
	if u, ok := c.ups[addr]; ok {
		u.reused = true
		return u, nil
	}
	nc, err := net.DialTimeout("tcp", addr, c.srv.DialTimeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	u := &upConn{nc: nc, br: readerPool.Get().(*bufio.Reader), bw: writerPool.Get().(*bufio.Writer)}
	u.br.Reset(nc)
	u.bw.Reset(nc)
	if len(c.ups) >= 8 { // a client spraying upstreams keeps a few
		for k, old := range c.ups {
			old.close()
			delete(c.ups, k)
			break
		}
	}
	c.ups[addr] = u
	return u, nil
}

func (c *conn) dropUpstream(addr string) {
	if u, ok := c.ups[addr]; ok {
		u.close()
		delete(c.ups, addr)
	}
}

// send writes the request head and body upstream. bodySent reports whether
// any of a non-replayable body went out.
func (c *conn) send(u *upConn, upgrade string, replayable bool) (bodySent bool, err error) {
	req := &c.req
	w := u.bw
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.Target)
	w.WriteString(" HTTP/1.1\r\n")
	if req.Host != "" && req.Header.Get("Host") == "" {
		w.WriteString("Host: " + req.Host + "\r\n")
	}
	req.Header.write(w)
	if req.Chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if upgrade != "" {
		w.WriteString("Connection: Upgrade\r\nUpgrade: " + upgrade + "\r\n")
	}
	w.WriteString("\r\n")
	if replayable {
		w.Write(c.body[:max(req.ContentLength, 0)])
		return false, w.Flush()
	}
	if err := w.Flush(); err != nil {
		return false, err
	}
	return true, copyBody(w, c.br, req.ContentLength, req.Chunked)
}

// readUpstream reads the response head, relaying interim (1xx) responses.
func (c *conn) readUpstream(u *upConn) error {
	for {
		c.resp.Header.reset()
		c.resp = Response{Header: c.resp.Header}
		if err := readResponse(u.br, &c.resp, c.srv.MaxHeaderBytes, &c.scratch); err != nil {
			return err
		}
		if c.resp.Status >= 200 || c.resp.Status == 101 {
			return nil
		}
		// 100 Continue was answered by the proxy already; others go on.
		if c.resp.Status != 100 {
			writeStatus(c.bw, c.resp.Status, c.resp.Reason)
			c.resp.Header.write(c.bw)
			c.bw.WriteString("\r\n")
			if err := c.bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// relay writes the response to the client and returns its status and
// whether both connections can be kept.
func (c *conn) relay(u *upConn, addr string, route Route, upgrade string) (int, bool) {
	resp := &c.resp
	if resp.Chunked || resp.ContentLength < 0 || int64(u.br.Buffered()) < resp.ContentLength || resp.Status == 101 {
		// More is to come from the upstream, for as long as it streams.
		_ = u.nc.SetReadDeadline(time.Time{})
	}
	if resp.Status == 101 {
		if upgrade == "" {
			c.dropUpstream(addr)
			c.writeReply(Problem(502, "bad_upstream_response", "the service switched protocols unasked"), true)
			_ = c.bw.Flush()
			return 502, false
		}
		proto := resp.Header.Get("Upgrade")
		stripHop(&resp.Header)
		if route.OnResponse != nil {
			route.OnResponse(resp)
		}
		writeStatus(c.bw, 101, orDefault(resp.Reason, "Switching Protocols"))
		resp.Header.write(c.bw)
		c.bw.WriteString("Connection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n")
		if c.bw.Flush() != nil {
			return 101, false
		}
		delete(c.ups, addr) // the splice owns it now
		splice(c.nc, c.br, u.nc, u.br)
		u.close()
		return 101, false
	}
	stripHop(&resp.Header)
	if route.OnResponse != nil {
		route.OnResponse(resp)
	}
	noBody := c.req.Method == "HEAD" || resp.Status == 204 || resp.Status == 304
	untilClose := !noBody && !resp.Chunked && resp.ContentLength < 0
	w := c.bw
	writeStatus(w, resp.Status, orDefault(resp.Reason, statusText(resp.Status)))
	resp.Header.write(w)
	if resp.Chunked && !noBody {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	keep := !untilClose
	if !keep || c.req.Close || c.srv.shutdown.Load() {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if noBody {
		if resp.Close {
			c.dropUpstream(addr)
		}
		return resp.Status, w.Flush() == nil && keep
	}
	if err := copyBody(w, u.br, resp.ContentLength, resp.Chunked); err != nil && !(untilClose && errors.Is(err, io.EOF)) {
		c.dropUpstream(addr)
		return resp.Status, false
	}
	if resp.Close || untilClose {
		c.dropUpstream(addr)
	}
	return resp.Status, w.Flush() == nil && keep
}

// copyBody copies a body delimited by length (or chunked, or -1: until
// EOF) from r to w, flushing w whenever r has nothing more buffered, so a
// streamed body reaches the other side as it arrives.
func copyBody(w *bufio.Writer, r *bufio.Reader, length int64, chunked bool) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	if chunked {
		return copyChunked(w, r, buf)
	}
	for length != 0 {
		n := len(buf)
		if length > 0 && int64(n) > length {
			n = int(length)
		}
		got, err := r.Read(buf[:n])
		if got > 0 {
			if _, werr := w.Write(buf[:got]); werr != nil {
				return werr
			}
			if length > 0 {
				length -= int64(got)
			}
			if r.Buffered() == 0 {
				if werr := w.Flush(); werr != nil {
					return werr
				}
			}
		}
		if err != nil {
			if length < 0 && errors.Is(err, io.EOF) {
				return w.Flush()
			}
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return w.Flush()
}

// copyChunked copies a chunked body, checking each chunk's size line, and
// its trailer.
func copyChunked(w *bufio.Writer, r *bufio.Reader, buf []byte) error {
	for {
		line, err := readCRLF(r)
		if err != nil {
			return err
		}
		if i := indexByte(line, ';'); i >= 0 {
			line = line[:i] // extensions are dropped
		}
		size, err := strconv.ParseUint(strings.TrimRight(string(line), " \t"), 16, 40)
		if err != nil || len(line) == 0 {
			return bad("malformed chunk size")
		}
		fmt.Fprintf(w, "%x\r\n", size)
		if size == 0 {
			var trailer Header
			if err := readHead(r, &trailer, 16<<10); err != nil {
				return err
			}
			trailer.write(w)
			w.WriteString("\r\n")
			return w.Flush()
		}
		for size > 0 {
			n := uint64(len(buf))
			if n > size {
				n = size
			}
			got, err := r.Read(buf[:n])
			if got > 0 {
				if _, werr := w.Write(buf[:got]); werr != nil {
					return werr
				}
				size -= uint64(got)
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		crlf, err := readCRLF(r)
		if err != nil {
			return err
		}
		if len(crlf) != 0 {
			return bad("malformed chunk: no CRLF after the data")
		}
		w.WriteString("\r\n")
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

// readCRLF reads a line of chunk framing, which must end in CRLF: a bare LF
// there is a classic way to make two parsers see different chunks.
func readCRLF(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, bad("chunk framing lines must end with CRLF")
	}
	return line[:len(line)-2], nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// splice copies both ways between two connections (and what their readers
// already buffered) until both directions end.
func splice(a net.Conn, ar *bufio.Reader, b net.Conn, br *bufio.Reader) {
	done := make(chan struct{}, 2)
	cp := func(dst net.Conn, src io.Reader) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(b, ar)
	go cp(a, br)
	<-done
	<-done
}

// writeStatus writes a status line without allocating.
func writeStatus(w *bufio.Writer, status int, reason string) {
	var num [3]byte
	w.WriteString("HTTP/1.1 ")
	w.Write(strconv.AppendInt(num[:0], int64(status), 10))
	w.WriteByte(' ')
	w.WriteString(reason)
	w.WriteString("\r\n")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Status " + strconv.Itoa(code)
}
