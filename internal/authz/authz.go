// Package authz decides whether a caller may make a request under a workload's
// inbound policy (the InboundConfig compiled from SMI TrafficTargets and route
// groups), and says which policy and rule decided. The sidecar enforces with it;
// the control plane explains with it (`trellis policy check`), so both always
// agree. It is lean: the standard library and the wire types only.
package authz

import (
	"fmt"
	"net/http"
	"regexp"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
)

// Policy is an InboundConfig compiled for the hot path: regular expressions built
// once per config version. It is immutable and safe for concurrent use.
type Policy struct {
	msg   *proxyv1.InboundConfig
	authz []authorization
}

type authorization struct {
	name    string
	sources map[string]bool
	http    []httpRule
	tcp     []*proxyv1.TCPRule
}

type httpRule struct {
	name    string
	path    *regexp.Regexp // nil: any
	methods map[string]bool
	headers []headerRule
}

type headerRule struct {
	name  string
	value *regexp.Regexp
}

// anchored compiles re so that it must match the whole input, as SMI and
// Envoy's safe_regex do.
func anchored(re string) (*regexp.Regexp, error) { return regexp.Compile("^(?:" + re + ")$") }

// Compile builds the policy of m; an invalid regular expression is an error and
// the caller keeps its previous policy.
func Compile(m *proxyv1.InboundConfig) (*Policy, error) {
	p := &Policy{msg: m}
	for _, a := range m.GetAuthorizations() {
		ca := authorization{name: a.GetName(), sources: map[string]bool{}, tcp: a.GetTcp()}
		for _, s := range a.GetSources() {
			ca.sources[s] = true
		}
		for _, h := range a.GetHttp() {
			r := httpRule{name: h.GetName()}
			if h.GetPathRegex() != "" {
				re, err := anchored(h.GetPathRegex())
				if err != nil {
					return nil, fmt.Errorf("%s: path regex: %w", h.GetName(), err)
				}
				r.path = re
			}
			for _, m := range h.GetMethods() {
				if m == "*" {
					r.methods = nil
					break
				}
				if r.methods == nil {
					r.methods = map[string]bool{}
				}
				r.methods[m] = true
			}
			for name, v := range h.GetHeaders() {
				re, err := anchored(v)
				if err != nil {
					return nil, fmt.Errorf("%s: header %s: %w", h.GetName(), name, err)
				}
				r.headers = append(r.headers, headerRule{name: http.CanonicalHeaderKey(name), value: re})
			}
			ca.http = append(ca.http, r)
		}
		p.authz = append(p.authz, ca)
	}
	return p, nil
}

// Config returns the InboundConfig the policy was compiled from.
func (p *Policy) Config() *proxyv1.InboundConfig { return p.msg }

// Decision is the outcome of a check.
type Decision struct {
	Allowed bool
	// Authorization names the policy that allowed ("TrafficTarget ns/name"), or
	// "permissive"; empty when denied.
	Authorization string
	// Rule names the route rule that matched ("HTTPRouteGroup ns/name#match"), or
	// "permissive"; empty when denied.
	Rule string
}

var permissive = Decision{Allowed: true, Authorization: "permissive", Rule: "permissive"}

// AllowHTTP decides a request from source, a SPIFFE ID.
func (p *Policy) AllowHTTP(source string, r *http.Request) Decision {
	if p.msg.GetPermissive() {
		return permissive
	}
	for i := range p.authz {
		a := &p.authz[i]
		if !a.sources[source] {
			continue
		}
		for j := range a.http {
			if a.http[j].match(r) {
				return Decision{Allowed: true, Authorization: a.name, Rule: a.http[j].name}
			}
		}
	}
	return Decision{}
}

func (h *httpRule) match(r *http.Request) bool {
	if h.methods != nil && !h.methods[r.Method] {
		return false
	}
	if h.path != nil && !h.path.MatchString(r.URL.Path) {
		return false
	}
	for _, hr := range h.headers {
		vals := r.Header.Values(hr.name)
		if hr.name == "Host" {
			vals = []string{r.Host}
		}
		matched := false
		for _, v := range vals {
			if hr.value.MatchString(v) {
				matched = true
				break
			}
		}
		if !matched {
			return false
		}
	}
	return true
}

// AllowTCP decides an opaque TCP connection from source to port.
func (p *Policy) AllowTCP(source string, port int) Decision {
	if p.msg.GetPermissive() {
		return permissive
	}
	for i := range p.authz {
		a := &p.authz[i]
		if !a.sources[source] {
			continue
		}
		for _, t := range a.tcp {
			if len(t.GetPorts()) == 0 {
				return Decision{Allowed: true, Authorization: a.name, Rule: t.GetName()}
			}
			for _, tp := range t.GetPorts() {
				if int(tp) == port {
					return Decision{Allowed: true, Authorization: a.name, Rule: t.GetName()}
				}
			}
		}
	}
	return Decision{}
}
