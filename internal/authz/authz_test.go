package authz

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
)

const (
	bookbuyerID = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
	bookthiefID = "spiffe://cluster.local/ns/bookthief/sa/bookthief"
	bookstoreID = "spiffe://cluster.local/ns/bookstore/sa/bookstore"

	booksBoughtRule = "HTTPRouteGroup bookstore/bookstore-service-routes#books-bought"
	buyABookRule    = "HTTPRouteGroup bookstore/bookstore-service-routes#buy-a-book"
)

// bookstorePolicy is the inbound policy compile makes for bookstore from OSM's
// bookstore demo: bookbuyer may call the two matches of
// bookstore-service-routes, bookthief is no source.
func bookstorePolicy(permissive bool) *proxyv1.InboundConfig {
	return &proxyv1.InboundConfig{
		Identity:    bookstoreID,
		TrustDomain: "cluster.local",
		Permissive:  permissive,
		Workload:    "bookstore-v1",
		Namespace:   "bookstore",
		Authorizations: []*proxyv1.Authorization{{
			Name:    "TrafficTarget bookstore/bookstore",
			Sources: []string{bookbuyerID},
			Http: []*proxyv1.HTTPRule{
				{
					Name:      booksBoughtRule,
					PathRegex: "/books-bought",
					Methods:   []string{"GET"},
					Headers:   map[string]string{"user-agent": ".*-http-client/*.*", "client-app": "bookbuyer"},
				},
				{
					Name:      buyABookRule,
					PathRegex: ".*a-book.*new",
					Methods:   []string{"GET"},
				},
			},
		}},
	}
}

func TestAllowHTTPBookstore(t *testing.T) {
	buyerHeaders := map[string]string{"User-Agent": "Go-http-client/1.1", "Client-App": "bookbuyer"}
	tests := []struct {
		name       string
		permissive bool
		source     string
		method     string
		path       string
		headers    map[string]string
		wantOK     bool
		wantRule   string
	}{
		{name: "books-bought with the right headers", source: bookbuyerID, method: "GET", path: "/books-bought", headers: buyerHeaders, wantOK: true, wantRule: booksBoughtRule},
		{name: "wrong client-app", source: bookbuyerID, method: "GET", path: "/books-bought", headers: map[string]string{"User-Agent": "Go-http-client/1.1", "Client-App": "bookthief"}},
		{name: "client-app missing", source: bookbuyerID, method: "GET", path: "/books-bought", headers: map[string]string{"User-Agent": "Go-http-client/1.1"}},
		{name: "user-agent does not match", source: bookbuyerID, method: "GET", path: "/books-bought", headers: map[string]string{"User-Agent": "curl/8.0", "Client-App": "bookbuyer"}},
		{name: "POST is not GET", source: bookbuyerID, method: "POST", path: "/books-bought", headers: buyerHeaders},
		{name: "buy-a-book", source: bookbuyerID, method: "GET", path: "/buy-a-book/new", wantOK: true, wantRule: buyABookRule},
		{name: "path regex is anchored at the start", source: bookbuyerID, method: "GET", path: "/x/books-bought", headers: buyerHeaders},
		{name: "path regex is anchored at the end", source: bookbuyerID, method: "GET", path: "/books-bought/x", headers: buyerHeaders},
		{name: "buy-a-book regex anchored at the end", source: bookbuyerID, method: "GET", path: "/buy-a-book/new/x"},
		{name: "bookthief is no source", source: bookthiefID, method: "GET", path: "/books-bought", headers: buyerHeaders},
		{name: "no source identity", source: "", method: "GET", path: "/buy-a-book/new"},
		{name: "permissive allows anyone", permissive: true, source: bookthiefID, method: "POST", path: "/anything", wantOK: true, wantRule: "permissive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, err := Compile(bookstorePolicy(tt.permissive))
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			r := httptest.NewRequest(tt.method, "http://bookstore.bookstore:14001"+tt.path, nil)
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			d := pol.AllowHTTP(tt.source, r)
			ok, rule := d.Allowed, d.Rule
			if ok != tt.wantOK || rule != tt.wantRule {
				t.Errorf("AllowHTTP(%q, %s %s) = %v, %q; want %v, %q", tt.source, tt.method, tt.path, ok, rule, tt.wantOK, tt.wantRule)
			}
		})
	}
}

