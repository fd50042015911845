// Package compile turns a model snapshot into the configs sidecars receive: one
// DestinationConfig per destination authority and one InboundConfig per workload.
// Every function here is pure: the same snapshot gives the same bytes, and every
// default is spelled out in the output so that `trellis proxy config` can show it.
// It imports the model and the wire types, never a source.
package compile

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/model"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Defaults every compiled backend carries unless a policy says otherwise. They are
// written into the config, never implied.
const (
	DefaultConnectTimeout = 5 * time.Second  // as OSM's UpstreamTrafficSetting
	DefaultRequestTimeout = 0 * time.Second  // no limit: no silent 15 s cut-off
	DefaultIdleTimeout    = 60 * time.Second // idle pooled connection lifetime
)

// clusterSuffix is stripped from fully qualified service names.
const clusterSuffix = ".svc.cluster.local"

// Target is a resolved destination: a service and a port, or a virtual
// address and a port (what a transparently captured connection was going
// to), which each snapshot resolves to the service that holds the address.
type Target struct {
	Service model.Key
	Addr    netip.Addr // set instead of Service for an address
	Port    int
}

// String is the canonical authority, "name.namespace:port", or "ip:port".
func (t Target) String() string {
	if t.Addr.IsValid() {
		return netip.AddrPortFrom(t.Addr, uint16(t.Port)).String()
	}
	return t.Service.Name + "." + t.Service.Namespace + ":" + strconv.Itoa(t.Port)
}

// ParseAuthority resolves what an app called ("bookstore.bookstore:14001",
// "bookstore.bookstore.svc.cluster.local:14001", or "bookstore:14001" in the
// caller's namespace) into a Target. A missing port means 80.
func ParseAuthority(authority, callerNamespace string) (Target, error) {
	host, portStr := authority, "80"
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		host, portStr = authority[:i], authority[i+1:]
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return Target{}, fmt.Errorf("authority %q: port %q is not a number from 1 to 65535", authority, portStr)
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		if a.Zone() != "" {
			return Target{}, fmt.Errorf("authority %q: an address with a zone is no service's", authority)
		}
		return Target{Addr: a.Unmap(), Port: port}, nil
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	host = strings.TrimSuffix(host, clusterSuffix)
	host = strings.TrimSuffix(host, ".svc")
	name, ns, found := strings.Cut(host, ".")
	if !found {
		ns = callerNamespace
	}
	if !dnsLabel(name) || !dnsLabel(ns) {
		return Target{}, fmt.Errorf("authority %q: want service.namespace[:port], each a DNS label", authority)
	}
	return Target{Service: model.Key{Namespace: ns, Name: name}, Port: port}, nil
}

// dnsLabel says whether s can name a service or a namespace: an RFC 1123
// label, as Kubernetes requires of both (lower case by now).
func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Destination compiles the config for target t. The result does not depend on who
// asks, so callers compile once per snapshot and share it.
func Destination(s *model.Snapshot, t Target) *proxyv1.DestinationConfig {
	dc := &proxyv1.DestinationConfig{Authority: t.String(), Port: int32(t.Port)}
	if t.Addr.IsValid() {
		svc, ok := s.ServiceAt(t.Addr)
		if !ok {
			dc.Reason = fmt.Sprintf("no service in the mesh has address %s", t.Addr)
			return seal(dc)
		}
		t = Target{Service: svc.Key, Port: t.Port} // the authority stays the address
	}
	svc, ok := s.Service(t.Service)
	if !ok {
		dc.Reason = fmt.Sprintf("no service %s.%s in the mesh", t.Service.Name, t.Service.Namespace)
		return seal(dc)
	}
	sp, ok := svc.Port(t.Port)
	if !ok {
		ports := make([]string, len(svc.Ports))
		for i, p := range svc.Ports {
			ports[i] = strconv.Itoa(p.Port)
		}
		dc.Reason = fmt.Sprintf("service %s.%s has no port %d; it has %s", t.Service.Name, t.Service.Namespace, t.Port, strings.Join(ports, ", "))
		return seal(dc)
	}
	dc.Found = true
	dc.Service = t.Service.Name + "." + t.Service.Namespace
	dc.Protocol = string(sp.Protocol)

	var refs []backendRef
	if routes := s.RoutesFor(t.Service, t.Port); len(routes) > 0 {
		var sources []string
		for _, r := range routes {
			sources = append(sources, string(r.Kind)+" "+r.Key.String())
		}
		dc.Source = strings.Join(sources, ", ")
		dc.Routes, refs = gatewayRoutes(routes, t)
	} else {
		route := &proxyv1.Route{Name: "default"}
		refs = []backendRef{{t.Service, t.Port}}
		dc.Source = "Service " + t.Service.String()
		if split, ok := s.Split(t.Service); ok {
			dc.Source = "TrafficSplit " + split.Key.String()
			refs = refs[:0]
			for _, b := range split.Backends {
				ref := backendRef{model.Key{Namespace: t.Service.Namespace, Name: b.Service}, t.Port}
				refs = append(refs, ref)
				route.Backends = append(route.Backends, &proxyv1.WeightedBackend{Backend: ref.name(t.Port), Weight: uint32(b.Weight)})
			}
		} else {
			route.Backends = []*proxyv1.WeightedBackend{{Backend: dc.Service, Weight: 1}}
		}
		dc.Routes = []*proxyv1.Route{route}
	}

	seen := map[backendRef]bool{}
	for _, ref := range refs {
		if seen[ref] {
			continue
		}
		seen[ref] = true
		b := backend(s, ref.service, ref.port)
		b.Name = ref.name(t.Port)
		dc.Backends = append(dc.Backends, b)
	}
	sort.Slice(dc.Backends, func(i, j int) bool { return dc.Backends[i].Name < dc.Backends[j].Name })
	return seal(dc)
}

