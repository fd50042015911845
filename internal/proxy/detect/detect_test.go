package detect

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProtocolString(t *testing.T) {
	for _, tc := range []struct {
		p    Protocol
		want string
	}{
		{TCP, "tcp"}, {HTTP1, "http1"}, {HTTP2, "http2"}, {TLS, "tls"}, {Protocol(9), "Protocol(9)"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("Protocol(%d).String() = %q, want %q", int(tc.p), got, tc.want)
		}
	}
}

func TestSniff(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     Protocol
		needMore bool
	}{
		{"nothing yet", "", TCP, true},
		{"method prefix", "G", TCP, true},
		{"method without space yet", "GET", TCP, true},
		{"GET", "GET /index.html HTTP/1.1\r\n", HTTP1, false},
		{"GET and space only", "GET ", HTTP1, false},
		{"HEAD", "HEAD / HTTP/1.1\r\n", HTTP1, false},
		{"POST", "POST /x HTTP/1.1\r\n", HTTP1, false},
		{"PUT", "PUT /x HTTP/1.1\r\n", HTTP1, false},
		{"DELETE", "DELETE /x HTTP/1.1\r\n", HTTP1, false},
		{"CONNECT", "CONNECT db:5432 HTTP/1.1\r\n", HTTP1, false},
		{"OPTIONS", "OPTIONS * HTTP/1.1\r\n", HTTP1, false},
		{"TRACE", "TRACE / HTTP/1.1\r\n", HTTP1, false},
		{"PATCH", "PATCH /x HTTP/1.1\r\n", HTTP1, false},
		{"extension method", "PROPFIND /dav HTTP/1.1\r\n", HTTP1, false},
		{"extension method with hyphen", "BASELINE-CONTROL /x HTTP/1.1\r\n", HTTP1, false},
		{"20-byte method", strings.Repeat("M", 20) + " /", HTTP1, false},
		{"21-byte method", strings.Repeat("M", 21) + " /", TCP, false},
		{"20 bytes, still undecided", strings.Repeat("M", 20), TCP, true},
		{"lowercase method", "get / HTTP/1.1\r\n", TCP, false},
		{"leading hyphen", "-GET /", TCP, false},
		{"leading space", " GET /", TCP, false},
		{"line end before space", "PING\r\n", TCP, false},
		{"binary after letters", "GE\x00", TCP, false},
		{"SSH banner", "SSH-2.0-OpenSSH_9.6\r\n", TCP, false},
		{"RESP", "*1\r\n$4\r\nPING\r\n", TCP, false},
		{"zero byte", "\x00", TCP, false},
		{"high byte", "\x80\x01", TCP, false},
		{"preface, first byte", "P", TCP, true},
		{"preface, method part", "PRI ", TCP, true},
		{"preface, all but one byte", preface[:len(preface)-1], TCP, true},
		{"preface", preface, HTTP2, false},
		{"preface and SETTINGS", preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2, false},
		{"PRI request, not the preface", "PRI * HTTP/1.1\r\n", HTTP1, false},
		{"preface broken at the end", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", HTTP1, false},
		{"POST shares P with the preface", "POST ", HTTP1, false},
		{"P then binary", "PR\x00", TCP, false},
		{"TLS 1.0 record, ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", TLS, false},
		{"TLS 1.2 record, ClientHello", "\x16\x03\x03\x00\x05\x01", TLS, false},
		{"SSL 3.0 record, ClientHello", "\x16\x03\x00\x00\x05\x01", TLS, false},
		{"TLS record version 3.4", "\x16\x03\x04\x00\x05\x01", TLS, false},
		{"TLS, record type only", "\x16", TCP, true},
		{"TLS, no handshake type yet", "\x16\x03\x01\x02\x00", TCP, true},
		{"TLS, major version not 3", "\x16\x02", TCP, false},
		{"TLS, minor version too high", "\x16\x03\x05", TCP, false},
		{"TLS, ServerHello", "\x16\x03\x03\x00\x05\x02", TCP, false},
		{"TLS alert record", "\x15\x03\x03\x00\x02", TCP, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, needMore := Sniff([]byte(tc.in))
			if got != tc.want || needMore != tc.needMore {
				t.Errorf("Sniff(%q) = %v, needMore %v; want %v, needMore %v", tc.in, got, needMore, tc.want, tc.needMore)
			}
		})
	}
}

