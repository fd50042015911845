package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An app that closes idle keep-alive connections sooner than the sidecar
// would (as many servers do, Node's after 5 s) costs no failed request: the
// sidecar finds the pooled connection closed and sends the request again on
// a new one.
func TestAppClosingIdleConnectionsFailsNoRequest(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", r.URL.Path, len(b))
	}))
	srv.Config.IdleTimeout = 20 * time.Millisecond
	appConns := countConns(srv)
	srv.Start()
	t.Cleanup(srv.Close)
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	for i := range 5 {
		time.Sleep(100 * time.Millisecond) // the app closes the pooled connection meanwhile
		resp, body := client.do(t, http.MethodPost, bookstoreURL+"/post", strings.NewReader("a body"), nil)
		if want := "/post 6"; resp.StatusCode != http.StatusOK || string(body) != want {
			t.Fatalf("request %d after the app closed its idle connection: %d %q, want 200 %q", i, resp.StatusCode, body, want)
		}
	}
	if n := appConns.Load(); n < 5 {
		t.Errorf("the app accepted %d connections, want at least 5 (one per request after each idle close): the test did not exercise a closed pooled connection", n)
	}
}

// One keep-alive connection from the app may mix the requests the sidecar
// relays itself with those net/http serves (here Expect: 100-continue): every
// one is answered, in order, on that connection.
func TestKeepAliveConnectionMixesRelayedAndOtherRequests(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
	}))
	t.Cleanup(srv.Close)
	_, client := bookstoreBehind(t, srv.Listener.Addr().String())

	c, err := net.Dial("tcp", client.p.Outbound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	for i, tt := range []struct{ req, want string }{
		{"GET " + bookstoreURL + "/one HTTP/1.1\r\nHost: bookstore.bookstore:14001\r\n\r\n", "GET /one 0"},
		{"POST " + bookstoreURL + "/two HTTP/1.1\r\nHost: bookstore.bookstore:14001\r\nContent-Length: 3\r\n\r\nabc", "POST /two 3"},
		{"PUT " + bookstoreURL + "/three HTTP/1.1\r\nHost: bookstore.bookstore:14001\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", "PUT /three 4"},
		{"GET " + bookstoreURL + "/four HTTP/1.1\r\nHost: bookstore.bookstore:14001\r\n\r\n", "GET /four 0"},
	} {
		if _, err := io.WriteString(c, tt.req); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resp.StatusCode == http.StatusContinue {
			io.WriteString(c, "body")
			if resp, err = http.ReadResponse(br, nil); err != nil {
				t.Fatalf("request %d after 100 Continue: %v", i, err)
			}
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != tt.want {
			t.Fatalf("request %d = %d %q, %v; want 200 %q", i, resp.StatusCode, body, err, tt.want)
		}
	}
}