// backendRef is a backend service on a port.
type backendRef struct {
	service model.Key
	port    int
}

// name is how routes refer to the backend: "name.namespace", with ":port" when
// the port is not the one the caller called.
func (b backendRef) name(called int) string {
	n := b.service.Name + "." + b.service.Namespace
	if b.port != called {
		n += ":" + strconv.Itoa(b.port)
	}
	return n
}

func backend(s *model.Snapshot, k model.Key, port int) *proxyv1.Backend {
	mesh := s.Mesh()
	b := &proxyv1.Backend{
		Name:     k.Name + "." + k.Namespace,
		Balancer: proxyv1.Balancer_BALANCER_P2C_PEAK_EWMA,
		Timeouts: &proxyv1.Timeouts{
			Connect: durationpb.New(DefaultConnectTimeout),
			Request: durationpb.New(DefaultRequestTimeout),
			Idle:    durationpb.New(DefaultIdleTimeout),
		},
		Open: mesh.Permissive,
	}
	allowed := map[string]bool{}
	identities := map[model.Identity]bool{}
	for _, w := range s.Endpoints(k, port) {
		b.Endpoints = append(b.Endpoints, &proxyv1.Endpoint{
			Address:   w.Address,
			Identity:  w.Identity.SPIFFE(mesh.TrustDomain),
			Workload:  w.Name,
			Namespace: w.Identity.Namespace,
		})
		identities[w.Identity] = true
	}
	sort.Slice(b.Endpoints, func(i, j int) bool { return b.Endpoints[i].Address < b.Endpoints[j].Address })
	if !mesh.Permissive {
		for id := range identities {
			for _, t := range s.TargetsFor(id) {
				for _, src := range t.Sources {
					allowed[src.SPIFFE(mesh.TrustDomain)] = true
				}
			}
		}
		for id := range allowed {
			b.AllowedSources = append(b.AllowedSources, id)
		}
		sort.Strings(b.AllowedSources)
	}
	return b
}

// Inbound compiles the inbound policy of workload id.
func Inbound(s *model.Snapshot, id string) (*proxyv1.InboundConfig, error) {
	w, ok := s.Workload(id)
	if !ok {
		return nil, fmt.Errorf("workload %q is not registered", id)
	}
	mesh := s.Mesh()
	ic := &proxyv1.InboundConfig{
		Identity:    w.Identity.SPIFFE(mesh.TrustDomain),
		TrustDomain: mesh.TrustDomain,
		Permissive:  mesh.Permissive,
		Egress:      mesh.Egress,
		LogLevel:    mesh.SidecarLogLevel,
		Workload:    w.Name,
		Namespace:   w.Identity.Namespace,
	}
	for _, t := range s.TargetsFor(w.Identity) {
		a := &proxyv1.Authorization{Name: "TrafficTarget " + t.Key.String()}
		for _, src := range t.Sources {
			a.Sources = append(a.Sources, src.SPIFFE(mesh.TrustDomain))
		}
		sort.Strings(a.Sources)
		for _, r := range t.Rules {
			k := model.Key{Namespace: t.Key.Namespace, Name: r.Name}
			switch r.Kind {
			case model.RuleHTTPRouteGroup:
				g, ok := s.RouteGroup(k)
				if !ok {
					continue // reported by the model; allows nothing
				}
				for _, m := range g.Matches {
					if len(r.Matches) > 0 && !contains(r.Matches, m.Name) {
						continue
					}
					hr := &proxyv1.HTTPRule{
						Name:      "HTTPRouteGroup " + k.String() + "#" + m.Name,
						PathRegex: m.PathRegex,
						Methods:   append([]string(nil), m.Methods...),
					}
					if len(m.Headers) > 0 {
						hr.Headers = map[string]string{}
						for h, v := range m.Headers {
							hr.Headers[strings.ToLower(h)] = v
						}
					}
					a.Http = append(a.Http, hr)
				}
			case model.RuleTCPRoute:
				tr, ok := s.TCPRoute(k)
				if !ok {
					continue
				}
				rule := &proxyv1.TCPRule{Name: "TCPRoute " + k.String()}
				for _, p := range tr.Ports {
					rule.Ports = append(rule.Ports, uint32(p))
				}
				a.Tcp = append(a.Tcp, rule)
			}
		}
		ic.Authorizations = append(ic.Authorizations, a)
	}
	ic.Version = version(ic)
	return ic, nil
}

func contains(ss []string, s string) bool {
	for _, v := range ss {
		if v == s {
			return true
		}
	}
	return false
}

func seal(dc *proxyv1.DestinationConfig) *proxyv1.DestinationConfig {
	dc.Version = version(dc)
	return dc
}

// version hashes a message deterministically; the version field must be empty.
func version(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("compile: config does not marshal: " + err.Error()) // built from plain values above
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
