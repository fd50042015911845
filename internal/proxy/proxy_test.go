package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/proxy"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

const bookstoreURL = "http://bookstore.bookstore:14001"

// bookstoreReg registers a workload of the bookstore service, and of extra
// services, all on port 14001.
func bookstoreReg(name, account string, services ...string) local.Registration {
	return reg(name, "bookstore", account, append([]string{"bookstore"}, services...)...)
}

func bookbuyerReg() local.Registration {
	return local.Registration{Name: "bookbuyer", Namespace: "bookbuyer", Account: "bookbuyer"}
}

// seen is what the app received.
type seen struct {
	Method, Path, Query, Host string
	Header                    http.Header
	ContentLength             int64
	BodyLen                   int
	BodySum                   [32]byte
}

// app is an HTTP app behind a sidecar that records what it receives.
type app struct {
	srv *httptest.Server

	mu   sync.Mutex
	reqs []seen
}

func newApp(t *testing.T, name string, extra http.Handler) *app {
	a := &app{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, seen{
			Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host,
			Header: r.Header.Clone(), ContentLength: r.ContentLength,
			BodyLen: len(body), BodySum: sha256.Sum256(body),
		})
		a.mu.Unlock()
		if extra != nil && r.URL.Path != "/" {
			extra.ServeHTTP(w, r)
			return
		}
		w.Header().Set("X-App", name)
		io.WriteString(w, name)
	})
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) addr() string { return a.srv.Listener.Addr().String() }

func (a *app) requests() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seen(nil), a.reqs...)
}

func (a *app) last(t *testing.T) seen {
	t.Helper()
	rs := a.requests()
	if len(rs) == 0 {
		t.Fatal("the app received no request")
	}
	return rs[len(rs)-1]
}

// invert returns b with every bit flipped: the app's answer to a large body.
func invert(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = ^c
	}
	return out
}

func TestHTTPThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	handlers := http.NewServeMux()
	handlers.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "bookstore-v1")
		w.Header().Set("Connection", "X-Response-Hop")
		w.Header().Set("X-Response-Hop", "must not reach the caller")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "echo "+r.Method+" "+r.URL.RequestURI())
	})
	handlers.HandleFunc("/large", func(w http.ResponseWriter, r *http.Request) {
		// A different 1 MiB back: the request's bytes with every bit flipped.
		w.Header().Set("Content-Length", fmt.Sprint(1<<20))
		w.Write(invert(largeBody()))
	})
	handlers.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	})
	bookstore := newApp(t, "bookstore-v1", handlers)

	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: bookstore.addr(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))

	t.Run("request and response pass unchanged but for hop-by-hop headers", func(t *testing.T) {
		resp, body := client.do(t, http.MethodGet, bookstoreURL+"/echo?book=1", nil, http.Header{
			"User-Agent":          {"bookbuyer-http-client/1.1"},
			"Client-App":          {"bookbuyer"},
			"X-Request-Id":        {"req-1"},
			"Connection":          {"X-Hop-Secret"},
			"X-Hop-Secret":        {"must not reach the app"},
			"Keep-Alive":          {"timeout=5"},
			"Proxy-Connection":    {"keep-alive"},
			"Proxy-Authorization": {"Basic Ym9vazpidXllcg=="},
		})
		got := bookstore.last(t)
		if got.Method != http.MethodGet || got.Path != "/echo" || got.Query != "book=1" || got.Host != "bookstore.bookstore:14001" {
			t.Errorf("app saw %s %s?%s Host %s; want GET /echo?book=1 Host bookstore.bookstore:14001", got.Method, got.Path, got.Query, got.Host)
		}
		for k, want := range map[string]string{"User-Agent": "bookbuyer-http-client/1.1", "Client-App": "bookbuyer", "X-Request-Id": "req-1"} {
			if v := got.Header.Get(k); v != want {
				t.Errorf("app saw %s %q, want %q", k, v, want)
			}
		}
		for _, k := range []string{"X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection"} {
			if v, ok := got.Header[k]; ok {
				t.Errorf("app saw hop-by-hop header %s: %q", k, v)
			}
		}
		if strings.Contains(strings.ToLower(got.Header.Get("Connection")), "x-hop-secret") {
			t.Errorf("app saw Connection %q", got.Header.Get("Connection"))
		}
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("status = %d, want %d", resp.StatusCode, http.StatusCreated)
		}
		if v := resp.Header.Get("X-App"); v != "bookstore-v1" {
			t.Errorf("response X-App = %q, want bookstore-v1", v)
		}
		if v, ok := resp.Header["X-Response-Hop"]; ok {
			t.Errorf("caller saw hop-by-hop response header X-Response-Hop: %q", v)
		}
		if v, ok := resp.Header[proxy.ReasonHeader]; ok {
			t.Errorf("caller saw %s %q on an app's response", proxy.ReasonHeader, v)
		}
		if want := "echo GET /echo?book=1"; string(body) != want {
			t.Errorf("body = %q, want %q", body, want)
		}
	})

	t.Run("1 MiB both ways", func(t *testing.T) {
		reqBody := largeBody()
		resp, body := client.do(t, http.MethodPost, bookstoreURL+"/large", bytes.NewReader(reqBody), http.Header{"Content-Type": {"application/octet-stream"}})
		got := bookstore.last(t)
		if got.Method != http.MethodPost || got.ContentLength != 1<<20 || got.BodyLen != 1<<20 || got.BodySum != sha256.Sum256(reqBody) {
			t.Errorf("app saw %s with Content-Length %d and %d body bytes (sum matches: %v); want POST with 1 MiB intact",
				got.Method, got.ContentLength, got.BodyLen, got.BodySum == sha256.Sum256(reqBody))
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
		if resp.ContentLength != 1<<20 {
			t.Errorf("response Content-Length = %d, want %d", resp.ContentLength, 1<<20)
		}
		if !bytes.Equal(body, invert(reqBody)) {
			t.Errorf("response body: %d bytes, not the %d the app sent", len(body), 1<<20)
		}
	})

	t.Run("chunked response streams", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, bookstoreURL+"/stream", nil)
		resp, err := client.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ContentLength != -1 || !cmp.Equal(resp.TransferEncoding, []string{"chunked"}) {
			t.Errorf("Content-Length %d, Transfer-Encoding %v; want a chunked response", resp.ContentLength, resp.TransferEncoding)
		}
		// The first chunk arrives while the app still holds the response open.
		first := make([]byte, len("first\n"))
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
			t.Fatalf("first chunk = %q, %v; want %q before the app finishes", first, err, "first\n")
		}
		releaseOnce.Do(func() { close(release) })
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(rest) != "second\n" {
			t.Errorf("rest = %q, %v; want %q", rest, err, "second\n")
		}
	})

	t.Run("metrics", func(t *testing.T) {
		outbound := map[string]string{
			"direction": "outbound", "source_workload": "bookbuyer", "source_namespace": "bookbuyer",
			"destination_service": "bookstore.bookstore", "destination_workload": "bookstore-v1", "destination_namespace": "bookstore",
			"route": "default", "response_code": "201", "grpc_status": "", "tls": "true", "reason": "",
		}
		if n := client.requestCount(t, outbound); n != 1 {
			t.Errorf("client sidecar: trellis_requests_total%v = %v, want 1", outbound, n)
		}
		inbound := map[string]string{
			"direction": "inbound", "source_workload": "bookbuyer", "source_namespace": "bookbuyer",
			"destination_service": "", "destination_workload": "bookstore-v1", "destination_namespace": "bookstore",
			"route": "permissive", "response_code": "201", "grpc_status": "", "tls": "true", "reason": "",
		}
		if n := server.requestCount(t, inbound); n != 1 {
			t.Errorf("server sidecar: trellis_requests_total%v = %v, want 1", inbound, n)
		}
		// Every request the client made was answered by the app, through both sidecars.
		ok200 := map[string]string{"response_code": "200", "reason": ""}
		if c, s := client.requestCount(t, ok200), server.requestCount(t, ok200); c < 3 || c != s {
			t.Errorf("200 responses: client sidecar counted %v, server sidecar %v; want the same, at least 3", c, s)
		}
	})

	t.Run("access log", func(t *testing.T) {
		var found bool
		for _, l := range client.accessLines(t) {
			if l["path"] == "/echo" {
				found = true
				want := map[string]any{"direction": "outbound", "method": "GET", "authority": "bookstore.bookstore:14001", "status": 201.0,
					"destination_service": "bookstore.bookstore", "destination_workload": "bookstore-v1", "upstream": server.p.Inbound.String(), "request_id": "req-1"}
				for k, v := range want {
					if l[k] != v {
						t.Errorf("access log %s = %v, want %v", k, l[k], v)
					}
				}
			}
		}
		if !found {
			t.Errorf("client sidecar's access log has no line for /echo:\n%s", client.access.String())
		}
	})

	t.Run("config", func(t *testing.T) {
		code, b := client.admin(t, "/config")
		if code != http.StatusOK {
			t.Fatalf("/config answers %d", code)
		}
		var cfg struct {
			Identity     string `json:"identity"`
			Ready        bool   `json:"ready"`
			Destinations []struct {
				Authority string `json:"authority"`
				Config    struct {
					Found    bool `json:"found"`
					Backends []struct {
						Name      string `json:"name"`
						Endpoints []struct {
							Address, Identity, Workload, Namespace string
						} `json:"endpoints"`
					} `json:"backends"`
				} `json:"config"`
			} `json:"destinations"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatalf("/config: %v\n%s", err, b)
		}
		if cfg.Identity != "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer" || !cfg.Ready {
			t.Errorf("/config identity %q ready %v; want bookbuyer's SPIFFE ID, ready", cfg.Identity, cfg.Ready)
		}
		if len(cfg.Destinations) != 1 || cfg.Destinations[0].Authority != "bookstore.bookstore:14001" {
			t.Fatalf("/config destinations = %+v, want bookstore.bookstore:14001 only\n%s", cfg.Destinations, b)
		}
		d := cfg.Destinations[0].Config
		if !d.Found || len(d.Backends) != 1 || d.Backends[0].Name != "bookstore.bookstore" {
			t.Fatalf("/config destination = %+v, want the backend bookstore.bookstore\n%s", d, b)
		}
		type ep = struct{ Address, Identity, Workload, Namespace string }
		want := []ep{{Address: server.p.Inbound.String(), Identity: "spiffe://cluster.local/ns/bookstore/sa/bookstore", Workload: "bookstore-v1", Namespace: "bookstore"}}
		var gotEps []ep
		for _, e := range d.Backends[0].Endpoints {
			gotEps = append(gotEps, ep(e))
		}
		if diff := cmp.Diff(want, gotEps); diff != "" {
			t.Errorf("/config endpoints (-want +got):\n%s", diff)
		}
	})

	t.Run("pprof", func(t *testing.T) {
		code, b := client.admin(t, "/debug/pprof/heap?debug=1")
		if !proxy.ProfilesServed {
			if code != http.StatusNotFound {
				t.Errorf("/debug/pprof/heap?debug=1 answers %d in a build without the pprof tag, want 404", code)
			}
			return
		}
		if code != http.StatusOK || !bytes.Contains(b, []byte("# runtime.MemStats")) {
			t.Fatalf("/debug/pprof/heap?debug=1 answers %d, want 200 with the MemStats:\n%.300s", code, b)
		}
		if code, _ := client.admin(t, "/debug/pprof/nonesuch"); code != http.StatusNotFound {
			t.Errorf("/debug/pprof/nonesuch answers %d, want 404", code)
		}
	})
}

// largeBody is 1 MiB of deterministic noise.
func largeBody() []byte {
	b := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'t', 'r', 'e', 'l', 'l', 'i', 's'})
	r.Read(b)
	return b
}

const allowOnlyGETAllowed = `kind: TrafficTarget
apiVersion: access.smi-spec.io/v1alpha3
metadata:
  name: bookstore
  namespace: bookstore
spec:
  destination:
    kind: ServiceAccount
    name: bookstore
    namespace: bookstore
  rules:
  - kind: HTTPRouteGroup
    name: bookstore-routes
    matches:
    - allowed
  sources:
  - kind: ServiceAccount
    name: bookbuyer
    namespace: bookbuyer
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: bookstore-routes
  namespace: bookstore
spec:
  matches:
  - name: allowed
    pathRegex: /allowed
    methods:
    - GET
`

func TestStrictModeWithoutTrafficTargetRefusesEarly(t *testing.T) {
	t.Parallel()
	bookstore := newApp(t, "bookstore-v1", nil)
	m := newMesh(t, strictMesh)
	server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: bookstore.addr(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})

	for range 3 {
		resp, body := client.get(t, bookstoreURL+"/books-bought")
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonDenied {
			t.Fatalf("GET = %d %s %q; want 403 %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), body, proxy.ReasonDenied)
		}
	}
	if n := len(bookstore.requests()); n != 0 {
		t.Errorf("the app received %d requests, want 0", n)
	}
	refused := map[string]string{"direction": "outbound", "response_code": "403", "reason": "denied", "destination_service": "bookstore.bookstore"}
	if n := client.requestCount(t, refused); n != 3 {
		t.Errorf("client sidecar: trellis_requests_total%v = %v, want 3", refused, n)
	}
	if n := server.requestCount(t, map[string]string{}); n != 0 {
		t.Errorf("server sidecar counted %v requests, want 0: the client's sidecar refuses before sending", n)
	}
	var logged int
	for _, l := range client.accessLines(t) {
		if l["reason"] == "denied" && l["status"] == 403.0 {
			logged++
		}
	}
	if logged != 3 {
		t.Errorf("client access log has %d denied lines, want 3:\n%s", logged, client.access.String())
	}
}

func TestStrictModeServerSideDenial(t *testing.T) {
	t.Parallel()
	bookstore := newApp(t, "bookstore-v1", nil)
	m := newMesh(t, strictMesh, allowOnlyGETAllowed)
	server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: bookstore.addr(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	thief := m.sidecar(sidecarSpec{reg: local.Registration{Name: "bookthief", Namespace: "bookthief", Account: "bookthief"}})

	client.getUntil(t, bookstoreURL+"/allowed", statusIs(http.StatusOK))
	allowedBefore := len(bookstore.requests())

	tests := []struct {
		name       string
		from       *sidecar
		method     string
		path       string
		wantStatus int
		wantReason string
	}{
		{name: "GET /allowed", from: client, method: "GET", path: "/allowed", wantStatus: 200},
		{name: "GET /other", from: client, method: "GET", path: "/other", wantStatus: 403, wantReason: "denied"},
		{name: "POST /allowed", from: client, method: "POST", path: "/allowed", wantStatus: 403, wantReason: "denied"},
		{name: "GET /allowed/x (anchored)", from: client, method: "GET", path: "/allowed/x", wantStatus: 403, wantReason: "denied"},
		{name: "bookthief GET /allowed", from: thief, method: "GET", path: "/allowed", wantStatus: 403, wantReason: "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.from.do(t, tt.method, bookstoreURL+tt.path, nil, nil)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(proxy.ReasonHeader) != tt.wantReason {
				t.Errorf("%s %s = %d %q %q; want %d %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), body, tt.wantStatus, tt.wantReason)
			}
		})
	}

	// Only GET /allowed reached the app.
	var paths []string
	for _, r := range bookstore.requests()[allowedBefore:] {
		paths = append(paths, r.Method+" "+r.Path)
	}
	if diff := cmp.Diff([]string{"GET /allowed"}, paths); diff != "" {
		t.Errorf("requests the app received (-want +got):\n%s", diff)
	}
	// bookbuyer's denials came from the server's sidecar, which the client's
	// sidecar relayed; bookthief's from its own sidecar.
	serverDenied := map[string]string{"direction": "inbound", "response_code": "403", "reason": "denied", "source_workload": "bookbuyer", "destination_workload": "bookstore-v1"}
	if n := server.requestCount(t, serverDenied); n != 3 {
		t.Errorf("server sidecar: trellis_requests_total%v = %v, want 3", serverDenied, n)
	}
	relayed := map[string]string{"direction": "outbound", "response_code": "403", "reason": ""}
	if n := client.requestCount(t, relayed); n != 3 {
		t.Errorf("client sidecar: trellis_requests_total%v = %v, want 3 (relayed)", relayed, n)
	}
	if n := client.requestCount(t, map[string]string{"reason": "denied"}); n != 0 {
		t.Errorf("client sidecar refused %v requests itself, want 0", n)
	}
	early := map[string]string{"direction": "outbound", "response_code": "403", "reason": "denied", "source_workload": "bookthief"}
	if n := thief.requestCount(t, early); n != 1 {
		t.Errorf("bookthief's sidecar: trellis_requests_total%v = %v, want 1", early, n)
	}
	if n := server.requestCount(t, map[string]string{"source_workload": "bookthief"}); n != 0 {
		t.Errorf("server sidecar saw %v requests from bookthief, want 0", n)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	impostorApp := newApp(t, "impostor", nil)
	unreadyApp := newApp(t, "unready-v1", nil)
	goneApp := newApp(t, "gone-v1", nil)
	m := newMesh(t, permissiveMesh)

	// unready: registered, its sidecar running, not (yet) marked ready.
	unready := m.sidecar(sidecarSpec{reg: reg("unready-v1", "bookstore", "unready", "unready"), app: unreadyApp.addr()})
	// gone: ready and its sidecar connected, but nothing listens at the
	// address it registered, as when a sidecar has just died.
	m.sidecar(sidecarSpec{reg: withAddress(reg("gone-v1", "bookstore", "gone", "gone"), freeAddr(t)), inbound: freeAddr(t), app: goneApp.addr(), ready: true})
	// bookstore: discovery promises bookstore's identity at an address where
	// the impostor's sidecar answers.
	impostor := m.sidecar(sidecarSpec{reg: reg("impostor", "bookstore", "impostor"), app: impostorApp.addr(), ready: true})
	m.sidecar(sidecarSpec{reg: withAddress(reg("bookstore-v1", "bookstore", "bookstore", "bookstore"), impostor.p.Inbound.String()), inbound: freeAddr(t), app: impostorApp.addr(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})

	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantReason string
	}{
		{name: "no ready endpoint", url: "http://unready.bookstore:14001/", wantStatus: 503, wantReason: proxy.ReasonNoEndpoints},
		{name: "endpoint's sidecar gone", url: "http://gone.bookstore:14001/", wantStatus: 503, wantReason: proxy.ReasonUpstreamUnreachable},
		{name: "endpoint presents another identity", url: bookstoreURL + "/", wantStatus: 503, wantReason: proxy.ReasonIdentityMismatch},
		{name: "unknown service with egress off", url: "http://nowhere.bookstore:14001/", wantStatus: 403, wantReason: proxy.ReasonEgressDenied},
		{name: "service without that port", url: "http://unready.bookstore:8080/", wantStatus: 403, wantReason: proxy.ReasonEgressDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Discovery catches up with readiness asynchronously: wait for the
			// reason, then check the whole answer.
			client.getUntil(t, tt.url, func(r *http.Response, _ []byte) bool { return r.Header.Get(proxy.ReasonHeader) == tt.wantReason })
			resp, body := client.get(t, tt.url)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(proxy.ReasonHeader) != tt.wantReason {
				t.Errorf("GET %s = %d %q; want %d %s", tt.url, resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), tt.wantStatus, tt.wantReason)
			}
			if want := "trellis: " + tt.wantReason + ": "; !strings.HasPrefix(string(body), want) {
				t.Errorf("body %q does not start with %q", body, want)
			}
			labels := map[string]string{"direction": "outbound", "response_code": fmt.Sprint(tt.wantStatus), "reason": tt.wantReason}
			if n := client.requestCount(t, labels); n < 2 {
				t.Errorf("trellis_requests_total%v = %v, want at least 2", labels, n)
			}
		})
	}
	t.Run("the impostor's app is never reached", func(t *testing.T) {
		if n := len(impostorApp.requests()); n != 0 {
			t.Errorf("impostor's app received %d requests, want 0", n)
		}
	})
	t.Run("request not in absolute form", func(t *testing.T) {
		resp, err := client.direct.Get("http://" + client.p.Outbound.String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonBadRequest {
			t.Errorf("GET / on the outbound listener = %d %q; want 400 %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), proxy.ReasonBadRequest)
		}
	})
	t.Run("ready again", func(t *testing.T) {
		m.setReady(unready.id, true)
		client.getUntil(t, "http://unready.bookstore:14001/", statusIs(http.StatusOK))
		if n := len(unreadyApp.requests()); n != 1 {
			t.Errorf("unready's app received %d requests, want 1", n)
		}
	})
}

// reg registers a workload of the services given, all on port 14001.
func reg(name, namespace, account string, services ...string) local.Registration {
	r := local.Registration{Name: name, Namespace: namespace, Account: account}
	for _, s := range services {
		r.Services = append(r.Services, model.ServiceMembership{Service: s, ServicePort: 14001, Protocol: "http"})
	}
	return r
}

func withAddress(r local.Registration, addr string) local.Registration {
	r.Address = addr
	return r
}

// serveTCP runs a TCP server on loopback for the test's life, handling each
// connection with handle (which need not close it), and returns its address.
func serveTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// startEcho runs a TCP server that echoes what it reads and closes its side
// when the peer has finished sending.
func startEcho(t *testing.T) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
}

// connect sends CONNECT authority through the sidecar's outbound listener, with
// early written right after the request, and reads the answer.
func connect(t *testing.T, s *sidecar, authority, early string) (*net.TCPConn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.p.Outbound.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n"+early); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	return c.(*net.TCPConn), br, resp
}

func TestConnectTunnel(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{
		reg: local.Registration{Name: "echo-v1", Namespace: "bookstore", Account: "echo",
			Services: []model.ServiceMembership{{Service: "echo", ServicePort: 9000, Protocol: "tcp"}}},
		app: echo, ready: true,
	})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	eventually(t, 15*time.Second, func() error {
		c, _, resp := connect(t, client, "echo.bookstore:9000", "")
		defer c.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("CONNECT = %d %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader))
		}
		return nil
	})

	c, br, resp := connect(t, client, "echo.bookstore:9000", "early|")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT = %d %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader))
	}
	// RFC 9110, section 9.3.6: no framing headers on a 2xx answer to CONNECT.
	if len(resp.TransferEncoding) > 0 || resp.Header.Get("Content-Length") != "" {
		t.Errorf("CONNECT answer has Transfer-Encoding %v, Content-Length %q; want neither", resp.TransferEncoding, resp.Header.Get("Content-Length"))
	}
	if _, err := io.WriteString(c, "hello through the mesh\n"); err != nil {
		t.Fatal(err)
	}
	want := "early|hello through the mesh\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
		t.Fatalf("echo = %q, %v; want %q", got, err, want)
	}
	// Closing our side travels to the app, whose close travels back.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) != 0 {
		t.Errorf("after half-close: %q, %v; want EOF", rest, err)
	}

	tunnels := map[string]string{"direction": "outbound", "destination_service": "echo.bookstore", "response_code": "200", "reason": ""}
	// A tunnel is counted when the sidecar has closed both sides, a moment
	// after this end saw EOF.
	eventually(t, 5*time.Second, func() error {
		if n := client.requestCount(t, tunnels); n < 2 {
			return fmt.Errorf("client sidecar: trellis_requests_total%v = %v, want at least 2", tunnels, n)
		}
		return nil
	})
	eventually(t, 5*time.Second, func() error {
		var closed float64
		for _, mm := range server.metricFamily(t, "trellis_tcp_connections_closed_total").GetMetric() {
			if hasLabels(mm, map[string]string{"direction": "inbound", "source_workload": "bookbuyer"}) {
				closed += mm.GetCounter().GetValue()
			}
		}
		if closed < 2 {
			return fmt.Errorf("server sidecar: %v inbound tunnels closed, want at least 2", closed)
		}
		return nil
	})
}

func TestControlPlaneRestart(t *testing.T) {
	t.Parallel()
	v1 := newApp(t, "bookstore-v1", nil)
	v2 := newApp(t, "bookstore-v2", nil)
	grpcAddr := freeAddr(t)
	m := newMeshAt(t, grpcAddr, permissiveMesh)
	m.sidecar(sidecarSpec{reg: reg("bookstore-v1", "bookstore", "bookstore", "bookstore", "bookstore-v1"), app: v1.addr(), ready: true})
	m.sidecar(sidecarSpec{reg: reg("bookstore-v2", "bookstore", "bookstore-v2", "bookstore", "bookstore-v2"), app: v2.addr(), ready: true})
	m.apply("traffic-split-v1.yaml", readExample(t, "traffic-split-v1.yaml"))
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})

	allFrom := func(want string) error {
		for i := range 10 {
			resp, body := client.get(t, bookstoreURL+"/")
			if resp.StatusCode != http.StatusOK || string(body) != want {
				return fmt.Errorf("request %d: %d %s %q, want 200 %q", i, resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), body, want)
			}
		}
		return nil
	}
	eventually(t, 15*time.Second, func() error { return allFrom("bookstore-v1") })

	m.stopControlPlane()
	if err := allFrom("bookstore-v1"); err != nil {
		t.Errorf("with the control plane away: %v", err)
	}
	if code := client.adminStatus(t, "/ready"); code != http.StatusOK {
		t.Errorf("with the control plane away, /ready answers %d, want 200", code)
	}

	// A new control plane on the same state and address; registered workloads
	// count as alive for the grace period while their sidecars reconnect.
	m.startControlPlane(grpcAddr, 30*time.Second)
	m.apply("traffic-split-v2.yaml", readExample(t, "traffic-split-v2.yaml"))
	eventually(t, 20*time.Second, func() error { return allFrom("bookstore-v2") })
	eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ws, err := m.cp().Workloads(ctx)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if !w.Connected {
				return fmt.Errorf("workload %s has not reconnected", w.ID)
			}
		}
		return nil
	})
}

func readExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "bookstore", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	handlers := http.NewServeMux()
	handlers.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(500 * time.Millisecond)
		io.WriteString(w, "slow answer")
	})
	bookstore := newApp(t, "bookstore-v1", handlers)
	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: bookstore.addr(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))

	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := client.client.Get(bookstoreURL + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the app")
	}

	// SIGTERM: both sidecars drain while the request is in flight.
	stopped := time.Now()
	client.cancel()
	server.cancel()
	for _, s := range []*sidecar{client, server} {
		eventually(t, 5*time.Second, func() error {
			code, body := s.admin(t, "/ready")
			if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "draining") {
				return fmt.Errorf("sidecar of %s while draining: /ready = %d %q, want 503 draining", s.id, code, body)
			}
			return nil
		})
	}
	r := <-res
	if r.err != nil || r.code != http.StatusOK || r.body != "slow answer" {
		t.Errorf("in-flight request = %d %q, %v; want 200 %q", r.code, r.body, r.err, "slow answer")
	}
	for _, s := range []*sidecar{client, server} {
		if err := s.stop(t); err != nil {
			t.Errorf("sidecar of %s: Run = %v, want nil", s.id, err)
		}
	}
	if d := time.Since(stopped); d > 4*time.Second {
		t.Errorf("sidecars took %v to stop, want well under the 5s drain timeout", d)
	}
	if _, err := net.DialTimeout("tcp", client.p.Outbound.String(), time.Second); err == nil {
		t.Error("the outbound listener still accepts connections after Run returned")
	}
}

func TestStartBeforeControlPlane(t *testing.T) {
	t.Parallel()
	bookstore := newApp(t, "bookstore-v1", nil)
	grpcAddr := freeAddr(t)
	m := newMeshAt(t, grpcAddr, permissiveMesh)
	spec := sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: bookstore.addr()}
	r := m.register(&spec)
	m.stopControlPlane()

	s := m.startSidecar(r, spec)
	for path, want := range map[string]int{"/live": 200, "/ready": 503, "/config": 200} {
		if code := s.adminStatus(t, path); code != want {
			t.Errorf("%s before certification = %d, want %d", path, code, want)
		}
	}
	// /config answers throughout start-up, as the sidecar certifies and
	// receives its policy.
	stop := make(chan struct{})
	polled := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				polled <- nil
				return
			default:
			}
			resp, err := s.direct.Get("http://" + s.p.Admin.String() + "/config")
			if err != nil {
				polled <- err
				return
			}
			var cfg struct{ Ready bool }
			err = json.NewDecoder(resp.Body).Decode(&cfg)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				polled <- fmt.Errorf("/config = %d, %v", resp.StatusCode, err)
				return
			}
		}
	}()
	m.startControlPlane(grpcAddr, time.Millisecond)
	s.waitReady(t)
	close(stop)
	if err := <-polled; err != nil {
		t.Errorf("/config during start-up: %v", err)
	}
	code, b := s.admin(t, "/config")
	var cfg struct {
		Identity string
		Ready    bool
	}
	if err := json.Unmarshal(b, &cfg); err != nil || code != 200 || !cfg.Ready || cfg.Identity != "spiffe://cluster.local/ns/bookstore/sa/bookstore" {
		t.Errorf("/config once ready = %d %+v %v; want ready as bookstore", code, cfg, err)
	}
}

func TestRunRejectsBadConcurrency(t *testing.T) {
	err := proxy.Run(t.Context(), []string{"--concurrency", "-2"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--concurrency") {
		t.Errorf("Run(--concurrency -2) = %v; want an error naming the flag", err)
	}
}
