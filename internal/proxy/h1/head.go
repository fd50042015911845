// Package h1 owns the sidecar's reading of HTTP/1.1 on the wire: it parses the
// head of a request or a response in place, says how its body is framed, and
// copies bodies through without re-encoding them. It is strict: whatever it does
// not fully understand it reports as unsupported, so that the caller can hand
// the message to net/http instead. It uses the standard library only; the
// sidecar (internal/proxy) imports it.
package h1

import (
	"bufio"
	"bytes"
	"errors"
)

// Field is one header field, both parts pointing into the parsed head.
type Field struct {
	Name, Value []byte
}

// Framing says how a message's body is delimited.
type Framing uint8

const (
	// Empty: the message has no body (no Content-Length, no
	// Transfer-Encoding on a request; HEAD, 1xx, 204 and 304 responses).
	// A Content-Length of 0 is Length.
	Empty Framing = iota
	// Length: Content-Length bytes follow.
	Length
	// Chunked: the chunked transfer coding, possibly with trailers.
	Chunked
	// UntilClose: a response body that ends when the connection does.
	UntilClose
)

// Head is a parsed request or response head. Its byte slices point into the
// buffer it was parsed from and are valid only while that buffer is.
type Head struct {
	// Request line: Method and Target; response line: Status and Reason.
	Method, Target []byte
	Status         int
	Reason         []byte
	Minor          int // HTTP/1.Minor, 0 or 1

	Fields []Field

	Framing       Framing
	ContentLength int64 // with Framing Length
	// KeepAlive says whether the connection may carry another message after
	// this one, by the version and the Connection header.
	KeepAlive bool
	// Unusual is set when the request asks for something a plain relay of one
	// exchange does not do: a protocol switch (Upgrade), Expect, trailers
	// announced, TE, or a Connection header naming other fields.
	Unusual bool
	// Host is the value of the Host field, nil when there is none.
	Host []byte
	// ConnectionNames says that Connection lists a field name other than
	// keep-alive and close, whose field must not be forwarded.
	ConnectionNames bool
}

// Errors of the parsers. ErrIncomplete is not a failure: more bytes are needed.
var (
	ErrIncomplete  = errors.New("h1: incomplete head")
	ErrUnsupported = errors.New("h1: message this parser does not handle")
	ErrMalformed   = errors.New("h1: malformed message")
)

// HeadLen returns the length of the head at the start of b, through the empty
// line that ends it, or -1 when b does not hold a whole head yet. Only CRLF line
// ends are recognised.
func HeadLen(b []byte) int {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return -1
	}
	return i + 4
}

// ReadHead returns the next head buffered in br, reading until the empty line
// that ends it, without consuming it: the caller Discards len(head) once it
// takes the message. It fails with bufio.ErrBufferFull when the head does not
// fit br's buffer, and with the read error (io.EOF at a clean end) otherwise.
func ReadHead(br *bufio.Reader) ([]byte, error) {
	n := 1
	for {
		b, err := br.Peek(n)
		if len(b) > 0 {
			if l := HeadLen(b); l >= 0 {
				return b[:l], nil
			}
		}
		if err != nil {
			return nil, err
		}
		if n = br.Buffered(); n == len(b) {
			n++ // nothing more buffered: one more byte blocks for the next read
		}
		if n > br.Size() {
			return nil, bufio.ErrBufferFull
		}
	}
}

// maxFields bounds the header fields of one head; more is unsupported.
const maxFields = 100

