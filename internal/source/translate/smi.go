package translate

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"

	"github.com/trellis-mesh/trellis/api/smi"
	"github.com/trellis-mesh/trellis/internal/model"
)

// maxTotalWeight bounds a TrafficSplit's weights: proxies take them as uint32.
const maxTotalWeight = math.MaxUint32

func trafficSplit(c *check, r Resource) model.TrafficSplit {
	var in smi.TrafficSplit
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.TrafficSplit{}
	}
	out := model.TrafficSplit{Key: keyOf(r), Service: splitRoot(c, in.Spec.Service, r.Namespace)}
	if len(in.Spec.Backends) == 0 {
		c.errorf("spec.backends", "at least one backend is required: list the services that share %s's traffic, with weights", out.Service)
		return out
	}
	seen := map[string]int{}
	var sum int64
	weightsOK := true
	for i, b := range in.Spec.Backends {
		f := fmt.Sprintf("spec.backends[%d]", i)
		switch {
		case b.Service == "":
			c.errorf(f+".service", "is required: name a service in namespace %s", r.Namespace)
		case strings.Contains(b.Service, "."):
			c.errorf(f+".service", "%q is not a service name: backends are services in the TrafficSplit's namespace (%s); give the name only", b.Service, r.Namespace)
		case !isDNSLabel(b.Service):
			c.errorf(f+".service", "%q is not a valid service name: use at most 63 lower-case letters, digits and '-'", b.Service)
		default:
			if j, dup := seen[b.Service]; dup {
				c.errorf(f+".service", "backend %q is listed twice (also spec.backends[%d]): merge them into one entry", b.Service, j)
				break
			}
			seen[b.Service] = i
			if b.Service == out.Service {
				c.warnf(f+".service", "backend %q is the root service itself: its share goes to every workload of %s, not split again; to send it to one version only, name that version's service", b.Service, out.Service)
			}
		}
		switch {
		case b.Weight < 0:
			c.errorf(f+".weight", "weight %d is negative: use 0 or more", b.Weight)
			weightsOK = false
		case int64(b.Weight) > maxTotalWeight:
			c.errorf(f+".weight", "weight %d is too large: weights must sum to at most %d; scale them down", b.Weight, int64(maxTotalWeight))
			weightsOK = false
		default:
			sum += int64(b.Weight)
		}
		out.Backends = append(out.Backends, model.WeightedBackend{Service: b.Service, Weight: b.Weight})
	}
	switch {
	case !weightsOK:
	case sum == 0:
		c.errorf("spec.backends", "weights sum to 0: give at least one backend a positive weight")
	case sum > maxTotalWeight:
		c.errorf("spec.backends", "weights sum to %d, more than %d: scale them down", sum, int64(maxTotalWeight))
	}
	return out
}

// splitRoot reads a TrafficSplit's root service, which may be "name",
// "name.namespace" or "name.namespace.svc[.cluster-domain]", and returns its name.
func splitRoot(c *check, s, ns string) string {
	const field = "spec.service"
	if s == "" {
		c.errorf(field, "is required: name the root service whose traffic is split")
		return ""
	}
	parts := strings.Split(strings.TrimSuffix(s, "."), ".")
	name, svcNS := parts[0], ns
	switch {
	case len(parts) == 1:
	case len(parts) == 2, parts[2] == "svc" && allLabels(parts[3:]):
		svcNS = parts[1]
	default:
		c.errorf(field, "%q is not a service name: use name, name.namespace or name.namespace.svc.cluster.local", s)
		return name
	}
	switch {
	case !isDNSLabel(name):
		c.errorf(field, "%q is not a valid service name: use at most 63 lower-case letters, digits and '-'", name)
	case svcNS != ns:
		c.errorf(field, "root service %s is in namespace %s, but a TrafficSplit must live in its root service's namespace: move it to namespace %s, or name a service of namespace %s", name, svcNS, svcNS, ns)
	}
	return name
}