func TestAllowHTTPRuleShapes(t *testing.T) {
	tests := []struct {
		name    string
		rule    *proxyv1.HTTPRule
		method  string
		host    string
		headers http.Header
		wantOK  bool
	}{
		{name: "no path, no methods: anything", rule: &proxyv1.HTTPRule{Name: "any"}, method: "DELETE", wantOK: true},
		{name: "method wildcard", rule: &proxyv1.HTTPRule{Name: "any", Methods: []string{"GET", "*"}}, method: "PATCH", wantOK: true},
		{name: "host header matches r.Host", rule: &proxyv1.HTTPRule{Name: "h", Headers: map[string]string{"host": `bookstore\.bookstore(:\d+)?`}}, method: "GET", host: "bookstore.bookstore:14001", wantOK: true},
		{name: "host header does not match", rule: &proxyv1.HTTPRule{Name: "h", Headers: map[string]string{"host": `bookstore\.bookstore`}}, method: "GET", host: "evil.example:80"},
		{name: "any of several values may match", rule: &proxyv1.HTTPRule{Name: "h", Headers: map[string]string{"x-tag": "b"}}, method: "GET", headers: http.Header{"X-Tag": {"a", "b"}}, wantOK: true},
		{name: "header value regex is anchored", rule: &proxyv1.HTTPRule{Name: "h", Headers: map[string]string{"x-tag": "b"}}, method: "GET", headers: http.Header{"X-Tag": {"abc"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, err := Compile(&proxyv1.InboundConfig{Authorizations: []*proxyv1.Authorization{{Name: "t", Sources: []string{bookbuyerID}, Http: []*proxyv1.HTTPRule{tt.rule}}}})
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			r := httptest.NewRequest(tt.method, "/", nil)
			if tt.host != "" {
				r.Host = tt.host
			}
			for k, vs := range tt.headers {
				r.Header[k] = vs
			}
			ok := pol.AllowHTTP(bookbuyerID, r).Allowed
			if ok != tt.wantOK {
				t.Errorf("allowHTTP = %v, want %v", ok, tt.wantOK)
			}
		})
	}
}

func TestNewPolicyRejectsInvalidRegex(t *testing.T) {
	tests := []struct {
		name     string
		rule     *proxyv1.HTTPRule
		wantText string
	}{
		{name: "path", rule: &proxyv1.HTTPRule{Name: "bad-path", PathRegex: "/books-(bought"}, wantText: "bad-path: path regex"},
		{name: "header", rule: &proxyv1.HTTPRule{Name: "bad-header", Headers: map[string]string{"client-app": "[bookbuyer"}}, wantText: "bad-header: header client-app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &proxyv1.InboundConfig{Authorizations: []*proxyv1.Authorization{{Name: "t", Sources: []string{bookbuyerID}, Http: []*proxyv1.HTTPRule{tt.rule}}}}
			pol, err := Compile(m)
			if err == nil {
				t.Fatalf("Compile = %v, nil; want an error", pol)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not contain %q", err, tt.wantText)
			}
		})
	}
}

func TestAllowTCP(t *testing.T) {
	cfg := func(permissive bool, rules ...*proxyv1.TCPRule) *proxyv1.InboundConfig {
		return &proxyv1.InboundConfig{
			Permissive:     permissive,
			Authorizations: []*proxyv1.Authorization{{Name: "TrafficTarget bookwarehouse/mysql", Sources: []string{bookbuyerID}, Tcp: rules}},
		}
	}
	ports := &proxyv1.TCPRule{Name: "TCPRoute bookwarehouse/mysql", Ports: []uint32{3306, 33060}}
	anyPort := &proxyv1.TCPRule{Name: "TCPRoute bookwarehouse/any"}
	tests := []struct {
		name     string
		cfg      *proxyv1.InboundConfig
		source   string
		port     int
		wantOK   bool
		wantRule string
	}{
		{name: "listed port", cfg: cfg(false, ports), source: bookbuyerID, port: 3306, wantOK: true, wantRule: ports.Name},
		{name: "second listed port", cfg: cfg(false, ports), source: bookbuyerID, port: 33060, wantOK: true, wantRule: ports.Name},
		{name: "unlisted port", cfg: cfg(false, ports), source: bookbuyerID, port: 8080},
		{name: "empty port list allows every port", cfg: cfg(false, anyPort), source: bookbuyerID, port: 8080, wantOK: true, wantRule: anyPort.Name},
		{name: "second rule allows", cfg: cfg(false, ports, anyPort), source: bookbuyerID, port: 8080, wantOK: true, wantRule: anyPort.Name},
		{name: "not a source", cfg: cfg(false, anyPort), source: bookthiefID, port: 3306},
		{name: "no TCP rule", cfg: cfg(false), source: bookbuyerID, port: 3306},
		{name: "permissive", cfg: cfg(true), source: bookthiefID, port: 1, wantOK: true, wantRule: "permissive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, err := Compile(tt.cfg)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			d := pol.AllowTCP(tt.source, tt.port)
			ok, rule := d.Allowed, d.Rule
			if ok != tt.wantOK || rule != tt.wantRule {
				t.Errorf("AllowTCP(%q, %d) = %v, %q; want %v, %q", tt.source, tt.port, ok, rule, tt.wantOK, tt.wantRule)
			}
		})
	}
}
