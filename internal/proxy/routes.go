package proxy

import (
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
)

// matcher is a RouteMatch compiled for the hot path: regular expressions are
// compiled once per config, not per request.
type matcher struct {
	pathType proxyv1.MatchType
	hasPath  bool
	path     string
	pathRE   *regexp.Regexp
	method   string
	headers  []valueMatcher
	query    []valueMatcher
}

type valueMatcher struct {
	name  string // canonical header key, or query parameter name
	value string
	re    *regexp.Regexp // nil: exact
}

// newMatcher compiles m; nil for nil (every request). A regular expression
// that does not compile (the control plane checks them) matches nothing.
func newMatcher(m *proxyv1.RouteMatch) *matcher {
	if m == nil {
		return nil
	}
	mt := &matcher{method: m.GetMethod()}
	if p := m.GetPath(); p != nil {
		mt.hasPath, mt.pathType, mt.path = true, p.GetType(), p.GetValue()
		if mt.pathType == proxyv1.MatchType_MATCH_REGEX {
			mt.pathRE = compileWhole(mt.path)
		}
		if mt.pathType == proxyv1.MatchType_MATCH_PREFIX && len(mt.path) > 1 {
			mt.path = strings.TrimSuffix(mt.path, "/")
		}
	}
	for _, h := range m.GetHeaders() {
		mt.headers = append(mt.headers, newValueMatcher(http.CanonicalHeaderKey(h.GetName()), h))
	}
	for _, q := range m.GetQuery() {
		mt.query = append(mt.query, newValueMatcher(q.GetName(), q))
	}
	return mt
}

func newValueMatcher(name string, v *proxyv1.ValueMatch) valueMatcher {
	vm := valueMatcher{name: name, value: v.GetValue()}
	if v.GetType() == proxyv1.MatchType_MATCH_REGEX {
		vm.re = compileWhole(vm.value)
	}
	return vm
}

var matchNothing = regexp.MustCompile(`[^\s\S]`)

func compileWhole(expr string) *regexp.Regexp {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return matchNothing
	}
	return re
}

func (v *valueMatcher) accepts(got string, ok bool) bool {
	if !ok {
		return false
	}
	if v.re != nil {
		return v.re.MatchString(got)
	}
	return got == v.value
}

// accepts says whether req satisfies every part of the match.
func (m *matcher) accepts(req *http.Request) bool {
	if m == nil {
		return true
	}
	if m.method != "" && req.Method != m.method {
		return false
	}
	if m.hasPath && !m.acceptsPath(req.URL.Path) {
		return false
	}
	for i := range m.headers {
		h := &m.headers[i]
		vs, ok := req.Header[h.name]
		if !h.accepts(strings.Join(vs, ","), ok && len(vs) > 0) {
			return false
		}
	}
	if len(m.query) > 0 {
		q := req.URL.Query()
		for i := range m.query {
			vs, ok := q[m.query[i].name]
			if !m.query[i].accepts(first(vs), ok && len(vs) > 0) {
				return false
			}
		}
	}
	return true
}

func (m *matcher) acceptsPath(p string) bool {
	if p == "" {
		p = "/"
	}
	switch m.pathType {
	case proxyv1.MatchType_MATCH_EXACT:
		return p == m.path
	case proxyv1.MatchType_MATCH_REGEX:
		return m.pathRE.MatchString(p)
	}
	// A prefix of whole segments: "/a" matches "/a", "/a/" and "/a/b", not "/ab".
	if m.path == "/" {
		return true
	}
	return strings.HasPrefix(p, m.path) && (len(p) == len(m.path) || p[len(m.path)] == '/')
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// editHeaders applies a rule's header changes to h.
func editHeaders(h http.Header, c *proxyv1.HeaderChanges) {
	if c == nil {
		return
	}
	for _, v := range c.GetSet() {
		h.Set(v.GetName(), v.GetValue())
	}
	for _, v := range c.GetAdd() {
		h.Add(v.GetName(), v.GetValue())
	}
	for _, n := range c.GetRemove() {
		h.Del(n)
	}
}

// changePath returns path after a rule's path change; prefix is what the
// rule's PathPrefix match matched.
func changePath(path string, c *proxyv1.PathChange, m *matcher) string {
	if c == nil {
		return path
	}
	if !c.GetPrefix() {
		return c.GetReplaceFullPath()
	}
	prefix := ""
	if m != nil && m.hasPath && m.pathType == proxyv1.MatchType_MATCH_PREFIX && m.path != "/" {
		prefix = m.path
	}
	rest := strings.TrimPrefix(path, prefix)
	repl := strings.TrimSuffix(c.GetReplacePrefixMatch(), "/")
	switch {
	case rest == "" && repl == "":
		return "/"
	case rest == "":
		return repl
	case !strings.HasPrefix(rest, "/"):
		rest = "/" + rest
	}
	return repl + rest
}

// redirectURL builds the Location of a RequestRedirect for req, which reached
// the sidecar for authority (host:port).
func redirectURL(req *http.Request, authority string, rd *proxyv1.Redirect, m *matcher) string {
	scheme := "http"
	if rd.GetScheme() != "" {
		scheme = rd.GetScheme()
	}
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		host, port = authority, ""
	}
	if rd.GetHostname() != "" {
		host = rd.GetHostname()
	}
	switch {
	case rd.GetPort() != 0:
		port = strconv.Itoa(int(rd.GetPort()))
	case rd.GetScheme() != "":
		port = "" // the new scheme's well-known port, as the Gateway API says
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	}
	u := *req.URL
	u.Scheme, u.Host, u.User = scheme, host, nil
	u.Path, u.RawPath = changePath(req.URL.Path, rd.GetPath(), m), ""
	return u.String()
}
