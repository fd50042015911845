package translate

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/trellis-mesh/trellis/internal/model"
)

// The Gateway API kinds Trellis accepts for mesh traffic (GAMMA): routes whose
// parentRefs are Services.
const (
	GatewayAPIVersion = "gateway.networking.k8s.io/v1"
	// GatewayAPIVersionV1beta1 is also accepted for HTTPRoute: the Gateway
	// API still serves it, with the same schema as v1 (its Go types are
	// aliases of v1's), and routes written for it are common.
	GatewayAPIVersionV1beta1 = "gateway.networking.k8s.io/v1beta1"
	KindHTTPRoute            = "HTTPRoute"
	KindGRPCRoute            = "GRPCRoute"
)

// durationPattern is the Gateway API's duration format (GEP-2257): one to four
// number-unit pairs of h, m, s and ms.
var durationPattern = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

func httpRoute(c *check, r Resource) model.Route {
	var in gatewayv1.HTTPRoute
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.Route{}
	}
	out := routeHead(c, r, model.RouteKindHTTP, in.CreationTimestamp.Time, in.Spec.ParentRefs, len(in.Spec.Hostnames))
	if defaultedRules(in.Spec.Rules) {
		// The API server wrote the CRD's default for a route without rules:
		// the same route as one applied locally without them.
		in.Spec.Rules = nil
	}
	for i, rule := range in.Spec.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		mr := model.RouteRule{Name: ruleName(rule.Name, i)}
		for j, m := range rule.Matches {
			mr.Matches = append(mr.Matches, httpMatch(c, fmt.Sprintf("%s.matches[%d]", f, j), m))
		}
		mr.Filters = httpFilters(c, f+".filters", rule.Filters, mr.Matches)
		for j, b := range rule.BackendRefs {
			bf := fmt.Sprintf("%s.backendRefs[%d]", f, j)
			if len(b.Filters) > 0 {
				c.errorf(bf+".filters", "filters on a backendRef are not supported: move them to the rule's filters")
			}
			mr.Backends = append(mr.Backends, backendRef(c, bf, b.BackendRef, r.Namespace))
		}
		if len(mr.Backends) == 0 && mr.Filters.Redirect == nil {
			c.errorf(f+".backendRefs", "a rule needs backendRefs, or a RequestRedirect filter: name the services that serve it")
		}
		if t := rule.Timeouts; t != nil {
			mr.Timeout = gatewayDuration(c, f+".timeouts.request", t.Request)
			mr.BackendTimeout = gatewayDuration(c, f+".timeouts.backendRequest", t.BackendRequest)
			if mr.Timeout > 0 && mr.BackendTimeout > mr.Timeout {
				c.errorf(f+".timeouts.backendRequest", "%s is longer than timeouts.request %s: it must not be", mr.BackendTimeout, mr.Timeout)
			}
		}
		if rule.Retry != nil {
			c.warnf(f+".retry", NotUsedYet)
		}
		if rule.SessionPersistence != nil {
			c.warnf(f+".sessionPersistence", NotUsedYet)
		}
		out.Rules = append(out.Rules, mr)
	}
	defaultRule(&out)
	return out
}

