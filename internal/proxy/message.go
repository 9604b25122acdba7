package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Header is an ordered list of header fields. Names keep the case they
// arrived in; lookups ignore case.
type Header struct {
	fields []field
}

type field struct {
	name, value string
}

// Get returns the first value of name, or "".
func (h *Header) Get(name string) string {
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			return f.value
		}
	}
	return ""
}

// Values returns every value of name.
func (h *Header) Values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			out = append(out, f.value)
		}
	}
	return out
}

// Del removes every field named name.
func (h *Header) Del(name string) {
	h.filter(func(f field) bool { return !strings.EqualFold(f.name, name) })
}

// DelPrefix removes every field whose name starts with prefix (any case).
func (h *Header) DelPrefix(prefix string) {
	h.filter(func(f field) bool {
		return len(f.name) < len(prefix) || !strings.EqualFold(f.name[:len(prefix)], prefix)
	})
}

// Set replaces every field named name with one.
func (h *Header) Set(name, value string) {
	h.Del(name)
	h.Add(name, value)
}

// Add appends a field.
func (h *Header) Add(name, value string) {
	h.fields = append(h.fields, field{name: name, value: value})
}

// Len is the number of fields.
func (h *Header) Len() int { return len(h.fields) }

func (h *Header) filter(keep func(field) bool) {
	out := h.fields[:0]
	for _, f := range h.fields {
		if keep(f) {
			out = append(out, f)
		}
	}
	clear(h.fields[len(out):])
	h.fields = out
}

func (h *Header) reset() {
	clear(h.fields)
	h.fields = h.fields[:0]
}

// write writes the fields, one per line.
func (h *Header) write(w *bufio.Writer) {
	for _, f := range h.fields {
		w.WriteString(f.name)
		w.WriteString(": ")
		w.WriteString(f.value)
		w.WriteString("\r\n")
	}
}

// Request is the head of a request the proxy received.
type Request struct {
	Method string
	// Target is the request target: a path with an optional query (origin
	// form), or "*" for OPTIONS.
	Target string
	Host   string
	Header Header
	// ContentLength is the body's length, -1 when chunked, 0 for no body.
	ContentLength int64
	Chunked       bool
	// Close is set when the client wants the connection closed after this
	// request (or speaks HTTP/1.0 without keep-alive).
	Close bool
	// Upgrade is the protocol the client asks to switch to (websocket), or "".
	Upgrade    string
	RemoteAddr string
}

// Errors a request can be refused with; the server answers each with a
// problem and closes the connection.
var (
	errHeadTooLarge = errors.New("request head too large")
	errBadRequest   = errors.New("bad request")
)

type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }
func (e badRequest) Unwrap() error { return errBadRequest }

