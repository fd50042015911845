// Package detect owns protocol detection for the sidecar's listeners: it peeks at
// the first bytes of an accepted connection, waiting at most a bounded time, and
// says whether the client speaks HTTP/1, HTTP/2 (prior knowledge), TLS or
// something else, then hands back a connection that replays the peeked bytes.
// It uses the standard library only; the sidecar (internal/proxy) imports it.
package detect

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

// Protocol is what a client speaks, as judged from its first bytes.
type Protocol int

const (
	// TCP is anything else: bytes that fit no other protocol, or no bytes
	// within the wait (a server-first protocol such as SMTP or MySQL).
	TCP Protocol = iota
	// HTTP1 is an HTTP/1.x request line: a method token and a space.
	HTTP1
	// HTTP2 is the HTTP/2 client connection preface (prior knowledge, h2c).
	HTTP2
	// TLS is a TLS record carrying a ClientHello.
	TLS
)

// String names the protocol the way logs and metric labels spell it.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	case TLS:
		return "tls"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// preface is the HTTP/2 client connection preface (RFC 9113, section 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxPeek is the most bytes Sniff ever needs to decide: with MaxPeek bytes or
// more, it always returns needMore == false.
const MaxPeek = len(preface)

// maxMethod is the longest method token taken for HTTP/1. The longest method in
// the IANA registry, UPDATEREDIRECTREF, has 17 bytes.
const maxMethod = 20

// Sniff decides which protocol the bytes b, the first a client sent, belong to.
// needMore is true while b is too short to decide: a prefix of something that
// could still turn out to be HTTP/1, HTTP/2 or TLS; p is then TCP, the answer if
// no more bytes come. Once Sniff returns needMore == false for some b, it returns
// the same protocol for every b' that starts with b.
//
// HTTP/1 is a method token of 1 to 20 bytes, uppercase letters and, after the
// first, hyphens (RFC 9110 allows extension methods; the registry has
// BASELINE-CONTROL), followed by a space. HTTP/2 is the whole client preface.
// TLS is a handshake record (0x16), version 3.0 to 3.4 (0x03 0x00-0x04), any
// length, then a ClientHello (handshake type 1).
func Sniff(b []byte) (p Protocol, needMore bool) {
	if len(b) == 0 {
		return TCP, true
	}
	switch c := b[0]; {
	case c == 0x16:
		return sniffTLS(b)
	case c == 'P':
		// "PRI " is a valid method too: wait until the preface is whole or
		// has been ruled out.
		n := min(len(b), len(preface))
		if string(b[:n]) == preface[:n] {
			if n == len(preface) {
				return HTTP2, false
			}
			return TCP, true
		}
		return sniffHTTP1(b)
	case 'A' <= c && c <= 'Z':
		return sniffHTTP1(b)
	}
	return TCP, false
}

// sniffHTTP1 looks for a method token followed by a space.
func sniffHTTP1(b []byte) (Protocol, bool) {
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			return HTTP1, false
		case i == maxMethod:
			return TCP, false // token too long, or bad byte where the space must be
		case 'A' <= c && c <= 'Z', c == '-' && i > 0:
		default:
			return TCP, false
		}
	}
	return TCP, true
}

// sniffTLS checks the record header and the handshake type.
func sniffTLS(b []byte) (Protocol, bool) {
	// b[0] == 0x16; b[3:5] is the record length, which is not checked.
	if len(b) > 1 && b[1] != 0x03 {
		return TCP, false
	}
	if len(b) > 2 && b[2] > 0x04 {
		return TCP, false
	}
	if len(b) < 6 {
		return TCP, true
	}
	if b[5] != 0x01 {
		return TCP, false
	}
	return TLS, false
}

// Detect reads the first bytes of c until Sniff can decide, waiting at most
// wait in all (a client that sends nothing, or stalls before enough bytes
// arrived, is TCP once wait has passed; wait <= 0 reads nothing and says TCP).
// It returns as soon as the bytes decide, however few.
//
// The returned connection wraps c, is never nil, and must be used instead of c:
// reads return the peeked bytes first, then read from c. It keeps c's deadlines
// and, when c has them, CloseWrite; NetConn returns c. Detect leaves c with no
// read deadline.
//
// An error other than the wait running out or the client closing is returned
// with the protocol TCP; the caller should close the returned connection.
func Detect(c net.Conn, wait time.Duration) (Protocol, net.Conn, error) {
	r, out := wrap(c)
	if wait <= 0 {
		return TCP, out, nil
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return TCP, out, fmt.Errorf("detect protocol of connection from %s: set read deadline: %w", c.RemoteAddr(), err)
	}
	p, readErr := r.fill()
	if err := c.SetReadDeadline(time.Time{}); err != nil && readErr == nil {
		readErr = fmt.Errorf("clear read deadline: %w", err)
	}
	if readErr != nil {
		return TCP, out, fmt.Errorf("detect protocol of connection from %s: %w", c.RemoteAddr(), readErr)
	}
	return p, out, nil
}

// fill reads into the peek buffer until Sniff decides, the deadline passes or
// the client closes its side.
func (c *conn) fill() (Protocol, error) {
	for {
		p, more := Sniff(c.buf[:c.n])
		if !more {
			return p, nil
		}
		n, err := c.Conn.Read(c.buf[c.n:])
		c.n += n
		if err == nil {
			continue
		}
		if p, more := Sniff(c.buf[:c.n]); !more {
			if errors.Is(err, io.EOF) {
				c.eof = true
			}
			return p, nil
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return TCP, nil
		case errors.Is(err, io.EOF):
			c.eof = true
			return TCP, nil
		}
		return TCP, err
	}
}
