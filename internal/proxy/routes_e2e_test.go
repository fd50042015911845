package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy"
)

// canaryRoute is a Gateway API HTTPRoute on the bookstore service, exercising
// each kind of match, the filters and a timeout.
const canaryRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules:
  - name: by-header
    matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: bookstore-v2, port: 14001}]
  - name: by-query
    matches: [{queryParams: [{name: version, value: "2"}]}]
    backendRefs: [{name: bookstore-v2, port: 14001}]
  - name: by-method
    matches: [{method: POST, path: {type: PathPrefix, value: /books}}]
    backendRefs: [{name: bookstore-v2, port: 14001}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-route, value: by-method}]
        remove: [x-secret]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-served-by-route, value: by-method}]
  - name: v1-prefix
    matches: [{path: {type: PathPrefix, value: /v1}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: bookstore-v1.bookstore, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: bookstore-v1, port: 14001}]
  - name: old
    matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]
  - name: slow
    matches: [{path: {type: Exact, value: /slow}}]
    backendRefs: [{name: bookstore-v1, port: 14001}]
    timeouts: {request: 200ms}
  - name: books
    matches: [{path: {type: PathPrefix, value: /books}}]
    backendRefs: [{name: bookstore-v1, port: 14001, weight: 3}, {name: bookstore-v2, port: 14001, weight: 1}]
`

// TestHTTPRouteThroughTwoSidecars routes by header, query, method, path and
// weight with an HTTPRoute, through real sidecars to two bookstore versions,
// and checks the filters, the timeout and what a request no rule takes gets.
func TestHTTPRouteThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	slow := http.NewServeMux()
	slow.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	slow.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "bookstore-v1") })
	v1 := newApp(t, "bookstore-v1", slow)
	v2 := newApp(t, "bookstore-v2", nil)
	m := newMesh(t, permissiveMesh)
	m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore", "bookstore-v1"), app: v1.addr(), ready: true})
	m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v2", "bookstore-v2", "bookstore-v2"), app: v2.addr(), ready: true})
	m.apply("canary.yaml", canaryRoute) // its services exist now, as apply requires
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/books", statusIs(http.StatusOK))

	served := func(t *testing.T, method, target string, h http.Header) (*http.Response, string) {
		t.Helper()
		resp, body := client.do(t, method, bookstoreURL+target, nil, h)
		return resp, string(body)
	}
	for _, tc := range []struct {
		name, method, target string
		header               http.Header
		want                 string
	}{
		{"header", "GET", "/anything", http.Header{"X-Canary": {"yes"}}, "bookstore-v2"},
		{"query", "GET", "/anything?version=2", nil, "bookstore-v2"},
		{"method and prefix", "POST", "/books/1", nil, "bookstore-v2"},
		{"prefix rewrite", "GET", "/v1/", nil, "bookstore-v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 10 {
				if resp, got := served(t, tc.method, tc.target, tc.header); resp.StatusCode != http.StatusOK || got != tc.want {
					t.Fatalf("%s %s %v: %d %q, want 200 from %s", tc.method, tc.target, tc.header, resp.StatusCode, got, tc.want)
				}
			}
		})
	}

	t.Run("request and response header filters", func(t *testing.T) {
		resp, _ := served(t, "POST", "/books", http.Header{"X-Secret": {"s3cret"}})
		got := v2.last(t)
		if got.Header.Get("X-Route") != "by-method" || got.Header.Get("X-Secret") != "" {
			t.Errorf("app saw X-Route %q X-Secret %q, want by-method and none", got.Header.Get("X-Route"), got.Header.Get("X-Secret"))
		}
		if v := resp.Header.Get("X-Served-By-Route"); v != "by-method" {
			t.Errorf("response X-Served-By-Route = %q, want by-method", v)
		}
	})

	t.Run("a longer path prefix outranks a header match", func(t *testing.T) {
		resp, _ := served(t, "POST", "/books", http.Header{"X-Canary": {"yes"}})
		if v := resp.Header.Get("X-Served-By-Route"); v != "by-method" {
			t.Errorf("POST /books with x-canary took another rule (X-Served-By-Route %q), want by-method", v)
		}
	})

	t.Run("URL rewrite", func(t *testing.T) {
		served(t, "GET", "/v1/books?x=1", nil)
		got := v1.last(t)
		if got.Path != "/books" || got.Query != "x=1" || got.Host != "bookstore-v1.bookstore" {
			t.Errorf("app saw %s?%s Host %s, want /books?x=1 Host bookstore-v1.bookstore", got.Path, got.Query, got.Host)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		noFollow := *client.client
		noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := noFollow.Get(bookstoreURL + "/old?q=1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "http://bookstore.bookstore:14001/new?q=1" || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonRedirect {
			t.Errorf("got %d Location %q reason %q, want 301 to http://bookstore.bookstore:14001/new?q=1, reason redirect",
				resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get(proxy.ReasonHeader))
		}
	})

	t.Run("route timeout", func(t *testing.T) {
		start := time.Now()
		resp, _ := served(t, "GET", "/slow", nil)
		if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonTimeout {
			t.Errorf("got %d %q, want 504 timeout", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader))
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("took %s; the route's timeout is 200ms", d)
		}
	})

	t.Run("no rule matches", func(t *testing.T) {
		resp, body := served(t, "GET", "/elsewhere", nil)
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonNoRoute || !strings.Contains(body, "HTTPRoute bookstore/canary") {
			t.Errorf("got %d %q %q, want 404 no_route naming the route", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), body)
		}
	})

	t.Run("weights", func(t *testing.T) {
		got := map[string]int{}
		const n = 400
		for range n {
			_, b := served(t, "GET", "/books", nil)
			got[b]++
		}
		if share := float64(got["bookstore-v1"]) / n; share < 0.65 || share > 0.85 {
			t.Errorf("bookstore-v1 served %.0f%% of /books (%v), want about 75%% (weights 3:1)", 100*share, got)
		}
	})

	t.Run("route label in metrics", func(t *testing.T) {
		if n := client.requestCount(t, map[string]string{"direction": "outbound", "route": "HTTPRoute bookstore/canary#books"}); n == 0 {
			t.Errorf("no outbound request counted with route %q", "HTTPRoute bookstore/canary#books")
		}
	})
}