func grpcRoute(c *check, r Resource) model.Route {
	var in gatewayv1.GRPCRoute
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.Route{}
	}
	out := routeHead(c, r, model.RouteKindGRPC, in.CreationTimestamp.Time, in.Spec.ParentRefs, len(in.Spec.Hostnames))
	for i, rule := range in.Spec.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		mr := model.RouteRule{Name: ruleName(rule.Name, i)}
		for j, m := range rule.Matches {
			mr.Matches = append(mr.Matches, grpcMatch(c, fmt.Sprintf("%s.matches[%d]", f, j), m))
		}
		for j, fl := range rule.Filters {
			ff := fmt.Sprintf("%s.filters[%d]", f, j)
			switch fl.Type {
			case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
				mr.Filters.RequestHeaders = headerChanges(c, ff+".requestHeaderModifier", fl.RequestHeaderModifier, mr.Filters.RequestHeaders)
			case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
				mr.Filters.ResponseHeaders = headerChanges(c, ff+".responseHeaderModifier", fl.ResponseHeaderModifier, mr.Filters.ResponseHeaders)
			default:
				c.errorf(ff+".type", "filter %q is not supported: use RequestHeaderModifier or ResponseHeaderModifier, or remove it", fl.Type)
			}
		}
		for j, b := range rule.BackendRefs {
			bf := fmt.Sprintf("%s.backendRefs[%d]", f, j)
			if len(b.Filters) > 0 {
				c.errorf(bf+".filters", "filters on a backendRef are not supported: move them to the rule's filters")
			}
			mr.Backends = append(mr.Backends, backendRef(c, bf, b.BackendRef, r.Namespace))
		}
		if len(mr.Backends) == 0 {
			c.errorf(f+".backendRefs", "a rule needs backendRefs: name the services that serve it")
		}
		out.Rules = append(out.Rules, mr)
	}
	defaultRule(&out)
	return out
}

// routeHead makes what HTTPRoute and GRPCRoute share: the key, the kind, the
// creation time that orders routes, the Service parents, and the word on
// hostnames.
func routeHead(c *check, r Resource, kind model.RouteKind, created time.Time, refs []gatewayv1.ParentReference, hostnames int) model.Route {
	out := model.Route{Key: keyOf(r), Kind: kind, Created: created, Parents: parents(c, refs, r.Namespace)}
	if hostnames > 0 {
		c.warnf("spec.hostnames", "ignored: a route attached to a Service matches the requests for that Service whatever their host")
	}
	return out
}

// defaultedRules says whether rules are exactly what the Gateway API's
// HTTPRoute CRD fills in when a route has none: one rule, matching PathPrefix
// "/", with nothing else.
func defaultedRules(rules []gatewayv1.HTTPRouteRule) bool {
	if len(rules) != 1 {
		return false
	}
	r := rules[0]
	if r.Name != nil || len(r.Filters) > 0 || len(r.BackendRefs) > 0 || r.Timeouts != nil || r.Retry != nil || r.SessionPersistence != nil || len(r.Matches) != 1 {
		return false
	}
	m := r.Matches[0]
	if len(m.Headers) > 0 || len(m.QueryParams) > 0 || m.Method != nil || m.Path == nil {
		return false
	}
	return m.Path.Type != nil && *m.Path.Type == gatewayv1.PathMatchPathPrefix && m.Path.Value != nil && *m.Path.Value == "/"
}

// defaultRule gives a route without rules the Gateway API's default: one rule
// sending everything to its (first) parent.
func defaultRule(out *model.Route) {
	if len(out.Rules) == 0 && len(out.Parents) > 0 {
		p := out.Parents[0]
		out.Rules = []model.RouteRule{{Name: "0", Backends: []model.RouteBackend{{Service: p.Service, Port: p.Port, Weight: 1}}}}
	}
}

func ruleName(n *gatewayv1.SectionName, i int) string {
	if n != nil && *n != "" {
		return string(*n)
	}
	return fmt.Sprint(i)
}

// parents keeps the Service parentRefs of a route; a route attached to no
// Service is an error, since Trellis routes mesh traffic only.
func parents(c *check, refs []gatewayv1.ParentReference, ns string) []model.RouteParent {
	var out []model.RouteParent
	for i, p := range refs {
		f := fmt.Sprintf("spec.parentRefs[%d]", i)
		group, kind := "", "Gateway"
		if p.Group != nil {
			group = string(*p.Group)
		}
		if p.Kind != nil {
			kind = string(*p.Kind)
		}
		if group != "" && group != "core" || kind != "Service" {
			c.warnf(f, "ignored: Trellis routes mesh traffic, so it acts on parentRefs of kind Service (group \"\"); this one is %s %s", kindOf(group, kind), p.Name)
			continue
		}
		k := model.Key{Namespace: ns, Name: string(p.Name)}
		if p.Namespace != nil && *p.Namespace != "" {
			k.Namespace = string(*p.Namespace)
		}
		if k.Namespace != ns {
			c.errorf(f+".namespace", "service %s is in namespace %s, but a route may only attach to services of its own namespace (%s) here: move the route to namespace %s", k.Name, k.Namespace, ns, k.Namespace)
			continue
		}
		if p.SectionName != nil {
			c.errorf(f+".sectionName", "is not supported for Service parents: use port instead")
		}
		rp := model.RouteParent{Service: k}
		if p.Port != nil {
			rp.Port = int(*p.Port)
		}
		out = append(out, rp)
	}
	if len(out) == 0 {
		c.errorf("spec.parentRefs", "no parentRef is a Service: attach the route to the Service whose traffic it routes (kind: Service, group: \"\")")
	}
	return out
}

