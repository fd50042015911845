package translate

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/trellis-mesh/trellis/api/osm"
)

// OSM's own CRDs require some fields of its policy kinds and hold a few to an
// enum or a range. The CRDs Trellis installs say the same
// (internal/manifests/schemas), so the API server refuses those objects; the
// checks here refuse them too, so that `trellis apply` and the validating
// webhook agree with the cluster. Trellis stores policies and does not
// enforce them yet, so nothing else of them is checked.

// node is a value of an object as decoded, with its field path.
type node struct {
	v    any
	path string
}

// get returns the field k of n and whether it is set (present, not null).
func (n node) get(k string) (node, bool) {
	m, _ := n.v.(map[string]any)
	v, ok := m[k]
	return node{v, join(n.path, k)}, ok && v != nil
}

// items returns the items of n's list field k.
func (n node) items(k string) []node {
	f, _ := n.get(k)
	l, _ := f.v.([]any)
	out := make([]node, len(l))
	for i, v := range l {
		out[i] = node{v, fmt.Sprintf("%s[%d]", f.path, i)}
	}
	return out
}

func (n node) str() string { s, _ := n.v.(string); return s }

func (n node) int() int64 {
	num, _ := n.v.(json.Number)
	i, _ := num.Int64()
	return i
}

// require reports field k of n when it is not set.
func (c *check) require(n node, k, fix string) {
	if _, ok := n.get(k); !ok {
		c.errorf(join(n.path, k), "is required: %s", fix)
	}
}

// enum reports field k of n when it is set to none of allowed.
func (c *check) enum(n node, k, what string, allowed ...string) {
	if f, ok := n.get(k); ok && !slices.Contains(allowed, f.str()) {
		c.errorf(f.path, "%s %q is not supported: use %s", what, f.str(), orList(allowed))
	}
}

// between reports field k of n when it is set outside [lo, hi].
func (c *check) between(n node, k string, lo, hi int64, fix string) {
	if f, ok := n.get(k); ok && (f.int() < lo || f.int() > hi) {
		c.errorf(f.path, "%d is not from %d to %d: %s", f.int(), lo, hi, fix)
	}
}

// nonEmpty reports field k of n when it is set to "".
func (c *check) nonEmpty(n node, k, fix string) {
	if f, ok := n.get(k); ok && f.str() == "" {
		c.errorf(f.path, "is empty: %s", fix)
	}
}

func orList(xs []string) string {
	if len(xs) == 1 {
		return xs[0]
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

// policyFields checks a policy object's required fields, enums and ranges.
func policyFields(c *check, kind string, obj map[string]any) {
	spec, ok := node{obj, ""}.get("spec")
	if !ok {
		c.errorf("spec", "is required: write the %s's spec", kind)
		return
	}
	switch kind {
	case osm.KindEgress:
		c.require(spec, "sources", "list the ServiceAccounts the policy lets out")
		c.require(spec, "ports", "list the ports they may reach, each with number and protocol")
		for _, s := range spec.items("sources") {
			c.require(s, "kind", "set it to ServiceAccount")
			c.enum(s, "kind", "kind", "ServiceAccount")
			c.require(s, "name", "name the ServiceAccount")
			c.require(s, "namespace", "give the ServiceAccount's namespace")
		}
		for _, p := range spec.items("ports") {
			portSpec(c, p)
		}
		matches(c, spec)
	case osm.KindIngressBackend:
		c.require(spec, "backends", "list the services that take the ingress traffic")
		c.require(spec, "sources", "list who may send it: a Service, an AuthenticatedPrincipal or an IPRange")
		for _, b := range spec.items("backends") {
			c.require(b, "name", "name the backend service")
			c.require(b, "port", "give the backend's port, with number and protocol")
			if p, ok := b.get("port"); ok {
				portSpec(c, p)
			}
			if t, ok := b.get("tls"); ok {
				c.require(t, "skipClientCertValidation", "say whether clients' certificates go unchecked: true or false")
			}
		}
		for _, s := range spec.items("sources") {
			c.require(s, "kind", "use Service, AuthenticatedPrincipal or IPRange")
			c.enum(s, "kind", "kind", "Service", "AuthenticatedPrincipal", "IPRange")
			c.require(s, "name", "name the source: a Service, a principal, or an IP range in CIDR form")
		}
		matches(c, spec)
	case osm.KindRetry:
		c.require(spec, "source", "give the ServiceAccount whose requests are retried: kind, name and namespace")
		c.require(spec, "destinations", "list the Services whose requests are retried")
		c.require(spec, "retryPolicy", "give retryOn, perTryTimeout, numRetries and retryBackoffBaseInterval")
		subjects := []node{}
		if s, ok := spec.get("source"); ok {
			subjects = append(subjects, s)
		}
		for _, s := range append(subjects, spec.items("destinations")...) {
			c.require(s, "kind", "give the kind: ServiceAccount for the source, Service for a destination")
			c.require(s, "name", "name it")
			c.require(s, "namespace", "give its namespace")
		}
		if p, ok := spec.get("retryPolicy"); ok {
			c.require(p, "retryOn", "list the conditions to retry on, such as 5xx")
			c.require(p, "perTryTimeout", "give a duration such as 1s")
			c.require(p, "numRetries", "give the most retries to make")
			c.require(p, "retryBackoffBaseInterval", "give a duration such as 25ms")
		}
	case osm.KindUpstreamTrafficSetting:
		c.require(spec, "host", "name the upstream host: a service FQDN, or a service of this namespace")
		if rl, ok := spec.get("rateLimit"); ok {
			if l, ok := rl.get("local"); ok {
				if t, ok := l.get("tcp"); ok {
					c.between(t, "connections", 1, math.MaxUint32, "allow at least 1 connection per unit")
					c.enum(t, "unit", "unit", "second", "minute", "hour")
				}
				if h, ok := l.get("http"); ok {
					httpRateLimit(c, h)
				}
			}
		}
		for _, r := range spec.items("httpRoutes") {
			c.nonEmpty(r, "path", "give the path, a regular expression")
			if rl, ok := r.get("rateLimit"); ok {
				if l, ok := rl.get("local"); ok {
					httpRateLimit(c, l)
				}
			}
		}
	}
}

// portSpec checks an Egress or IngressBackend port.
func portSpec(c *check, p node) {
	c.require(p, "number", "give the port number")
	c.between(p, "number", 1, 65535, "fix it")
	c.require(p, "protocol", "give the protocol, such as http")
}

// matches checks the object references of an Egress or IngressBackend.
func matches(c *check, spec node) {
	for _, m := range spec.items("matches") {
		for _, k := range []string{"apiGroup", "kind", "name"} {
			c.require(m, k, "name the object to match by apiGroup, kind and name, such as specs.smi-spec.io/v1alpha4 HTTPRouteGroup bookstore-routes")
		}
	}
}

// httpRateLimit checks a local HTTP rate limit, of the host or of a route.
func httpRateLimit(c *check, h node) {
	c.between(h, "requests", 1, math.MaxUint32, "allow at least 1 request per unit")
	c.enum(h, "unit", "unit", "second", "minute", "hour")
	c.between(h, "responseStatusCode", 400, 599, "answer limited requests with an error status, such as 429")
	for _, a := range h.items("responseHeadersToAdd") {
		for _, k := range []string{"name", "value"} {
			c.require(a, k, "give the header's name and value")
			c.nonEmpty(a, k, "give the header's name and value")
		}
	}
}
