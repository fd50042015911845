package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the parsers of request and response
// heads and of chunked bodies. None may panic; a request the parser takes
// must be one net/http reads the same way (method, target, framing), since
// the relay and net/http serve the same listeners; a chunked body it copies
// must be passed on byte for byte.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST http://x:80/e?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := HeadLen(b)
		if n < 0 {
			return
		}
		head := b[:n]
		var h Head
		if err := ParseRequest(head, &h); err == nil {
			req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
			if rerr != nil {
				t.Fatalf("ParseRequest took %q, which net/http refuses: %v", head, rerr)
			}
			if req.Method != string(h.Method) || req.RequestURI != string(h.Target) {
				t.Fatalf("%q: parsed %s %s, net/http %s %s", head, h.Method, h.Target, req.Method, req.RequestURI)
			}
			chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
			if chunked != (h.Framing == Chunked) {
				t.Fatalf("%q: chunked %v, net/http %v", head, h.Framing == Chunked, req.TransferEncoding)
			}
			if !chunked && req.ContentLength != h.ContentLength {
				t.Fatalf("%q: Content-Length %d, net/http %d", head, h.ContentLength, req.ContentLength)
			}
			if req.Host != string(h.Host) && !strings.HasPrefix(string(h.Target), "http://") {
				t.Fatalf("%q: Host %q, net/http %q", head, h.Host, req.Host)
			}
		}
		var r Head
		ParseResponse(head, false, &r)

		// The bytes after the head, as a chunked body.
		var out bytes.Buffer
		w := &Writer{W: &out}
		br := bufio.NewReaderSize(bytes.NewReader(b[n:]), 16)
		if _, err := CopyChunked(w, br); err == nil {
			w.Flush()
			if !bytes.HasPrefix(b[n:], out.Bytes()) {
				t.Fatalf("CopyChunked(%q) passed on %q, not a prefix of its input", b[n:], out.Bytes())
			}
		}
	})
}
