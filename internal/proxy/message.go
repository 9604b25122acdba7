package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"slices"
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

// count returns how many fields are named name.
func (h *Header) count(name string) int {
	n := 0
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			n++
		}
	}
	return n
}

// hasToken reports whether a comma-separated list field named name holds
// token (any case), without allocating.
func (h *Header) hasToken(name, token string) bool {
	for _, f := range h.fields {
		if !strings.EqualFold(f.name, name) {
			continue
		}
		for list := f.value; list != ""; {
			var t string
			t, list, _ = strings.Cut(list, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
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
	out := h.fields[:0]
	for _, f := range h.fields {
		if len(f.name) != len(name) || !strings.EqualFold(f.name, name) {
			out = append(out, f)
		}
	}
	clear(h.fields[len(out):])
	h.fields = out
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

// readLines reads the lines of a message head (start line, fields, up to
// the empty line) into scratch, each ended by '\n', with at most maxBytes
// in all; obs-fold is refused. The caller turns scratch into one string
// whose substrings become the fields: one allocation per head, not two per
// field, and strings that stay valid however long anyone keeps them.
func readLines(r *bufio.Reader, scratch []byte, maxBytes int, startLine bool) ([]byte, error) {
	total := 0
	for first := startLine; ; first = false {
		line, err := r.ReadSlice('\n')
		total += len(line)
		if errors.Is(err, bufio.ErrBufferFull) || total > maxBytes {
			return scratch, errHeadTooLarge
		}
		if err != nil {
			return scratch, err
		}
		line = trimEOL(line)
		if len(line) == 0 && !first {
			return scratch, nil
		}
		if !first && (line[0] == ' ' || line[0] == '\t') {
			return scratch, bad("obsolete line folding is not accepted")
		}
		scratch = append(append(scratch, line...), '\n')
	}
}

// parseFields parses the field lines of block (each ended by '\n') into h.
func parseFields(block string, h *Header) error {
	for block != "" {
		nl := strings.IndexByte(block, '\n')
		line := block[:nl]
		block = block[nl+1:]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return bad("malformed header line")
		}
		name := line[:colon]
		if !isToken(name) {
			return bad("malformed header name %q", truncate(name, 40))
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !validValue(value) {
			return bad("header %s has a control character", name)
		}
		if len(h.fields) >= 200 {
			return errHeadTooLarge
		}
		h.fields = append(h.fields, field{name: name, value: value})
	}
	return nil
}

// readHead reads a block of fields (trailers) on its own.
func readHead(r *bufio.Reader, h *Header, maxBytes int) error {
	lines, err := readLines(r, nil, maxBytes, false)
	if err != nil {
		return err
	}
	return parseFields(string(lines), h)
}

func trimEOL(line []byte) []byte {
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line
}

// isToken reports whether b is an RFC 9110 token.
func isToken[T ~string | ~[]byte](b T) bool {
	if len(b) == 0 {
		return false
	}
	for i := 0; i < len(b); i++ {
		if c := b[i]; c >= 0x80 || !tokenChars[c] {
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
func validValue(b string) bool {
	for i := 0; i < len(b); i++ {
		if c := b[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// readRequest reads a request head. It refuses what would let two HTTP
// parsers disagree about where a message ends (request smuggling): both
// Content-Length and Transfer-Encoding, several different lengths, codings
// other than chunked, several Host fields, obs-fold, absolute-form targets.
func readRequest(r *bufio.Reader, req *Request, maxBytes int, scratch *[]byte) error {
	lines, err := readLines(r, (*scratch)[:0], maxBytes, true)
	*scratch = lines
	if err != nil {
		return err
	}
	head := string(lines)
	nl := strings.IndexByte(head, '\n')
	line, fields := head[:nl], head[nl+1:]
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isToken(method) || len(target) == 0 {
		return bad("malformed request line")
	}
	switch proto {
	case "HTTP/1.1":
	case "HTTP/1.0":
		req.Close = true
	default:
		return bad("only HTTP/1.0 and HTTP/1.1 are spoken here")
	}
	switch {
	case target[0] == '/':
	case target == "*" && method == "OPTIONS":
	default:
		return bad("the request target must be a path (absolute-form and authority-form are refused)")
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= 0x20 || c >= 0x7f {
			return bad("the request target has a control or non-ASCII character")
		}
	}
	req.Method, req.Target = method, target
	if err := parseFields(fields, &req.Header); err != nil {
		return err
	}
	switch req.Header.count("Host") {
	case 0:
		return bad("a request needs a Host header")
	case 1:
		req.Host = req.Header.Get("Host")
	default:
		return bad("more than one Host header")
	}
	if err := framing(&req.Header, &req.ContentLength, &req.Chunked); err != nil {
		return err
	}
	if req.Header.hasToken("Connection", "close") {
		req.Close = true
	} else if req.Header.hasToken("Connection", "keep-alive") {
		req.Close = false
	}
	if req.Header.hasToken("Connection", "upgrade") {
		req.Upgrade = req.Header.Get("Upgrade")
	}
	return nil
}

// framing reads how a message's body is delimited.
func framing(h *Header, length *int64, chunked *bool) error {
	te, cls := h.count("Transfer-Encoding"), h.count("Content-Length")
	*length, *chunked = 0, false
	if te > 0 {
		if cls > 0 {
			return bad("both Content-Length and Transfer-Encoding")
		}
		if te != 1 || !strings.EqualFold(strings.TrimSpace(h.Get("Transfer-Encoding")), "chunked") {
			return bad("only Transfer-Encoding: chunked is accepted")
		}
		*length, *chunked = -1, true
		return nil
	}
	if cls > 0 {
		first := h.Get("Content-Length")
		n, err := strconv.ParseInt(first, 10, 64)
		if err != nil || n < 0 || first == "" || first[0] == '+' {
			return bad("malformed Content-Length")
		}
		for _, f := range h.fields {
			if strings.EqualFold(f.name, "Content-Length") && f.value != first {
				return bad("several different Content-Length values")
			}
		}
		*length = n
	}
	return nil
}

// stripHop removes hop-by-hop fields, including those Connection names,
// in one pass over the fields.
func stripHop(h *Header) {
	var named [16]string // fields Connection names (more are refused below)
	n := 0
	for _, f := range h.fields {
		if len(f.name) != len("Connection") || !strings.EqualFold(f.name, "Connection") {
			continue
		}
		for list := f.value; list != ""; {
			var name string
			name, list, _ = strings.Cut(list, ",")
			if name = strings.TrimSpace(name); name != "" && n < len(named) {
				named[n] = name
				n++
			}
		}
	}
	out := h.fields[:0]
	for _, f := range h.fields {
		if !isHop(f.name) && !slices.ContainsFunc(named[:n], func(m string) bool { return strings.EqualFold(m, f.name) }) {
			out = append(out, f)
		}
	}
	clear(h.fields[len(out):])
	h.fields = out
}

// isHop reports whether name is one of hopHeaders, comparing lengths
// before case-folding.
func isHop(name string) bool {
	for _, hop := range hopHeaders {
		if len(hop) == len(name) && strings.EqualFold(hop, name) {
			return true
		}
	}
	return false
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

func readResponse(r *bufio.Reader, resp *Response, maxBytes int, scratch *[]byte) error {
	lines, err := readLines(r, (*scratch)[:0], maxBytes, true)
	*scratch = lines
	if err != nil {
		return err
	}
	head := string(lines)
	nl := strings.IndexByte(head, '\n')
	line, fields := head[:nl], head[nl+1:]
	if len(line) < 12 || !strings.HasPrefix(line, "HTTP/1.") || line[8] != ' ' {
		return fmt.Errorf("malformed status line from upstream")
	}
	code, err := strconv.Atoi(line[9:12])
	if err != nil || code < 100 || code > 999 || (len(line) > 12 && line[12] != ' ') {
		return fmt.Errorf("malformed status code from upstream")
	}
	resp.Status = code
	if len(line) > 13 {
		resp.Reason = line[13:]
	}
	resp.Close = line[7] == '0'
	if err := parseFields(fields, &resp.Header); err != nil {
		return err
	}
	if err := framing(&resp.Header, &resp.ContentLength, &resp.Chunked); err != nil {
		return err
	}
	if !resp.Chunked && resp.Header.count("Content-Length") == 0 {
		resp.ContentLength = -1 // until the upstream closes
	}
	if resp.Header.hasToken("Connection", "close") {
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
