package compile

import (
	"sort"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/model"
	"google.golang.org/protobuf/types/known/durationpb"
)

// routeEntry is one match of one rule, the unit the sidecar tries in order.
type routeEntry struct {
	route *model.Route
	rule  *model.RouteRule
	match *model.RouteMatch // nil: every request
}

// gatewayRoutes flattens the Gateway API routes attached to t (already in
// precedence order: oldest first, then namespace/name) into the ordered routes
// a sidecar tries, first match wins, with the Gateway API's precedence among
// matches: an Exact path before a RegularExpression path before the longest
// PathPrefix; then a method match; then the most header matches; then the most
// query matches; then route and rule order. It returns the backends the routes
// use.
func gatewayRoutes(routes []*model.Route, t Target) ([]*proxyv1.Route, []backendRef) {
	var entries []routeEntry
	for _, r := range routes {
		for i := range r.Rules {
			rule := &r.Rules[i]
			if len(rule.Matches) == 0 {
				entries = append(entries, routeEntry{route: r, rule: rule})
				continue
			}
			for j := range rule.Matches {
				entries = append(entries, routeEntry{route: r, rule: rule, match: &rule.Matches[j]})
			}
		}
	}
	sort.SliceStable(entries, func(a, b int) bool { return precedes(entries[a].match, entries[b].match) })

	var out []*proxyv1.Route
	var refs []backendRef
	for _, e := range entries {
		src := string(e.route.Kind) + " " + e.route.Key.String()
		pr := &proxyv1.Route{
			Name:            src + "#" + e.rule.Name,
			Source:          src,
			Match:           routeMatch(e.match),
			RequestHeaders:  headerChanges(e.rule.Filters.RequestHeaders),
			ResponseHeaders: headerChanges(e.rule.Filters.ResponseHeaders),
		}
		if rd := e.rule.Filters.Redirect; rd != nil {
			pr.Redirect = &proxyv1.Redirect{Scheme: rd.Scheme, Hostname: rd.Hostname, Port: uint32(rd.Port), Path: pathChange(rd.Path), StatusCode: uint32(rd.StatusCode)}
		}
		if rw := e.rule.Filters.Rewrite; rw != nil {
			pr.Rewrite = &proxyv1.Rewrite{Hostname: rw.Hostname, Path: pathChange(rw.Path)}
		}
		if d := routeTimeout(e.rule); d > 0 {
			pr.Timeout = durationpb.New(d)
		}
		for _, b := range e.rule.Backends {
			ref := backendRef{b.Service, b.Port}
			if ref.port == 0 {
				ref.port = t.Port
			}
			refs = append(refs, ref)
			pr.Backends = append(pr.Backends, &proxyv1.WeightedBackend{Backend: ref.name(t.Port), Weight: uint32(b.Weight)})
		}
		out = append(out, pr)
	}
	return out, refs
}

// routeTimeout is the tighter of a rule's request and backend-request timeouts.
func routeTimeout(r *model.RouteRule) (d time.Duration) {
	for _, v := range []time.Duration{r.Timeout, r.BackendTimeout} {
		if v > 0 && (d == 0 || v < d) {
			d = v
		}
	}
	return d
}

// precedes orders matches by the Gateway API's precedence; a nil match is a
// PathPrefix "/" match.
func precedes(a, b *model.RouteMatch) bool {
	ra, la := pathRank(a)
	rb, lb := pathRank(b)
	if ra != rb {
		return ra < rb
	}
	if la != lb {
		return la > lb
	}
	ma, mb := a != nil && a.Method != "", b != nil && b.Method != ""
	if ma != mb {
		return ma
	}
	if ha, hb := count(a, func(m *model.RouteMatch) int { return len(m.Headers) }), count(b, func(m *model.RouteMatch) int { return len(m.Headers) }); ha != hb {
		return ha > hb
	}
	return count(a, func(m *model.RouteMatch) int { return len(m.Query) }) > count(b, func(m *model.RouteMatch) int { return len(m.Query) })
}

// pathRank ranks a path match (lower first) and gives its length, which breaks
// ties between prefixes (longer first).
func pathRank(m *model.RouteMatch) (rank, length int) {
	if m == nil {
		return 2, 1
	}
	switch m.PathType {
	case model.MatchExact:
		return 0, len(m.PathValue)
	case model.MatchRegex:
		return 1, 0
	case model.MatchPathPrefix:
		return 2, len(m.PathValue)
	}
	return 3, 0 // no path match (gRPC service-less matches)
}

func count(m *model.RouteMatch, f func(*model.RouteMatch) int) int {
	if m == nil {
		return 0
	}
	return f(m)
}

var matchTypes = map[model.MatchType]proxyv1.MatchType{
	model.MatchExact:      proxyv1.MatchType_MATCH_EXACT,
	model.MatchPathPrefix: proxyv1.MatchType_MATCH_PREFIX,
	model.MatchRegex:      proxyv1.MatchType_MATCH_REGEX,
}

func routeMatch(m *model.RouteMatch) *proxyv1.RouteMatch {
	if m == nil {
		return nil
	}
	out := &proxyv1.RouteMatch{Method: m.Method}
	if m.PathType != "" {
		out.Path = &proxyv1.PathMatch{Type: matchTypes[m.PathType], Value: m.PathValue}
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, &proxyv1.ValueMatch{Name: h.Name, Type: matchTypes[h.Type], Value: h.Value})
	}
	for _, q := range m.Query {
		out.Query = append(out.Query, &proxyv1.ValueMatch{Name: q.Name, Type: matchTypes[q.Type], Value: q.Value})
	}
	return out
}

func headerChanges(h *model.HeaderChanges) *proxyv1.HeaderChanges {
	if h == nil {
		return nil
	}
	out := &proxyv1.HeaderChanges{Remove: append([]string(nil), h.Remove...)}
	for _, v := range h.Set {
		out.Set = append(out.Set, &proxyv1.Header{Name: v.Name, Value: v.Value})
	}
	for _, v := range h.Add {
		out.Add = append(out.Add, &proxyv1.Header{Name: v.Name, Value: v.Value})
	}
	return out
}

func pathChange(p *model.PathChange) *proxyv1.PathChange {
	if p == nil {
		return nil
	}
	return &proxyv1.PathChange{ReplaceFullPath: p.ReplaceFullPath, ReplacePrefixMatch: p.ReplacePrefixMatch, Prefix: p.Prefix}
}