func bad(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// hopHeaders are connection-specific: never forwarded.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade"}

// readHead reads header lines into h until the empty line, with at most
// maxBytes in all. It returns the bytes read.
func readHead(r *bufio.Reader, h *Header, maxBytes int) error {
	total := 0
	for {
		line, err := r.ReadSlice('\n')
		total += len(line)
		if errors.Is(err, bufio.ErrBufferFull) || total > maxBytes {
			return errHeadTooLarge
		}
		if err != nil {
			return err
		}
		line = trimEOL(line)
		if len(line) == 0 {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return bad("obsolete line folding is not accepted")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return bad("malformed header line")
		}
		name := line[:colon]
		if !isToken(name) {
			return bad("malformed header name %q", truncate(string(name), 40))
		}
		value := bytes.Trim(line[colon+1:], " \t")
		if !validValue(value) {
			return bad("header %s has a control character", name)
		}
		if len(h.fields) >= 200 {
			return errHeadTooLarge
		}
		h.fields = append(h.fields, field{name: string(name), value: string(value)})
	}
}

func trimEOL(line []byte) []byte {
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line
}

// isToken reports whether b is an RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue refuses control characters other than tab (CR and LF inside a
// value would split it into two fields downstream).
func validValue(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// readRequest reads a request head. It refuses what would let two HTTP
// parsers disagree about where a message ends (request smuggling): both
// Content-Length and Transfer-Encoding, several different lengths, codings
// other than chunked, several Host fields, obs-fold, absolute-form targets.
func readRequest(r *bufio.Reader, req *Request, maxBytes int) error {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return errHeadTooLarge
	}
	if err != nil {
		return err
	}
	line = trimEOL(line)
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || !isToken(method) || len(target) == 0 {
		return bad("malformed request line")
	}
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		req.Close = true
	default:
		return bad("only HTTP/1.0 and HTTP/1.1 are spoken here")
	}
	switch {
	case target[0] == '/':
	case len(target) == 1 && target[0] == '*' && string(method) == "OPTIONS":
	default:
		return bad("the request target must be a path (absolute-form and authority-form are refused)")
	}
	for _, c := range target {
		if c <= 0x20 || c >= 0x7f {
			return bad("the request target has a control or non-ASCII character")
		}
	}
	req.Method, req.Target = string(method), string(target)
	if err := readHead(r, &req.Header, maxBytes); err != nil {
		return err
	}
	hosts := req.Header.Values("Host")
	switch {
	case len(hosts) > 1:
		return bad("more than one Host header")
	case len(hosts) == 0:
		return bad("a request needs a Host header")
	}
	req.Host = hosts[0]
	if err := framing(&req.Header, &req.ContentLength, &req.Chunked); err != nil {
		return err
	}
	conn := strings.ToLower(strings.Join(req.Header.Values("Connection"), ","))
	if hasToken(conn, "close") {
		req.Close = true
	} else if hasToken(conn, "keep-alive") {
		req.Close = false
	}
	if hasToken(conn, "upgrade") {
		req.Upgrade = req.Header.Get("Upgrade")
	}
	return nil
}

// framing reads how a message's body is delimited.
func framing(h *Header, length *int64, chunked *bool) error {
	te := h.Values("Transfer-Encoding")
	cls := h.Values("Content-Length")
	*length, *chunked = 0, false
	if len(te) > 0 {
		if len(cls) > 0 {
			return bad("both Content-Length and Transfer-Encoding")
		}
		if len(te) != 1 || !strings.EqualFold(strings.TrimSpace(te[0]), "chunked") {
			return bad("only Transfer-Encoding: chunked is accepted")
		}
		*length, *chunked = -1, true
		return nil
	}
	if len(cls) > 0 {
		n, err := strconv.ParseInt(cls[0], 10, 64)
		if err != nil || n < 0 || cls[0] == "" || cls[0][0] == '+' {
			return bad("malformed Content-Length")
		}
		for _, v := range cls[1:] {
			if v != cls[0] {
				return bad("several different Content-Length values")
			}
		}
		*length = n
	}
	return nil
}

func hasToken(list, token string) bool {
	for _, t := range strings.Split(list, ",") {
		if strings.TrimSpace(t) == token {
			return true
		}
	}
	return false
}

// stripHop removes hop-by-hop fields, including those Connection names.
func stripHop(h *Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// Response is the head of an upstream's response.
type Response struct {
	Status        int
	Reason        string
	Header        Header
	ContentLength int64 // -1: chunked or until close
	Chunked       bool
	Close         bool // the upstream will close the connection
}

func readResponse(r *bufio.Reader, resp *Response, maxBytes int) error {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return errHeadTooLarge
	}
	if err != nil {
		return err
	}
	line = trimEOL(line)
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return fmt.Errorf("malformed status line from upstream")
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 || code > 999 || (len(line) > 12 && line[12] != ' ') {
		return fmt.Errorf("malformed status code from upstream")
	}
	resp.Status = code
	if len(line) > 13 {
		resp.Reason = string(line[13:])
	}
	resp.Close = line[7] == '0'
	if err := readHead(r, &resp.Header, maxBytes); err != nil {
		return err
	}
	if err := framing(&resp.Header, &resp.ContentLength, &resp.Chunked); err != nil {
		return err
	}
	if !resp.Chunked && len(resp.Header.Values("Content-Length")) == 0 {
		resp.ContentLength = -1 // until the upstream closes
	}
	conn := strings.ToLower(strings.Join(resp.Header.Values("Connection"), ","))
	if hasToken(conn, "close") {
		resp.Close = true
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