func kindOf(group, kind string) string {
	if group == "" {
		return kind
	}
	return kind + "." + group
}

func backendRef(c *check, f string, b gatewayv1.BackendRef, ns string) model.RouteBackend {
	group, kind := "", "Service"
	if b.Group != nil {
		group = string(*b.Group)
	}
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	if group != "" && group != "core" || kind != "Service" {
		c.errorf(f, "backend %s %s is not supported: backendRefs must be Services", kindOf(group, kind), b.Name)
	}
	k := model.Key{Namespace: ns, Name: string(b.Name)}
	if b.Namespace != nil && *b.Namespace != "" && string(*b.Namespace) != ns {
		c.errorf(f+".namespace", "backend %s is in namespace %s: backends of another namespace need a ReferenceGrant, which Trellis does not support yet; use a service of namespace %s", b.Name, *b.Namespace, ns)
	}
	if !isDNSLabel(k.Name) {
		c.errorf(f+".name", "%q is not a valid service name: use at most 63 lower-case letters, digits and '-'", k.Name)
	}
	out := model.RouteBackend{Service: k, Weight: 1}
	if b.Port != nil {
		out.Port = int(*b.Port)
	}
	if b.Weight != nil {
		if *b.Weight < 0 || *b.Weight > 1000000 {
			c.errorf(f+".weight", "weight %d is out of range: use 0 to 1000000", *b.Weight)
		}
		out.Weight = int(*b.Weight)
	}
	return out
}

func httpMatch(c *check, f string, m gatewayv1.HTTPRouteMatch) model.RouteMatch {
	var out model.RouteMatch
	out.PathType, out.PathValue = model.MatchPathPrefix, "/"
	if p := m.Path; p != nil {
		if p.Type != nil {
			out.PathType = model.MatchType(*p.Type)
		}
		if p.Value != nil {
			out.PathValue = *p.Value
		}
		switch out.PathType {
		case model.MatchExact, model.MatchPathPrefix:
			if !strings.HasPrefix(out.PathValue, "/") {
				c.errorf(f+".path.value", "%q must start with /", out.PathValue)
			}
		case model.MatchRegex:
			checkRegex(c, f+".path.value", out.PathValue)
		default:
			c.errorf(f+".path.type", "%q is not a path match type: use Exact, PathPrefix or RegularExpression", out.PathType)
		}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
		if msg := checkMethod(out.Method); msg != "" || out.Method == "*" {
			c.errorf(f+".method", "%q is not an HTTP method: use one of %s", out.Method, strings.Join(httpMethods(), ", "))
		}
	}
	for i, h := range m.Headers {
		t := gatewayv1.HeaderMatchExact
		if h.Type != nil {
			t = *h.Type
		}
		out.Headers = append(out.Headers, valueMatch(c, fmt.Sprintf("%s.headers[%d]", f, i), string(h.Name), string(t), h.Value, true))
	}
	for i, q := range m.QueryParams {
		t := gatewayv1.QueryParamMatchExact
		if q.Type != nil {
			t = *q.Type
		}
		out.Query = append(out.Query, valueMatch(c, fmt.Sprintf("%s.queryParams[%d]", f, i), string(q.Name), string(t), q.Value, false))
	}
	return out
}

