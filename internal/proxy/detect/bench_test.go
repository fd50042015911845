package detect

import (
	"io"
	"net"
	"testing"
	"time"
)

func BenchmarkSniff(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"http1", "GET /index.html HTTP/1.1\r\n"},
		{"http2", preface},
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
		{"tcp", "\x00\x00\x00\x08\x04\xd2\x16\x2f"},
	} {
		in := []byte(bc.in)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Sniff(in)
			}
		})
	}
}

// memConn is a connection whose peer has already sent data.
type memConn struct {
	net.TCPConn // for the method set only; never used
	data        []byte
}

func (c *memConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *memConn) SetReadDeadline(time.Time) error { return nil }

// BenchmarkDetect measures Detect itself, with the bytes already there: the
// one allocation is the returned connection.
func BenchmarkDetect(b *testing.B) {
	req := []byte("GET /index.html HTTP/1.1\r\nHost: bookstore\r\n\r\n")
	c := &memConn{}
	b.ReportAllocs()
	for b.Loop() {
		c.data = req
		p, _, err := Detect(c, time.Second)
		if err != nil || p != HTTP1 {
			b.Fatalf("Detect = %v, %v", p, err)
		}
	}
}