// accepted listens on loopback, runs client against the address in its own
// goroutine, and returns the accepted server side and a function that waits for
// the client and fails the test if it returned an error. The test waits for the
// client when it ends, if it has not already.
func accepted(t *testing.T, client func(addr string) error) (net.Conn, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() { done <- client(ln.Addr().String()) }()
	var once sync.Once
	wait := func() {
		once.Do(func() {
			if err := <-done; err != nil {
				t.Errorf("client: %v", err)
			}
		})
	}
	t.Cleanup(wait)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, wait
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conns: make(chan net.Conn, 1), closed: make(chan struct{}), addr: c.LocalAddr()}
	l.conns <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }

// serveHTTP serves one connection with net/http, speaking the given protocols,
// answering with the request's protocol and body.
func serveHTTP(t *testing.T, c net.Conn, protocols *http.Protocols) {
	t.Helper()
	srv := &http.Server{
		Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			io.WriteString(w, r.Proto+" "+r.Method+" "+r.URL.Path+" "+string(body))
		}),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(newOneConnListener(c))
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// post sends one POST with the client and checks the echoed answer.
func post(client *http.Client, url, want string) error {
	resp, err := client.Post(url, "text/plain", strings.NewReader("hello"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if string(body) != want {
		return errors.New("got answer " + string(body) + ", want " + want)
	}
	return nil
}

func h2cClient(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p, DialContext: dial}, Timeout: 10 * time.Second}
}

func h1Client(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 10 * time.Second}
}

// testTLS is a self-signed certificate for 127.0.0.1 and a client config trusting it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "detect test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// tlsEcho completes a TLS handshake as a client, sends ping and expects pong.
func tlsEcho(c net.Conn, cfg *tls.Config) error {
	tc := tls.Client(c, cfg)
	defer tc.Close()
	if _, err := io.WriteString(tc, "ping"); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil {
		return err
	}
	if string(buf) != "pong" {
		return errors.New("got " + string(buf) + ", want pong")
	}
	return nil
}

// serveTLSEcho completes the handshake as a server on c, reads ping, answers pong.
func serveTLSEcho(t *testing.T, c net.Conn, cfg *tls.Config) {
	t.Helper()
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake on the replaying connection: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "ping" {
		t.Fatalf("got %q over TLS, want ping", buf)
	}
	if _, err := io.WriteString(tc, "pong"); err != nil {
		t.Fatal(err)
	}
}

// trickleConn writes its first 64 bytes one at a time with a pause between,
// as if every byte were its own TCP segment, and the rest as it comes.
type trickleConn struct {
	net.Conn
	pause time.Duration
	left  *int // bytes still to trickle
}

func (c trickleConn) Write(p []byte) (int, error) {
	n := 0
	for ; n < len(p) && *c.left > 0 && c.pause > 0; n++ {
		if _, err := c.Conn.Write(p[n : n+1]); err != nil {
			return n, err
		}
		*c.left--
		time.Sleep(c.pause)
	}
	m, err := c.Conn.Write(p[n:])
	return n + m, err
}