func allLabels(ls []string) bool {
	for _, l := range ls {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

func trafficTarget(c *check, r Resource) model.TrafficTarget {
	var in smi.TrafficTarget
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.TrafficTarget{}
	}
	out := model.TrafficTarget{Key: keyOf(r)}
	out.Destination = identity(c, "spec.destination", in.Spec.Destination, r.Namespace)
	if d := in.Spec.Destination.Namespace; d != "" && d != r.Namespace {
		c.errorf("spec.destination.namespace", "TrafficTarget must live in its destination's namespace: move it to namespace %s", d)
	}
	if len(in.Spec.Sources) == 0 {
		c.errorf("spec.sources", "at least one source is required: list the ServiceAccounts allowed to call %s", out.Destination)
	}
	for i, s := range in.Spec.Sources {
		out.Sources = append(out.Sources, identity(c, fmt.Sprintf("spec.sources[%d]", i), s, r.Namespace))
	}
	if len(in.Spec.Rules) == 0 {
		c.errorf("spec.rules", "at least one rule is required: name an HTTPRouteGroup or a TCPRoute that says which traffic is allowed")
	}
	for i, rule := range in.Spec.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		kind := model.RuleKind(rule.Kind)
		switch kind {
		case model.RuleHTTPRouteGroup, model.RuleTCPRoute:
		case "":
			c.errorf(f+".kind", "is required: use HTTPRouteGroup or TCPRoute")
		default:
			c.errorf(f+".kind", "kind %q is not supported: use HTTPRouteGroup or TCPRoute", rule.Kind)
		}
		switch {
		case rule.Name == "":
			c.errorf(f+".name", "is required: name the %s in namespace %s", ruleKindOr(kind), r.Namespace)
		case !isDNSSubdomain(rule.Name):
			c.errorf(f+".name", "%q is not a valid name: the %s must be in namespace %s; give its name only", rule.Name, ruleKindOr(kind), r.Namespace)
		}
		var matches []string
		for j, m := range rule.Matches {
			if m == "" {
				c.errorf(fmt.Sprintf("%s.matches[%d]", f, j), "is empty: name a match of the HTTPRouteGroup, or remove the entry")
			}
		}
		switch {
		case kind == model.RuleTCPRoute && len(rule.Matches) > 0:
			c.warnf(f+".matches", "matches apply to HTTPRouteGroup rules only and are ignored for a TCPRoute: remove them")
		case len(rule.Matches) > 0:
			matches = slices.Clone(rule.Matches)
		}
		out.Rules = append(out.Rules, model.TrafficRule{Kind: kind, Name: rule.Name, Matches: matches})
	}
	return out
}

func ruleKindOr(k model.RuleKind) string {
	if k == model.RuleHTTPRouteGroup || k == model.RuleTCPRoute {
		return string(k)
	}
	return "route"
}

// identity reads a TrafficTarget subject: a ServiceAccount, in namespace ns
// unless it names one.
func identity(c *check, field string, s smi.IdentityBindingSubject, ns string) model.Identity {
	switch s.Kind {
	case smi.KindServiceAccount:
	case "":
		c.errorf(field+".kind", "is required: set it to ServiceAccount")
	default:
		c.errorf(field+".kind", "kind %q is not supported: identities are ServiceAccounts; set kind: ServiceAccount", s.Kind)
	}
	switch {
	case s.Name == "":
		c.errorf(field+".name", "is required: name the ServiceAccount")
	case !isDNSSubdomain(s.Name):
		c.errorf(field+".name", "%q is not a valid ServiceAccount name: use lower-case letters, digits, '-' and '.'", s.Name)
	}
	if s.Namespace != "" {
		if !isDNSLabel(s.Namespace) {
			c.errorf(field+".namespace", "%q is not a valid namespace: use at most 63 lower-case letters, digits and '-'", s.Namespace)
		}
		ns = s.Namespace
	}
	return model.Identity{Namespace: ns, Account: s.Name}
}

// httpMethods are the methods an HTTPRouteGroup match may name, besides "*".
func httpMethods() []string {
	return []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
}