// grpcMatch maps a gRPC method match to the request path /service/method.
func grpcMatch(c *check, f string, m gatewayv1.GRPCRouteMatch) model.RouteMatch {
	var out model.RouteMatch
	out.Method = http.MethodPost
	if mm := m.Method; mm != nil {
		t := gatewayv1.GRPCMethodMatchExact
		if mm.Type != nil {
			t = *mm.Type
		}
		svc, meth := "", ""
		if mm.Service != nil {
			svc = *mm.Service
		}
		if mm.Method != nil {
			meth = *mm.Method
		}
		switch t {
		case gatewayv1.GRPCMethodMatchExact:
			switch {
			case svc == "" && meth == "":
				c.errorf(f+".method", "give service, method or both")
			case meth == "":
				out.PathType, out.PathValue = model.MatchPathPrefix, "/"+svc
			case svc == "":
				out.PathType, out.PathValue = model.MatchRegex, "/[^/]+/"+regexp.QuoteMeta(meth)
			default:
				out.PathType, out.PathValue = model.MatchExact, "/"+svc+"/"+meth
			}
		case gatewayv1.GRPCMethodMatchRegularExpression:
			s, me := svc, meth
			if s == "" {
				s = "[^/]+"
			}
			if me == "" {
				me = "[^/]+"
			}
			out.PathType, out.PathValue = model.MatchRegex, "/"+s+"/"+me
			checkRegex(c, f+".method", out.PathValue)
		default:
			c.errorf(f+".method.type", "%q is not a method match type: use Exact or RegularExpression", t)
		}
	}
	for i, h := range m.Headers {
		t := gatewayv1.GRPCHeaderMatchExact
		if h.Type != nil {
			t = *h.Type
		}
		out.Headers = append(out.Headers, valueMatch(c, fmt.Sprintf("%s.headers[%d]", f, i), string(h.Name), string(t), h.Value, true))
	}
	return out
}

func valueMatch(c *check, f, name, typ, value string, header bool) model.ValueMatch {
	if header {
		if !validHeaderName(name) {
			c.errorf(f+".name", "%q is not a valid header name", name)
		}
		name = strings.ToLower(name)
	} else if name == "" {
		c.errorf(f+".name", "is required: name the query parameter")
	}
	switch model.MatchType(typ) {
	case model.MatchExact:
	case model.MatchRegex:
		checkRegex(c, f+".value", value)
	default:
		c.errorf(f+".type", "%q is not a match type: use Exact or RegularExpression", typ)
	}
	return model.ValueMatch{Name: name, Type: model.MatchType(typ), Value: value}
}

func checkRegex(c *check, f, re string) {
	if _, err := regexp.Compile("^(?:" + re + ")$"); err != nil {
		c.errorf(f, "%q is not a valid regular expression (RE2 syntax): %v", re, err)
	}
}

