package proxy_test

// HTTP/1.1 in depth, end to end through two sidecars: app client → client
// sidecar (HTTP_PROXY) → mTLS → server sidecar → app server, all on loopback.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// countingRelay forwards TCP connections from its own loopback address to
// target and counts the connections it accepted: registered as a workload's
// address in front of its sidecar, it shows how many connections the peer
// sidecars open.
type countingRelay struct {
	ln       net.Listener
	accepted atomic.Int64
}

func startRelay(t *testing.T, target string) *countingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &countingRelay{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			go func() {
				defer c.Close()
				up, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.Close(); close(done) }()
				io.Copy(c, up)
				c.Close()
				<-done
			}()
		}
	}()
	return r
}

func (r *countingRelay) addr() string { return r.ln.Addr().String() }

// countConns counts the connections an httptest server accepts.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func TestHTTP1KeepAliveReusesEveryHop(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/chunked" {
			// No Content-Length: a chunked response.
			io.WriteString(w, "chunk ")
			http.NewResponseController(w).Flush()
		}
		fmt.Fprintf(w, "%s %d", r.URL.Path, len(body))
	}))
	appConns := countConns(srv)
	srv.Start()
	t.Cleanup(srv.Close)

	m := newMesh(t, permissiveMesh)
	inbound := freeAddr(t)
	relay := startRelay(t, inbound)
	m.sidecar(sidecarSpec{reg: withAddress(bookstoreReg("bookstore-v1", "bookstore"), relay.addr()), inbound: inbound, app: srv.Listener.Addr().String(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))
	if relay.accepted.Load() < 1 || appConns.Load() < 1 {
		t.Fatalf("after the first request: %d connections between the sidecars, %d to the app; want at least 1 each", relay.accepted.Load(), appConns.Load())
	}
	peerBefore, appBefore := relay.accepted.Load(), appConns.Load()

	var reused, fresh int
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused++
		} else {
			fresh++
		}
	}}
	const rounds = 10
	for i := range rounds {
		for _, tt := range []struct {
			method, path string
			body         string
			want         string
		}{
			{http.MethodGet, "/plain", "", "/plain 0"},
			{http.MethodPost, "/plain", "a body with a length", "/plain 20"},
			{http.MethodGet, "/chunked", "", "chunk /chunked 0"},
		} {
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			req, _ := http.NewRequestWithContext(ctx, tt.method, bookstoreURL+tt.path, strings.NewReader(tt.body))
			resp, err := client.client.Do(req)
			if err != nil {
				t.Fatalf("round %d: %s %s: %v", i, tt.method, tt.path, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || string(b) != tt.want {
				t.Fatalf("round %d: %s %s = %d %q, %v; want 200 %q", i, tt.method, tt.path, resp.StatusCode, b, err, tt.want)
			}
		}
	}
	if want := 3*rounds - 1; reused < want {
		t.Errorf("app to client sidecar: %d requests reused a connection, %d opened one; want at least %d reused", reused, fresh, want)
	}
	if got := relay.accepted.Load() - peerBefore; got != 0 {
		t.Errorf("client sidecar to server sidecar: %d new connections for %d sequential requests, want 0 (the pooled one reused)", got, 3*rounds)
	}
	if got := appConns.Load() - appBefore; got != 0 {
		t.Errorf("server sidecar to app: %d new connections for %d sequential requests, want 0", got, 3*rounds)
	}
}

func TestHTTP1ChunkedBodiesStream(t *testing.T) {
	t.Parallel()
	firstLine := make(chan string, 1)
	type saw struct {
		contentLength    int64
		transferEncoding []string
		rest             string
		trailer          string // the request's X-Sum trailer
	}
	sawc := make(chan saw, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			return
		}
		br := bufio.NewReader(r.Body)
		line, err := br.ReadString('\n')
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The first part arrives while the client still holds the body open.
		firstLine <- line
		rest, _ := io.ReadAll(br)
		sawc <- saw{r.ContentLength, r.TransferEncoding, string(rest), r.Trailer.Get("X-Sum")}
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "got "+line)
		http.NewResponseController(w).Flush()
		io.WriteString(w, "and "+string(rest))
		w.Header().Set("X-Checksum", fmt.Sprint(len(line)+len(rest)))
	}))
	t.Cleanup(srv.Close)
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, _ := http.NewRequest(http.MethodPost, bookstoreURL+"/upload", pr)
	req.Trailer = http.Header{"X-Sum": nil} // announced now, its value set once the body is written
	type result struct {
		resp *http.Response
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := client.client.Do(req)
		res <- result{resp, err}
	}()
	if _, err := io.WriteString(pw, "part one\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-firstLine:
		if got != "part one\n" {
			t.Fatalf("app read %q first, want %q", got, "part one\n")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not receive the first part of the body while the client held the rest: the body is not streamed")
	}
	io.WriteString(pw, "part two\n")
	req.Trailer.Set("X-Sum", "18")
	pw.Close()

	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.resp.Body.Close()
	got := <-sawc
	if got.contentLength != -1 || len(got.transferEncoding) != 1 || got.transferEncoding[0] != "chunked" || got.rest != "part two\n" {
		t.Errorf("app saw Content-Length %d, Transfer-Encoding %v, rest %q; want a chunked body ending %q", got.contentLength, got.transferEncoding, got.rest, "part two\n")
	}
	if got.trailer != "18" {
		t.Errorf("app saw request trailer X-Sum %q, want %q (trailers pass end to end)", got.trailer, "18")
	}
	if r.resp.ContentLength != -1 || len(r.resp.TransferEncoding) != 1 {
		t.Errorf("response Content-Length %d, Transfer-Encoding %v; want chunked", r.resp.ContentLength, r.resp.TransferEncoding)
	}
	body, err := io.ReadAll(r.resp.Body)
	if want := "got part one\nand part two\n"; err != nil || string(body) != want {
		t.Errorf("response body = %q, %v; want %q", body, err, want)
	}
	if got, want := r.resp.Trailer.Get("X-Checksum"), "18"; got != want {
		t.Errorf("response trailer X-Checksum = %q, want %q (trailers pass end to end)", got, want)
	}
}