// TestDetect detects each protocol from a real client on loopback, then serves
// the returned connection with a real server for that protocol: the server
// must see the stream exactly as the client sent it. Each case runs with
// plain writes and with one byte per write.
func TestDetect(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	raw := make([]byte, 64<<10)
	rand.Read(raw)
	raw[0] = 0x00
	tests := []struct {
		name   string
		want   Protocol
		client func(dial func(context.Context, string, string) (net.Conn, error), addr string) error
		serve  func(t *testing.T, c net.Conn)
	}{
		{
			name: "HTTP/1.1 from net/http",
			want: HTTP1,
			client: func(dial func(context.Context, string, string) (net.Conn, error), addr string) error {
				return post(h1Client(dial), "http://"+addr+"/books", "HTTP/1.1 POST /books hello")
			},
			serve: func(t *testing.T, c net.Conn) { serveHTTP(t, c, nil) },
		},
		{
			name: "HTTP/2 prior knowledge from net/http",
			want: HTTP2,
			client: func(dial func(context.Context, string, string) (net.Conn, error), addr string) error {
				return post(h2cClient(dial), "http://"+addr+"/books", "HTTP/2.0 POST /books hello")
			},
			serve: func(t *testing.T, c net.Conn) {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				serveHTTP(t, c, &p)
			},
		},
		{
			name: "TLS from crypto/tls",
			want: TLS,
			client: func(dial func(context.Context, string, string) (net.Conn, error), addr string) error {
				c, err := dial(context.Background(), "tcp", addr)
				if err != nil {
					return err
				}
				return tlsEcho(c, clientTLS)
			},
			serve: func(t *testing.T, c net.Conn) { serveTLSEcho(t, c, serverTLS) },
		},
		{
			name: "binary stream",
			want: TCP,
			client: func(dial func(context.Context, string, string) (net.Conn, error), addr string) error {
				c, err := dial(context.Background(), "tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write(raw)
				return err
			},
			serve: func(t *testing.T, c net.Conn) {
				got, err := io.ReadAll(c)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, raw) {
					t.Fatalf("read %d bytes that differ from the %d sent", len(got), len(raw))
				}
			},
		},
	}
	for _, tc := range tests {
		for _, pause := range []time.Duration{0, 2 * time.Millisecond} {
			name := tc.name
			if pause > 0 {
				name += ", one byte per segment"
			}
			t.Run(name, func(t *testing.T) {
				dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					left := 64
					return trickleConn{Conn: c, pause: pause, left: &left}, nil
				}
				srv, waitClient := accepted(t, func(addr string) error { return tc.client(dial, addr) })
				p, c, err := Detect(srv, 5*time.Second)
				if err != nil {
					t.Fatalf("Detect: %v", err)
				}
				if p != tc.want {
					t.Fatalf("Detect = %v, want %v", p, tc.want)
				}
				tc.serve(t, c)
				waitClient()
			})
		}
	}
}

// TestDetectDecidesEarly checks that Detect answers as soon as the bytes decide,
// not when the wait runs out, even when the client then goes quiet.
func TestDetectDecidesEarly(t *testing.T) {
	tests := []struct {
		name string
		send string
		want Protocol
	}{
		{"one byte that starts nothing", "\x00", TCP},
		{"one lowercase letter", "h", TCP},
		{"letters then a byte no method has", "GE\r", TCP},
		{"TLS record with a bad version", "\x16\x03\x09", TCP},
		{"method and space", "GET ", HTTP1},
		{"whole preface", preface, HTTP2},
		{"ClientHello header", "\x16\x03\x01\x00\xc8\x01", TLS},
	}
	const wait = 5 * time.Second
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			srv, _ := accepted(t, func(addr string) error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := io.WriteString(c, tc.send); err != nil {
					return err
				}
				<-release
				return nil
			})
			defer close(release)
			start := time.Now()
			p, c, err := Detect(srv, wait)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if p != tc.want {
				t.Errorf("Detect = %v, want %v", p, tc.want)
			}
			if elapsed > time.Second {
				t.Errorf("Detect took %v with the answer in hand; want it well under the %v wait", elapsed, wait)
			}
			got := make([]byte, len(tc.send))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.send {
				t.Errorf("replayed %q (%v), want %q", got, err, tc.send)
			}
		})
	}
}

