package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http/httputil"
	"strings"
	"testing"
)

// readRequest never panics, and what it accepts is unambiguous: a token
// method, an origin-form target, at most one Host, never both framings.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n", "GET /\n\n", "GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\n x\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var req Request
		var scratch []byte
		err := readRequest(bufio.NewReaderSize(strings.NewReader(in), 4096), &req, 8192, &scratch)
		if err != nil {
			return
		}
		if !isToken([]byte(req.Method)) || !(strings.HasPrefix(req.Target, "/") || req.Target == "*") {
			t.Fatalf("accepted %q %q", req.Method, req.Target)
		}
		if len(req.Header.Values("Host")) > 1 {
			t.Fatal("accepted two Host fields")
		}
		if req.Chunked && len(req.Header.Values("Content-Length")) > 0 {
			t.Fatal("accepted both framings")
		}
		if req.ContentLength < -1 || (req.ContentLength == -1) != req.Chunked {
			t.Fatalf("framing %d chunked=%v", req.ContentLength, req.Chunked)
		}
		// Written out and read back, it frames the same way.
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		w.WriteString(req.Method + " " + req.Target + " HTTP/1.1\r\n")
		req.Header.write(w)
		w.WriteString("\r\n")
		w.Flush()
		var again Request
		if err := readRequest(bufio.NewReader(&buf), &again, 1<<20, &scratch); err != nil {
			t.Fatalf("re-reading %q: %v", buf.String(), err)
		}
		if again.ContentLength != req.ContentLength || again.Chunked != req.Chunked || again.Host != req.Host {
			t.Fatalf("re-read framing differs: %+v vs %+v", again, req)
		}
	})
}

// Whatever chunked body the proxy accepts, it re-frames into one that
// decodes (with Go's own chunked reader) to the same bytes.
func FuzzChunked(f *testing.F) {
	for _, s := range []string{"3\r\nabc\r\n0\r\n\r\n", "1;ext=x\r\na\r\n0\r\nTrailer: v\r\n\r\n", "ff\r\n", "0\r\n\r\n", "3\r\nabcd\r\n0\r\n\r\n", "-1\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if err := copyBody(w, bufio.NewReader(strings.NewReader(in)), -1, true); err != nil {
			return
		}
		want, err := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(in)))
		if err != nil {
			t.Fatalf("the proxy accepted %q, which Go's chunked reader refuses: %v", in, err)
		}
		got, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(out.Bytes())))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("re-framed %q as %q: %q vs %q (%v)", in, out.String(), got, want, err)
		}
	})
}