func TestHTTP1ExpectContinueIsTheApps(t *testing.T) {
	t.Parallel()
	entered := make(chan string, 16)
	gate := make(chan struct{})
	var openGate sync.Once
	var bodyBytes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			return
		}
		select {
		case entered <- r.URL.Path + " " + r.Header.Get("Expect"):
		default:
		}
		if r.URL.Path == "/reject" {
			// A final answer without reading: the client must not send the body.
			http.Error(w, "too large for this shelf", http.StatusRequestEntityTooLarge)
			return
		}
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		b, _ := io.ReadAll(r.Body) // the first read sends 100 Continue
		bodyBytes.Add(int64(len(b)))
		fmt.Fprintf(w, "stored %d bytes", len(b))
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { openGate.Do(func() { close(gate) }) }) // before srv.Close waits for the handler
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	const body = "twelve bytes"
	send := func(t *testing.T, path string) (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.DialTimeout("tcp", client.p.Outbound.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "PUT %s%s HTTP/1.1\r\nHost: bookstore.bookstore:14001\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", bookstoreURL, path, len(body))
		return c, bufio.NewReader(c)
	}
	wantEntered := func(t *testing.T, want string) {
		t.Helper()
		select {
		case got := <-entered:
			if got != want {
				t.Fatalf("the app's handler saw %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the request's headers did not reach the app")
		}
	}

	t.Run("accepted: 100 Continue comes from the app", func(t *testing.T) {
		c, br := send(t, "/store")
		wantEntered(t, "/store 100-continue")
		// The app holds its 100 Continue: nothing may reach the client yet.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if b, err := br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("before the app read the body the client got %q, %v; want nothing (a sidecar answered 100 Continue itself)", b, err)
		}
		openGate.Do(func() { close(gate) })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		cont, err := http.ReadResponse(br, nil)
		if err != nil || cont.StatusCode != http.StatusContinue {
			t.Fatalf("interim response = %v, %v; want 100 Continue", cont, err)
		}
		io.WriteString(c, body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("stored %d bytes", len(body)); resp.StatusCode != http.StatusOK || string(b) != want {
			t.Errorf("final response = %d %q, want 200 %q", resp.StatusCode, b, want)
		}
	})
	t.Run("refused: the final status comes without 100 and without the body", func(t *testing.T) {
		before := bodyBytes.Load()
		c, br := send(t, "/reject")
		wantEntered(t, "/reject 100-continue")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("first response = %d, want 413 straight away (no 100 Continue)", resp.StatusCode)
		}
		if got := bodyBytes.Load() - before; got != 0 {
			t.Errorf("the app read %d body bytes, want 0", got)
		}
	})
}

func TestWebSocketThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	closed := make(chan websocket.StatusCode, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			io.WriteString(w, "bookstore-v1")
			return
		}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"books.v1"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(2 << 20)
		ctx := r.Context()
		// The server speaks first: the switch carries both directions.
		if err := c.Write(ctx, websocket.MessageText, []byte("welcome "+c.Subprotocol())); err != nil {
			return
		}
		for {
			typ, b, err := c.Read(ctx)
			if err != nil {
				closed <- websocket.CloseStatus(err)
				return
			}
			if typ == websocket.MessageText {
				b = bytes.ToUpper(b)
			} else {
				b = invert(b)
			}
			if err := c.Write(ctx, typ, b); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	server, client := bookstoreBehind(t, srv.Listener.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	hc := &http.Client{Transport: client.client.Transport} // HTTP_PROXY: the client sidecar
	c, resp, err := websocket.Dial(ctx, "ws://bookstore.bookstore:14001/ws", &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{"books.v1"}})
	if err != nil {
		t.Fatalf("dial through the sidecars: %v", err)
	}
	defer c.CloseNow()
	c.SetReadLimit(2 << 20)
	if resp.StatusCode != http.StatusSwitchingProtocols || c.Subprotocol() != "books.v1" {
		t.Errorf("handshake = %d, subprotocol %q; want 101 with books.v1", resp.StatusCode, c.Subprotocol())
	}
	read := func(wantType websocket.MessageType, want []byte) {
		t.Helper()
		typ, b, err := c.Read(ctx)
		if err != nil || typ != wantType || !bytes.Equal(b, want) {
			t.Fatalf("read %v of %d bytes (%.40q), %v; want %v of %d bytes (%.40q)", typ, len(b), b, err, wantType, len(want), want)
		}
	}
	read(websocket.MessageText, []byte("welcome books.v1"))
	large := largeBody()
	for _, msg := range []struct {
		typ  websocket.MessageType
		b    []byte
		want []byte
	}{
		{websocket.MessageText, []byte("hello bookstore"), []byte("HELLO BOOKSTORE")},
		{websocket.MessageBinary, []byte{0, 1, 2, 0xff}, []byte{0xff, 0xfe, 0xfd, 0}},
		{websocket.MessageBinary, large, invert(large)},
		{websocket.MessageText, []byte("again"), []byte("AGAIN")},
	} {
		if err := c.Write(ctx, msg.typ, msg.b); err != nil {
			t.Fatal(err)
		}
		read(msg.typ, msg.want)
	}
	if err := c.Close(websocket.StatusNormalClosure, "bought"); err != nil {
		t.Errorf("close handshake through the sidecars: %v", err)
	}
	select {
	case got := <-closed:
		if got != websocket.StatusNormalClosure {
			t.Errorf("the app saw close status %v, want %v", got, websocket.StatusNormalClosure)
		}
	case <-time.After(10 * time.Second):
		t.Error("the app never saw the close")
	}
	// Counted once the switched connection has closed on both sides.
	for _, s := range []struct {
		sc        *sidecar
		direction string
	}{{client, "outbound"}, {server, "inbound"}} {
		labels := map[string]string{"direction": s.direction, "response_code": "101", "reason": ""}
		eventually(t, 5*time.Second, func() error {
			if n := s.sc.requestCount(t, labels); n != 1 {
				return fmt.Errorf("%s sidecar: trellis_requests_total%v = %v, want 1", s.direction, labels, n)
			}
			return nil
		})
	}
}

func TestHTTP1FullDuplexThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			return
		}
		// Answer each line of the request body as it comes, while the
		// client is still sending.
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			io.WriteString(w, "pong "+strings.TrimPrefix(sc.Text(), "ping ")+"\n")
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, _ := http.NewRequest(http.MethodPost, bookstoreURL+"/pingpong", pr)
	type result struct {
		resp *http.Response
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := client.client.Do(req)
		res <- result{resp, err}
	}()
	io.WriteString(pw, "ping 1\n")
	var r result
	select {
	case r = <-res:
	case <-time.After(10 * time.Second):
		t.Fatal("no response headers while the request body is open: the sidecars do not relay both directions at once")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.resp.Body.Close()
	br := bufio.NewReader(r.resp.Body)
	for i := 1; i <= 3; i++ {
		if i > 1 {
			fmt.Fprintf(pw, "ping %d\n", i)
		}
		line := make(chan string, 1)
		go func() { l, _ := br.ReadString('\n'); line <- l }()
		select {
		case got := <-line:
			if want := fmt.Sprintf("pong %d\n", i); got != want {
				t.Fatalf("answer %d = %q, want %q", i, got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer to ping %d while the request body is open", i)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the request body closed: %q, %v; want EOF", rest, err)
	}
}

func TestDrainWaitsForThenClosesSwitchedConnections(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil || c.Write(r.Context(), typ, b) != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://bookstore.bookstore:14001/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: client.client.Transport}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	echo := func(msg string) error {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		_, b, err := c.Read(ctx)
		if err == nil && string(b) != msg {
			err = fmt.Errorf("echo %q, want %q", b, msg)
		}
		return err
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	// SIGTERM to the client sidecar: the switched connection keeps working
	// while the sidecar drains, and is closed when the drain timeout (5s in
	// these tests) is up, before Run returns.
	stopped := time.Now()
	client.cancel()
	time.Sleep(500 * time.Millisecond)
	if err := echo("while draining"); err != nil {
		t.Errorf("during the drain: %v; want the connection to keep working", err)
	}
	if err := client.stop(t); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(stopped); d < 4*time.Second {
		t.Errorf("Run returned %v after the stop, want it to wait for the open connection up to the 5s drain timeout", d)
	}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	defer rcancel()
	if _, _, err := c.Read(rctx); err == nil || rctx.Err() != nil {
		t.Errorf("after Run returned, reading the connection = %v (deadline passed: %v); want it closed by the sidecar", err, rctx.Err() != nil)
	}
}

// bookstoreBehind runs a permissive mesh with bookstore-v1's sidecar in front
// of the app at addr and a bookbuyer sidecar, and returns both once the
// bookbuyer is served.
func bookstoreBehind(t *testing.T, addr string) (server, client *sidecar) {
	t.Helper()
	m := newMesh(t, permissiveMesh)
	server = m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: addr, ready: true})
	client = m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))
	return server, client
}