// TestDetectWait checks that a client that sends nothing, or too little, is TCP
// once the wait has passed and not much later, and that whatever it sends after
// that still reaches the consumer in order (Detect leaves no read deadline).
func TestDetectWait(t *testing.T) {
	tests := []struct {
		name   string
		before string // sent before Detect's wait runs out
		after  string // sent after it
	}{
		{"silent client (server speaks first)", "", "EHLO client\r\n"},
		{"method cut short", "GE", "T / HTTP/1.1\r\n\r\n"},
		{"preface cut short", preface[:10], preface[10:]},
		{"TLS header cut short", "\x16\x03\x01", "\x00\x05\x01\x00\x00\x01\x00"},
	}
	const wait = 200 * time.Millisecond
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			detected := make(chan struct{})
			srv, _ := accepted(t, func(addr string) error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := io.WriteString(c, tc.before); err != nil {
					return err
				}
				<-detected
				_, err = io.WriteString(c, tc.after)
				return err
			})
			start := time.Now()
			p, c, err := Detect(srv, wait)
			elapsed := time.Since(start)
			close(detected)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if p != TCP {
				t.Errorf("Detect = %v, want tcp", p)
			}
			if elapsed < wait-10*time.Millisecond || elapsed > wait+50*time.Millisecond {
				t.Errorf("Detect returned after %v; want the %v wait, give or take 50ms", elapsed, wait)
			}
			want := tc.before + tc.after
			got := make([]byte, len(want))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
				t.Errorf("read %q (%v), want %q", got, err, want)
			}
		})
	}
}

// TestDetectClientCloses checks that a client that closes before the bytes
// decide is TCP without waiting for the wait, and its bytes are replayed
// before EOF.
func TestDetectClientCloses(t *testing.T) {
	for _, send := range []string{"", "GE", preface[:5]} {
		t.Run("sent "+strings.ReplaceAll(send, " ", "_"), func(t *testing.T) {
			srv, _ := accepted(t, func(addr string) error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				_, err = io.WriteString(c, send)
				c.Close()
				return err
			})
			start := time.Now()
			p, c, err := Detect(srv, 5*time.Second)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if p != TCP {
				t.Errorf("Detect = %v, want tcp", p)
			}
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("Detect took %v after the client closed; want it at once", elapsed)
			}
			got, err := io.ReadAll(c)
			if err != nil || string(got) != send {
				t.Errorf("read %q (%v), want %q then EOF", got, err, send)
			}
			var buf bytes.Buffer
			if n, err := io.Copy(&buf, c); n != 0 || err != nil {
				t.Errorf("io.Copy after EOF = %d, %v; want 0, nil", n, err)
			}
		})
	}
}

// TestDetectDeadline checks that deadlines set on the returned connection
// reach the socket.
func TestDetectDeadline(t *testing.T) {
	release := make(chan struct{})
	srv, _ := accepted(t, func(addr string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		io.WriteString(c, "GET ")
		<-release
		return nil
	})
	defer close(release)
	p, c, err := Detect(srv, 5*time.Second)
	if err != nil || p != HTTP1 {
		t.Fatalf("Detect = %v, %v; want http1", p, err)
	}
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "GET " {
		t.Fatalf("Read = %q, %v; want the peeked GET", buf[:n], err)
	}
	const d = 100 * time.Millisecond
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Read(buf)
	elapsed := time.Since(start)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v, want %v", err, os.ErrDeadlineExceeded)
	}
	if elapsed < d-10*time.Millisecond || elapsed > d+200*time.Millisecond {
		t.Errorf("Read gave up after %v, want about %v", elapsed, d)
	}
}