func httpRouteGroup(c *check, r Resource) model.HTTPRouteGroup {
	var in smi.HTTPRouteGroup
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.HTTPRouteGroup{}
	}
	out := model.HTTPRouteGroup{Key: keyOf(r)}
	if len(in.Spec.Matches) == 0 {
		c.errorf("spec.matches", "at least one match is required: add a named match (an empty one matches every request)")
	}
	names := map[string]int{}
	for i, m := range in.Spec.Matches {
		f := fmt.Sprintf("spec.matches[%d]", i)
		if m.Name == "" {
			c.errorf(f+".name", "is required: TrafficTarget rules refer to matches by name")
		} else if j, dup := names[m.Name]; dup {
			c.errorf(f+".name", "match name %q is used twice (also spec.matches[%d]): give each match its own name", m.Name, j)
		} else {
			names[m.Name] = i
		}
		if m.PathRegex != "" {
			if _, err := regexp.Compile(m.PathRegex); err != nil {
				c.errorf(f+".pathRegex", "%q is not a valid regular expression (%v): fix it", m.PathRegex, err)
			}
		}
		for j, meth := range m.Methods {
			if msg := checkMethod(meth); msg != "" {
				c.errorf(fmt.Sprintf("%s.methods[%d]", f, j), "%s", msg)
			}
		}
		out.Matches = append(out.Matches, model.HTTPMatch{
			Name:      m.Name,
			PathRegex: m.PathRegex,
			Methods:   slices.Clone(m.Methods),
			Headers:   headers(c, f+".headers", m.Headers),
		})
	}
	return out
}

func checkMethod(m string) string {
	known := httpMethods()
	switch {
	case m == "*" || slices.Contains(known, m):
		return ""
	case slices.Contains(known, strings.ToUpper(m)):
		return fmt.Sprintf("method %q must be upper case: use %q", m, strings.ToUpper(m))
	}
	return fmt.Sprintf("%q is not an HTTP method: use one of %s, or \"*\" for any", m, strings.Join(known, ", "))
}

// headers merges an HTTPRouteGroup match's list of single-key maps into one map
// from lower-case header name to value regex.
func headers(c *check, field string, hs []map[string]string) map[string]string {
	if len(hs) == 0 {
		return nil
	}
	out := map[string]string{}
	where := map[string]string{}
	for i, h := range hs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if len(h) != 1 {
			c.errorf(f, "has %d header names: write each header as its own list entry, `- header-name: value-regex`", len(h))
		}
		keys := make([]string, 0, len(h))
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, name := range keys {
			value := h[name]
			vf := fmt.Sprintf("%s[%q]", f, name)
			lower := strings.ToLower(name)
			if !validHeaderName(name) {
				c.errorf(vf, "%q is not a valid header name: use letters, digits and -!#$%%&'*+.^_`|~", name)
				continue
			}
			if prev, dup := where[lower]; dup {
				c.errorf(vf, "header %q is matched twice (also %s): header names ignore case; merge the two into one regex", name, prev)
				continue
			}
			where[lower] = f
			if _, err := regexp.Compile(value); err != nil {
				c.errorf(vf, "%q is not a valid regular expression (%v): fix it", value, err)
			}
			out[lower] = value
		}
	}
	return out
}

// validHeaderName reports whether s is an HTTP field name (an RFC 9110 token),
// optionally an HTTP/2 pseudo-header such as ":authority".
func validHeaderName(s string) bool {
	s = strings.TrimPrefix(s, ":")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func tcpRoute(c *check, r Resource) model.TCPRoute {
	var in smi.TCPRoute
	if _, ok := decodeStrict(c, r, &in); !ok {
		return model.TCPRoute{}
	}
	out := model.TCPRoute{Key: keyOf(r)}
	for i, p := range in.Spec.Matches.Ports {
		if p < 1 || p > 65535 {
			c.errorf(fmt.Sprintf("spec.matches.ports[%d]", i), "port %d is not from 1 to 65535: fix it", p)
		}
	}
	if len(in.Spec.Matches.Ports) > 0 {
		out.Ports = slices.Clone(in.Spec.Matches.Ports)
	}
	return out
}
