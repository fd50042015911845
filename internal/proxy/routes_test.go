package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
)

func TestMatcher(t *testing.T) {
	prefix := func(v string) *proxyv1.PathMatch {
		return &proxyv1.PathMatch{Type: proxyv1.MatchType_MATCH_PREFIX, Value: v}
	}
	tests := []struct {
		name   string
		m      *proxyv1.RouteMatch
		method string
		target string
		header http.Header
		want   bool
	}{
		{"nil matches all", nil, "DELETE", "/x", nil, true},
		{"prefix whole segment", &proxyv1.RouteMatch{Path: prefix("/books")}, "GET", "/books/1", nil, true},
		{"prefix itself", &proxyv1.RouteMatch{Path: prefix("/books")}, "GET", "/books", nil, true},
		{"prefix trailing slash", &proxyv1.RouteMatch{Path: prefix("/books/")}, "GET", "/books", nil, true},
		{"prefix not mid-segment", &proxyv1.RouteMatch{Path: prefix("/books")}, "GET", "/bookstore", nil, false},
		{"root prefix", &proxyv1.RouteMatch{Path: prefix("/")}, "GET", "/anything", nil, true},
		{"exact", &proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Value: "/a"}}, "GET", "/a", nil, true},
		{"exact not prefix", &proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Value: "/a"}}, "GET", "/a/b", nil, false},
		{"regex whole path", &proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Type: proxyv1.MatchType_MATCH_REGEX, Value: "/buy-a-book/[a-z]+"}}, "GET", "/buy-a-book/new", nil, true},
		{"regex anchored", &proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Type: proxyv1.MatchType_MATCH_REGEX, Value: "/buy"}}, "GET", "/buy-a-book", nil, false},
		{"bad regex matches nothing", &proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Type: proxyv1.MatchType_MATCH_REGEX, Value: "(("}}, "GET", "/x", nil, false},
		{"method", &proxyv1.RouteMatch{Method: "POST"}, "POST", "/", nil, true},
		{"wrong method", &proxyv1.RouteMatch{Method: "POST"}, "GET", "/", nil, false},
		{"header exact", &proxyv1.RouteMatch{Headers: []*proxyv1.ValueMatch{{Name: "x-canary", Value: "yes"}}}, "GET", "/", http.Header{"X-Canary": {"yes"}}, true},
		{"header absent", &proxyv1.RouteMatch{Headers: []*proxyv1.ValueMatch{{Name: "x-canary", Value: ""}}}, "GET", "/", nil, false},
		{"header regex", &proxyv1.RouteMatch{Headers: []*proxyv1.ValueMatch{{Name: "user-agent", Type: proxyv1.MatchType_MATCH_REGEX, Value: ".*-http-client/.*"}}}, "GET", "/", http.Header{"User-Agent": {"Go-http-client/1.1"}}, true},
		{"every header must hold", &proxyv1.RouteMatch{Headers: []*proxyv1.ValueMatch{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}}, "GET", "/", http.Header{"A": {"1"}}, false},
		{"query exact", &proxyv1.RouteMatch{Query: []*proxyv1.ValueMatch{{Name: "v", Value: "2"}}}, "GET", "/?v=2", nil, true},
		{"query other value", &proxyv1.RouteMatch{Query: []*proxyv1.ValueMatch{{Name: "v", Value: "2"}}}, "GET", "/?v=1", nil, false},
		{"query regex", &proxyv1.RouteMatch{Query: []*proxyv1.ValueMatch{{Name: "v", Type: proxyv1.MatchType_MATCH_REGEX, Value: "[0-9]+"}}}, "GET", "/?v=42", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://bookstore.bookstore:14001"+tt.target, nil)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			if got := newMatcher(tt.m).accepts(req); got != tt.want {
				t.Errorf("accepts(%s %s %v) = %v, want %v", tt.method, tt.target, tt.header, got, tt.want)
			}
		})
	}
}

func TestChangePath(t *testing.T) {
	prefixMatch := newMatcher(&proxyv1.RouteMatch{Path: &proxyv1.PathMatch{Type: proxyv1.MatchType_MATCH_PREFIX, Value: "/v1"}})
	tests := []struct {
		path string
		c    *proxyv1.PathChange
		want string
	}{
		{"/v1/books", nil, "/v1/books"},
		{"/v1/books", &proxyv1.PathChange{ReplaceFullPath: "/all"}, "/all"},
		{"/v1/books", &proxyv1.PathChange{Prefix: true, ReplacePrefixMatch: "/"}, "/books"},
		{"/v1", &proxyv1.PathChange{Prefix: true, ReplacePrefixMatch: "/"}, "/"},
		{"/v1/books", &proxyv1.PathChange{Prefix: true, ReplacePrefixMatch: "/v2"}, "/v2/books"},
		{"/v1/books", &proxyv1.PathChange{Prefix: true, ReplacePrefixMatch: "/v2/"}, "/v2/books"},
		{"/v1", &proxyv1.PathChange{Prefix: true, ReplacePrefixMatch: "/v2"}, "/v2"},
	}
	for _, tt := range tests {
		if got := changePath(tt.path, tt.c, prefixMatch); got != tt.want {
			t.Errorf("changePath(%q, %v) = %q, want %q", tt.path, tt.c, got, tt.want)
		}
	}
}

func TestRedirectURL(t *testing.T) {
	req := httptest.NewRequest("GET", "http://bookstore.bookstore:14001/admin?x=1", nil)
	tests := []struct {
		rd   *proxyv1.Redirect
		want string
	}{
		{&proxyv1.Redirect{StatusCode: 302}, "http://bookstore.bookstore:14001/admin?x=1"},
		{&proxyv1.Redirect{Path: &proxyv1.PathChange{ReplaceFullPath: "/"}}, "http://bookstore.bookstore:14001/?x=1"},
		{&proxyv1.Redirect{Scheme: "https"}, "https://bookstore.bookstore/admin?x=1"},
		{&proxyv1.Redirect{Scheme: "https", Port: 8443, Hostname: "store.example"}, "https://store.example:8443/admin?x=1"},
		{&proxyv1.Redirect{Port: 80}, "http://bookstore.bookstore/admin?x=1"},
	}
	for _, tt := range tests {
		if got := redirectURL(req, "bookstore.bookstore:14001", tt.rd, nil); got != tt.want {
			t.Errorf("redirectURL(%v) = %q, want %q", tt.rd, got, tt.want)
		}
	}
}