// TestDetectCloseWrite checks that the returned connection half-closes when the
// socket can, and does not claim to when it cannot.
func TestDetectCloseWrite(t *testing.T) {
	t.Run("TCP", func(t *testing.T) {
		got := make(chan string, 1)
		srv, _ := accepted(t, func(addr string) error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
				return err
			}
			b, err := io.ReadAll(c) // ends only when the server half-closes
			got <- string(b)
			return err
		})
		_, c, err := Detect(srv, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cw, ok := c.(interface{ CloseWrite() error })
		if !ok {
			t.Fatalf("the connection returned for a *net.TCPConn (%T) has no CloseWrite", c)
		}
		io.WriteString(c, "bye")
		if err := cw.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != "bye" {
				t.Errorf("client read %q, want bye", s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("client saw no EOF after CloseWrite")
		}
		if nc := c.(interface{ NetConn() net.Conn }).NetConn(); nc != srv {
			t.Errorf("NetConn() = %v, want the accepted connection", nc)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go io.WriteString(b, "\x00")
		p, c, err := Detect(a, 5*time.Second)
		if err != nil || p != TCP {
			t.Fatalf("Detect = %v, %v; want tcp", p, err)
		}
		if _, ok := c.(interface{ CloseWrite() error }); ok {
			t.Errorf("the connection returned for a pipe (%T) claims CloseWrite", c)
		}
	})
}

// TestDetectSplice checks that io.Copy between the returned connection and
// another socket carries the stream intact both ways (WriteTo and ReadFrom).
func TestDetectSplice(t *testing.T) {
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	payload[0] = 0x01
	// upstream echoes what it reads.
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, struct{ io.Reader }{c})
		c.(*net.TCPConn).CloseWrite()
	}()
	echoed := make(chan []byte, 1)
	srv, _ := accepted(t, func(addr string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		read := make(chan struct{})
		go func() {
			defer close(read)
			b, _ := io.ReadAll(c)
			echoed <- b
		}()
		defer func() { <-read }()
		if _, err := c.Write(payload); err != nil {
			return err
		}
		return c.(*net.TCPConn).CloseWrite()
	})
	p, c, err := Detect(srv, 5*time.Second)
	if err != nil || p != TCP {
		t.Fatalf("Detect = %v, %v; want tcp", p, err)
	}
	u, err := net.Dial("tcp", up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	back := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, u) // upstream to client: the returned conn's ReadFrom
		c.(interface{ CloseWrite() error }).CloseWrite()
		back <- err
	}()
	if _, err := io.Copy(u, c); err != nil { // client to upstream: WriteTo
		t.Fatal(err)
	}
	u.(*net.TCPConn).CloseWrite()
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-echoed:
		if !bytes.Equal(got, payload) {
			t.Fatalf("client got %d bytes back that differ from the %d it sent", len(got), len(payload))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client got nothing back")
	}
}

// TestDetectReadRequest reads the request straight from the returned connection
// with http.ReadRequest, as the sidecar's HTTP/1 path does.
func TestDetectReadRequest(t *testing.T) {
	srv, _ := accepted(t, func(addr string) error {
		return post(h1Client(nil), "http://"+addr+"/a/b?c=d", "ok")
	})
	p, c, err := Detect(srv, 5*time.Second)
	if err != nil || p != HTTP1 {
		t.Fatalf("Detect = %v, %v; want http1", p, err)
	}
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		t.Fatalf("ReadRequest on the replaying connection: %v", err)
	}
	body, _ := io.ReadAll(req.Body)
	if got, want := req.Method+" "+req.URL.String()+" "+string(body), "POST /a/b?c=d hello"; got != want {
		t.Errorf("request = %q, want %q", got, want)
	}
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}

func TestDetectNoWait(t *testing.T) {
	srv, _ := accepted(t, func(addr string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.WriteString(c, "GET ")
		return err
	})
	p, c, err := Detect(srv, 0)
	if err != nil || p != TCP {
		t.Errorf("Detect with no wait = %v, %v; want tcp", p, err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "GET " {
		t.Errorf("read %q (%v), want the untouched stream", got, err)
	}
}

func TestDetectReadError(t *testing.T) {
	a, b := net.Pipe()
	b.Close()
	a.Close() // reads on a closed pipe end fail with io.ErrClosedPipe
	p, c, err := Detect(a, time.Second)
	if err == nil || !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("Detect on a closed connection: error %v, want one wrapping %v", err, io.ErrClosedPipe)
	}
	if p != TCP || c == nil {
		t.Errorf("Detect = %v, %v; want tcp and a connection to close", p, c)
	}
}
