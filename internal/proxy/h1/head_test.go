package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Head // Fields, Method, Target, Host compared as strings below
		wantErr error
	}{
		{name: "GET origin-form", in: "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/a?b=1"), Minor: 1, KeepAlive: true, Host: []byte("x")}},
		{name: "POST with a length", in: "POST http://x:80/e HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n",
			want: Head{Method: []byte("POST"), Target: []byte("http://x:80/e"), Minor: 1, KeepAlive: true, Host: []byte("x"), Framing: Length, ContentLength: 12}},
		{name: "Content-Length 0 is a length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
			want: Head{Method: []byte("POST"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Framing: Length}},
		{name: "chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
			want: Head{Method: []byte("POST"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Framing: Chunked}},
		{name: "Connection: close", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/"), Minor: 1, Host: []byte("x")}},
		{name: "HTTP/1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/"), KeepAlive: true}},
		{name: "HTTP/1.0 closes", in: "GET / HTTP/1.0\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/")}},
		{name: "same length twice", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
			want: Head{Method: []byte("POST"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Framing: Length, ContentLength: 3}},
		{name: "Upgrade is unusual", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Unusual: true, ConnectionNames: true}},
		{name: "Expect is unusual", in: "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
			want: Head{Method: []byte("PUT"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Unusual: true, Framing: Length, ContentLength: 1}},
		{name: "announced trailers are unusual", in: "POST / HTTP/1.1\r\nHost: x\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: Head{Method: []byte("POST"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Unusual: true, Framing: Chunked}},
		{name: "TE is unusual", in: "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
			want: Head{Method: []byte("GET"), Target: []byte("/"), Minor: 1, KeepAlive: true, Host: []byte("x"), Unusual: true}},

		{name: "the HTTP/2 preface", in: "PRI * HTTP/2.0\r\n\r\n", wantErr: ErrUnsupported},
		{name: "CONNECT authority-form", in: "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", wantErr: ErrUnsupported},
		{name: "no Host in HTTP/1.1", in: "GET / HTTP/1.1\r\n\r\n", wantErr: ErrUnsupported},
		{name: "two Hosts", in: "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", wantErr: ErrUnsupported},
		{name: "length and chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", wantErr: ErrUnsupported},
		{name: "two lengths", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", wantErr: ErrUnsupported},
		{name: "a signed length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", wantErr: ErrUnsupported},
		{name: "gzip, chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", wantErr: ErrUnsupported},
		{name: "obsolete folding", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", wantErr: ErrUnsupported},
		{name: "space before the colon", in: "GET / HTTP/1.1\r\nHost : x\r\n\r\n", wantErr: ErrUnsupported},
		{name: "bare LF", in: "GET / HTTP/1.1\nHost: x\r\n\r\n", wantErr: ErrUnsupported},
		{name: "a control character in a value", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", wantErr: ErrUnsupported},
		{name: "a space in the target", in: "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", wantErr: ErrUnsupported},
		{name: "HTTP/1.2", in: "GET / HTTP/1.2\r\nHost: x\r\n\r\n", wantErr: ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			err := ParseRequest([]byte(tt.in), &h)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseRequest(%q) = %v, want %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			h.Fields = nil
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("ParseRequest(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseRequestFields(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Pad: \t padded \t\r\nConnection: keep-alive, X-Secret\r\n\r\n"
	var h Head
	if err := ParseRequest([]byte(in), &h); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range h.Fields {
		got = append(got, string(f.Name)+"="+string(f.Value))
	}
	want := []string{"Host=x", "X-Empty=", "X-Pad=padded", "Connection=keep-alive, X-Secret"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if !h.ConnectionNames || !h.Named([]byte("x-secret")) || h.Named([]byte("X-Pad")) {
		t.Errorf("Named: ConnectionNames %v, x-secret %v, X-Pad %v; want true, true, false", h.ConnectionNames, h.Named([]byte("x-secret")), h.Named([]byte("X-Pad")))
	}
	if v := string(h.Get("x-pad")); v != "padded" {
		t.Errorf("Get(x-pad) = %q, want padded", v)
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		toHEAD  bool
		want    Head
		wantErr bool
	}{
		{name: "with a length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
			want: Head{Status: 200, Reason: []byte("OK"), Minor: 1, Framing: Length, ContentLength: 5, KeepAlive: true}},
		{name: "chunked", in: "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: Head{Status: 201, Reason: []byte("Created"), Minor: 1, Framing: Chunked, KeepAlive: true}},
		{name: "until close", in: "HTTP/1.1 200 OK\r\n\r\n",
			want: Head{Status: 200, Reason: []byte("OK"), Minor: 1, Framing: UntilClose}},
		{name: "no reason", in: "HTTP/1.1 204\r\n\r\n",
			want: Head{Status: 204, Minor: 1, KeepAlive: true}},
		{name: "304 has no body", in: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
			want: Head{Status: 304, Reason: []byte("Not Modified"), Minor: 1, KeepAlive: true}},
		{name: "HEAD has no body", in: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", toHEAD: true,
			want: Head{Status: 200, Reason: []byte("OK"), Minor: 1, KeepAlive: true}},
		{name: "length and chunked: chunked, then close", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: Head{Status: 200, Reason: []byte("OK"), Minor: 1, Framing: Chunked, ContentLength: 0}},
		{name: "HTTP/1.0", in: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
			want: Head{Status: 200, Reason: []byte("OK"), Framing: Length, ContentLength: 1}},
		{name: "interim", in: "HTTP/1.1 100 Continue\r\n\r\n",
			want: Head{Status: 100, Reason: []byte("Continue"), Minor: 1, KeepAlive: true}},

		{name: "a short status", in: "HTTP/1.1 20 OK\r\n\r\n", wantErr: true},
		{name: "HTTP/2", in: "HTTP/2.0 200 OK\r\n\r\n", wantErr: true},
		{name: "two lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", wantErr: true},
		{name: "a coding other than chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", wantErr: true},
		{name: "no space after the status", in: "HTTP/1.1 200OK\r\n\r\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			err := ParseResponse([]byte(tt.in), tt.toHEAD, &h)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseResponse(%q) = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			h.Fields = nil
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("ParseResponse(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// slowReader returns one byte per Read, so that every parser has to read on.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(b []byte) (int, error) {
	if len(b) > 1 {
		b = b[:1]
	}
	return s.r.Read(b)
}

func TestReadHead(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"
	for _, r := range []io.Reader{strings.NewReader(in), slowReader{strings.NewReader(in)}} {
		br := bufio.NewReaderSize(r, 64)
		head, err := ReadHead(br)
		if err != nil || string(head) != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
			t.Fatalf("ReadHead = %q, %v; want the head through its empty line", head, err)
		}
		br.Discard(len(head))
		if rest, _ := io.ReadAll(br); string(rest) != "rest" {
			t.Errorf("after the head: %q, want %q", rest, "rest")
		}
	}
	br := bufio.NewReaderSize(strings.NewReader("GET / HTTP/1.1\r\nX-Long: "+strings.Repeat("a", 100)+"\r\n\r\n"), 32)
	if _, err := ReadHead(br); !errors.Is(err, bufio.ErrBufferFull) {
		t.Errorf("a head larger than the buffer: %v, want bufio.ErrBufferFull", err)
	}
	br = bufio.NewReaderSize(strings.NewReader("GET / HTTP/1.1\r\nHost"), 64)
	if _, err := ReadHead(br); !errors.Is(err, io.EOF) {
		t.Errorf("a head cut short: %v, want io.EOF", err)
	}
}

func TestCopyBodies(t *testing.T) {
	tests := []struct {
		name     string
		framing  Framing
		length   int64
		in       string
		wantOut  string
		wantData int64
		wantErr  bool
	}{
		{name: "length", framing: Length, length: 5, in: "hello, and the next", wantOut: "hello", wantData: 5},
		{name: "length cut short", framing: Length, length: 10, in: "hello", wantOut: "hello", wantData: 5, wantErr: true},
		{name: "chunked", framing: Chunked, in: "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nnext",
			wantOut: "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", wantData: 11},
		{name: "chunked with trailers", framing: Chunked, in: "3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n",
			wantOut: "3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n", wantData: 3},
		{name: "upper-case hex", framing: Chunked, in: "A\r\n0123456789\r\n0\r\n\r\n", wantOut: "A\r\n0123456789\r\n0\r\n\r\n", wantData: 10},
		{name: "a bad size", framing: Chunked, in: "x\r\nabc\r\n0\r\n\r\n", wantErr: true},
		{name: "data longer than its size", framing: Chunked, in: "2\r\nabc\r\n0\r\n\r\n", wantOut: "2\r\nab", wantData: 2, wantErr: true},
		{name: "a bare LF", framing: Chunked, in: "3\nabc\r\n0\r\n\r\n", wantErr: true},
		{name: "a size over 2^60", framing: Chunked, in: "1000000000000000\r\n", wantErr: true},
		{name: "a bad trailer", framing: Chunked, in: "0\r\nnot a field\r\n\r\n", wantOut: "0\r\n", wantErr: true},
		{name: "until EOF", framing: UntilClose, in: "all of it", wantOut: "all of it", wantData: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tt.in), slowReader{strings.NewReader(tt.in)}} {
				var out bytes.Buffer
				w := &Writer{W: &out}
				br := bufio.NewReaderSize(r, 16)
				var n int64
				var err error
				switch tt.framing {
				case Length:
					n, err = CopyLength(w, br, tt.length)
				case Chunked:
					n, err = CopyChunked(w, br)
				case UntilClose:
					n, err = CopyUntilEOF(w, br)
				}
				w.Flush()
				if (err != nil) != tt.wantErr {
					t.Fatalf("copy = %v, want error %v", err, tt.wantErr)
				}
				if err != nil {
					continue
				}
				if out.String() != tt.wantOut || n != tt.wantData {
					t.Errorf("copied %q (%d data bytes), want %q (%d)", out.String(), n, tt.wantOut, tt.wantData)
				}
			}
		})
	}
}

// countingWriter counts the Write calls it gets.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(b)
}

func TestWriterGathersWhatIsBuffered(t *testing.T) {
	// A head and a body that arrived together leave in one write.
	var out countingWriter
	w := &Writer{W: &out}
	w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
	br := bufio.NewReader(strings.NewReader("hello"))
	br.Peek(5)
	if _, err := CopyLength(w, br, 5); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	if out.writes != 1 || out.String() != "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" {
		t.Errorf("%d writes of %q, want 1 of the head and body", out.writes, out.String())
	}
}

func TestIsHopByHop(t *testing.T) {
	for name, want := range map[string]bool{
		"Connection": true, "keep-alive": true, "Proxy-Connection": true, "Proxy-Authorization": true,
		"Proxy-Authenticate": true, "TE": true, "Upgrade": true,
		"Transfer-Encoding": false, "Trailer": false, "Content-Length": false, "Host": false, "X-Te": false,
	} {
		if got := IsHopByHop([]byte(name)); got != want {
			t.Errorf("IsHopByHop(%q) = %v, want %v", name, got, want)
		}
	}
}

func BenchmarkParseRequest(b *testing.B) {
	in := []byte("POST http://echo.bench:8080/echo HTTP/1.1\r\nHost: echo.bench:8080\r\nUser-Agent: fortio.org/fortio-1.68.2\r\nContent-Length: 1024\r\nContent-Type: application/octet-stream\r\nAccept-Encoding: gzip\r\n\r\n")
	var h Head
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseRequest(in, &h); err != nil {
			b.Fatal(err)
		}
	}
}