func httpFilters(c *check, f string, fs []gatewayv1.HTTPRouteFilter, matches []model.RouteMatch) model.RouteFilters {
	var out model.RouteFilters
	seen := map[gatewayv1.HTTPRouteFilterType]int{}
	for i, fl := range fs {
		ff := fmt.Sprintf("%s[%d]", f, i)
		if j, dup := seen[fl.Type]; dup {
			c.errorf(ff+".type", "a second %s filter (also %s[%d]): merge them into one", fl.Type, f, j)
			continue
		}
		seen[fl.Type] = i
		switch fl.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			out.RequestHeaders = headerChanges(c, ff+".requestHeaderModifier", fl.RequestHeaderModifier, nil)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			out.ResponseHeaders = headerChanges(c, ff+".responseHeaderModifier", fl.ResponseHeaderModifier, nil)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			rr := fl.RequestRedirect
			if rr == nil {
				c.errorf(ff+".requestRedirect", "is required with type RequestRedirect")
				continue
			}
			rd := &model.Redirect{StatusCode: http.StatusFound}
			if rr.Scheme != nil {
				rd.Scheme = *rr.Scheme
				if rd.Scheme != "http" && rd.Scheme != "https" {
					c.errorf(ff+".requestRedirect.scheme", "%q: use http or https", rd.Scheme)
				}
			}
			if rr.Hostname != nil {
				rd.Hostname = string(*rr.Hostname)
			}
			if rr.Port != nil {
				rd.Port = int(*rr.Port)
			}
			if rr.StatusCode != nil {
				rd.StatusCode = *rr.StatusCode
				if rd.StatusCode != http.StatusMovedPermanently && rd.StatusCode != http.StatusFound {
					c.errorf(ff+".requestRedirect.statusCode", "%d: use 301 or 302", rd.StatusCode)
				}
			}
			rd.Path = pathChange(c, ff+".requestRedirect.path", rr.Path, matches)
			out.Redirect = rd
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rw := fl.URLRewrite
			if rw == nil {
				c.errorf(ff+".urlRewrite", "is required with type URLRewrite")
				continue
			}
			out.Rewrite = &model.Rewrite{Path: pathChange(c, ff+".urlRewrite.path", rw.Path, matches)}
			if rw.Hostname != nil {
				out.Rewrite.Hostname = string(*rw.Hostname)
			}
		default:
			c.errorf(ff+".type", "filter %q is not supported: use RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect or URLRewrite, or remove it", fl.Type)
		}
	}
	if out.Redirect != nil && out.Rewrite != nil {
		c.errorf(f, "RequestRedirect and URLRewrite cannot be used together: a redirected request is not forwarded")
	}
	return out
}

func pathChange(c *check, f string, p *gatewayv1.HTTPPathModifier, matches []model.RouteMatch) *model.PathChange {
	if p == nil {
		return nil
	}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil {
			c.errorf(f+".replaceFullPath", "is required with type ReplaceFullPath")
			return nil
		}
		return &model.PathChange{ReplaceFullPath: *p.ReplaceFullPath}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			c.errorf(f+".replacePrefixMatch", "is required with type ReplacePrefixMatch")
			return nil
		}
		for _, m := range matches {
			if m.PathType != model.MatchPathPrefix {
				c.errorf(f+".type", "ReplacePrefixMatch needs every match of the rule to be a PathPrefix path match")
				break
			}
		}
		if len(matches) == 0 {
			c.errorf(f+".type", "ReplacePrefixMatch needs a PathPrefix path match in the rule")
		}
		return &model.PathChange{ReplacePrefixMatch: *p.ReplacePrefixMatch, Prefix: true}
	}
	c.errorf(f+".type", "%q: use ReplaceFullPath or ReplacePrefixMatch", p.Type)
	return nil
}

func headerChanges(c *check, f string, h *gatewayv1.HTTPHeaderFilter, _ *model.HeaderChanges) *model.HeaderChanges {
	if h == nil {
		c.errorf(f, "is required with this filter type")
		return nil
	}
	out := &model.HeaderChanges{}
	for i, s := range h.Set {
		if !validHeaderName(string(s.Name)) {
			c.errorf(fmt.Sprintf("%s.set[%d].name", f, i), "%q is not a valid header name", s.Name)
		}
		out.Set = append(out.Set, model.Header{Name: string(s.Name), Value: s.Value})
	}
	for i, s := range h.Add {
		if !validHeaderName(string(s.Name)) {
			c.errorf(fmt.Sprintf("%s.add[%d].name", f, i), "%q is not a valid header name", s.Name)
		}
		out.Add = append(out.Add, model.Header{Name: string(s.Name), Value: s.Value})
	}
	for i, s := range h.Remove {
		if !validHeaderName(s) {
			c.errorf(fmt.Sprintf("%s.remove[%d]", f, i), "%q is not a valid header name", s)
		}
		out.Remove = append(out.Remove, s)
	}
	return out
}

func gatewayDuration(c *check, f string, d *gatewayv1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	s := string(*d)
	if !durationPattern.MatchString(s) {
		c.errorf(f, "%q is not a Gateway API duration: use numbers with h, m, s or ms, such as 10s or 1m30s", s)
		return 0
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		c.errorf(f, "%q: %v", s, err)
	}
	return v
}