// ParseRequest parses a request head that HeadLen delimited. It reports
// ErrUnsupported for anything outside the common case (HTTP/1.0 or 1.1, a
// token method, an origin- or absolute-form target, no obsolete line folding,
// unambiguous framing), so that the caller can leave the request to a general
// server, which answers malformed ones itself.
func ParseRequest(b []byte, h *Head) error {
	*h = Head{Fields: h.Fields[:0]}
	line, rest, ok := cutLine(b)
	if !ok {
		return ErrUnsupported
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || !isToken(line[:sp]) {
		return ErrUnsupported
	}
	h.Method = line[:sp]
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return ErrUnsupported
	}
	h.Target = line[:sp]
	for _, c := range h.Target {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return ErrUnsupported
		}
	}
	switch {
	case h.Target[0] == '/':
	case bytes.HasPrefix(h.Target, []byte("http://")):
		auth := h.Target[len("http://"):]
		if i := bytes.IndexAny(auth, "/?"); i >= 0 {
			auth = auth[:i]
		}
		if !validAuthority(auth) {
			return ErrUnsupported
		}
	default:
		return ErrUnsupported
	}
	minor, ok := parseVersion(line[sp+1:])
	if !ok {
		return ErrUnsupported
	}
	h.Minor = minor
	if err := parseFields(rest, h, true); err != nil {
		return err
	}
	if (h.Host == nil && h.Minor == 1) || (h.Host != nil && len(h.Host) > 0 && !validAuthority(h.Host)) {
		return ErrUnsupported // net/http answers 400
	}
	return nil
}

// ParseResponse parses a response head that HeadLen delimited; toHEAD says it
// answers a HEAD request, so that it has no body whatever its fields say. It
// reports ErrMalformed for a head it cannot relay safely.
func ParseResponse(b []byte, toHEAD bool, h *Head) error {
	*h = Head{Fields: h.Fields[:0]}
	line, rest, ok := cutLine(b)
	if !ok || len(line) < len("HTTP/1.1 200") {
		return ErrMalformed
	}
	minor, ok := parseVersion(line[:8])
	if !ok || line[8] != ' ' {
		return ErrMalformed
	}
	h.Minor = minor
	code := line[9:12]
	for _, c := range code {
		if c < '0' || c > '9' {
			return ErrMalformed
		}
	}
	h.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if h.Status < 100 {
		return ErrMalformed
	}
	switch {
	case len(line) == 12:
	case line[12] == ' ':
		h.Reason = line[13:]
	default:
		return ErrMalformed
	}
	if err := parseFields(rest, h, false); err != nil {
		return err
	}
	switch {
	case h.Status < 200 || h.Status == 204 || h.Status == 304 || toHEAD:
		h.Framing, h.ContentLength = Empty, 0
	case h.Framing == Empty:
		// Neither Content-Length nor chunked: the body runs to the close.
		h.Framing, h.KeepAlive = UntilClose, false
	}
	return nil
}

// validAuthority accepts a host[:port] of letters, digits and "-._:[]", with
// a port of digits only, a subset of what net/http takes; anything else is
// left to net/http.
func validAuthority(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']':
		default:
			return false
		}
	}
	// The port, when there is one, is digits: "[v6]:port" or "host:port".
	var port []byte
	if b[0] == '[' {
		i := bytes.IndexByte(b, ']')
		if i < 0 || bytes.ContainsAny(b[1:i], "[]") {
			return false
		}
		if rest := b[i+1:]; len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
		}
	} else {
		if bytes.ContainsAny(b, "[]") {
			return false
		}
		if i := bytes.IndexByte(b, ':'); i >= 0 {
			port = b[i+1:]
		}
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseVersion reads "HTTP/1.0" or "HTTP/1.1".
func parseVersion(v []byte) (minor int, ok bool) {
	if len(v) != 8 || string(v[:7]) != "HTTP/1." || (v[7] != '0' && v[7] != '1') {
		return 0, false
	}
	return int(v[7] - '0'), true
}

// cutLine cuts the first CRLF-terminated line from b. A bare LF or CR inside
// the line is refused.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// parseFields parses the header fields after the start line, through the
// empty line, and derives the framing and connection options.
func parseFields(b []byte, h *Head, request bool) error {
	bad := ErrMalformed
	if request {
		bad = ErrUnsupported
	}
	sawLength, sawTE := false, false
	connClose, connKeepAlive := false, false
	for {
		line, rest, ok := cutLine(b)
		if !ok {
			return bad
		}
		b = rest
		if len(line) == 0 {
			break
		}
		if len(h.Fields) == maxFields {
			return bad
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return bad // also obsolete folding, which starts with a space
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return bad
			}
		}
		h.Fields = append(h.Fields, Field{name, value})
		switch len(name) {
		case 2:
			if request && equalFold(name, "te") {
				h.Unusual = true
			}
		case 4:
			if equalFold(name, "host") {
				if h.Host != nil && request {
					return bad // two Host fields: net/http answers 400
				}
				h.Host = value
			}
		case 6:
			if request && equalFold(name, "expect") {
				h.Unusual = true
			}
		case 7:
			if equalFold(name, "upgrade") {
				h.Unusual = true
			} else if request && equalFold(name, "trailer") {
				h.Unusual = true
			}
		case 10:
			if equalFold(name, "connection") {
				for v := value; len(v) > 0; {
					var t []byte
					t, v = cutComma(v)
					switch {
					case len(t) == 0:
					case equalFold(t, "close"):
						connClose = true
					case equalFold(t, "keep-alive"):
						connKeepAlive = true
					default:
						h.ConnectionNames = true
						if request {
							h.Unusual = true // upgrade, or a field to strip by name
						}
					}
				}
			}
		case 14:
			if equalFold(name, "content-length") {
				n, ok := parseLength(value)
				if !ok || (sawLength && n != h.ContentLength) {
					return bad
				}
				sawLength, h.ContentLength = true, n
			}
		case 17:
			if equalFold(name, "transfer-encoding") {
				if sawTE || !equalFold(value, "chunked") {
					return bad // codings other than chunked alone are net/http's
				}
				sawTE = true
			}
		}
	}
	if len(b) != 0 {
		return bad // bytes after the empty line: not a head HeadLen delimited
	}
	switch {
	case sawTE && sawLength && request:
		return bad // ambiguous framing (RFC 9112, section 6.3): net/http's to refuse
	case sawTE:
		h.Framing, h.ContentLength = Chunked, 0
	case sawLength:
		h.Framing = Length
	}
	h.KeepAlive = !connClose && (h.Minor == 1 || connKeepAlive)
	if sawTE && sawLength {
		h.KeepAlive = false // a response framed both ways: chunked wins, and the connection ends
	}
	return nil
}

// parseLength parses a Content-Length value: decimal digits only, at most 18.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// cutComma cuts the first comma-separated element of a list value, trimmed.
func cutComma(v []byte) (elem, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		return trimOWS(v[:i]), v[i+1:]
	}
	return trimOWS(v), nil
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// equalFold compares b with lower, an ASCII lower-case string, ignoring case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// EqualFold says whether b equals lower (ASCII lower case) ignoring case.
func EqualFold(b []byte, lower string) bool { return equalFold(b, lower) }

// tokenChars marks the characters of an RFC 9110 token.
var tokenChars = func() (t [256]bool) {
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
	return
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

// IsHopByHop says whether a field is hop-by-hop (RFC 9110, section 7.6.1) and
// so never forwarded as is. The framing fields Transfer-Encoding and Trailer
// are not among them here: the relay passes bodies through in their framing.
func IsHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "te")
	case 7:
		return equalFold(name, "upgrade")
	case 10:
		return equalFold(name, "connection") || equalFold(name, "keep-alive")
	case 16:
		return equalFold(name, "proxy-connection")
	case 18:
		return equalFold(name, "proxy-authenticate")
	case 19:
		return equalFold(name, "proxy-authorization")
	}
	return false
}

// Named says whether name is listed in a Connection field of h (one that names
// fields: h.ConnectionNames).
func (h *Head) Named(name []byte) bool {
	for _, f := range h.Fields {
		if !equalFold(f.Name, "connection") {
			continue
		}
		for v := f.Value; len(v) > 0; {
			var t []byte
			t, v = cutComma(v)
			if len(t) == len(name) && bytes.EqualFold(t, name) {
				return true
			}
		}
	}
	return false
}

// Get returns the value of the first field named name (ASCII lower case),
// ignoring case, or nil.
func (h *Head) Get(lower string) []byte {
	for _, f := range h.Fields {
		if equalFold(f.Name, lower) {
			return f.Value
		}
	}
	return nil
}
