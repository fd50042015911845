package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
)

// LocalVirtualAddresses is the range local mode assigns service addresses
// from: 198.18.0.0/16, half of the block set aside for benchmarking networks
// (RFC 2544) and never routed on the internet; the other half holds the
// addresses of workloads in network namespaces of their own (package netns).
var LocalVirtualAddresses = netip.MustParsePrefix("198.18.0.0/16")

// Inputs is everything a snapshot is built from. Sources fill it; Build validates
// it and freezes it.
type Inputs struct {
	Mesh        *MeshSettings // nil: DefaultMeshSettings
	Services    []Service     // declared services; more are derived from workloads
	Workloads   []Workload
	Splits      []TrafficSplit
	Targets     []TrafficTarget
	RouteGroups []HTTPRouteGroup
	TCPRoutes   []TCPRoute
	Routes      []Route // Gateway API HTTPRoute and GRPCRoute
	// VirtualAddresses, when valid, is the range from which services without
	// an address get one (local mode); see assignAddresses.
	VirtualAddresses netip.Prefix
}

// Snapshot is an immutable, validated view of the mesh. Its accessors return
// shared values that callers must not modify.
type Snapshot struct {
	hash        string
	mesh        MeshSettings
	services    map[Key]*Service
	workloads   []*Workload
	members     map[Key][]*Workload   // workloads by service, in workloads' order
	splits      map[Key]*TrafficSplit // by root service
	targets     map[Identity][]*TrafficTarget
	routeGroups map[Key]*HTTPRouteGroup
	tcpRoutes   map[Key]*TCPRoute
	routes      []*Route         // in precedence order: oldest, then namespace/name
	routesFor   map[Key][]*Route // by parent service
	byAddress   map[netip.Addr]*Service
	problems    []Problem
}

// canonical is the hashed form of a snapshot: every slice sorted.
type canonical struct {
	Mesh        MeshSettings
	Services    []*Service
	Workloads   []*Workload
	Splits      []*TrafficSplit
	Targets     []*TrafficTarget
	RouteGroups []*HTTPRouteGroup
	TCPRoutes   []*TCPRoute
	Routes      []*Route
}

// Build validates in and returns the snapshot. Objects with problems that make
// them unusable are left out and reported; they never break the snapshot.
func Build(in Inputs) *Snapshot {
	s := &Snapshot{
		mesh:        DefaultMeshSettings(),
		services:    map[Key]*Service{},
		splits:      map[Key]*TrafficSplit{},
		targets:     map[Identity][]*TrafficTarget{},
		routeGroups: map[Key]*HTTPRouteGroup{},
		tcpRoutes:   map[Key]*TCPRoute{},
		routesFor:   map[Key][]*Route{},
	}
	if in.Mesh != nil {
		s.mesh = *in.Mesh
		if s.mesh.TrustDomain == "" {
			s.mesh.TrustDomain = DefaultTrustDomain
		}
	}
	for i := range in.Services {
		svc := in.Services[i]
		s.addService(svc.Key, svc.Addresses, svc.Ports...)
	}
	for i := range in.Workloads {
		w := in.Workloads[i]
		w.Services = append([]ServiceMembership(nil), w.Services...)
		sort.Slice(w.Services, func(a, b int) bool { return w.Services[a].Service < w.Services[b].Service })
		for _, m := range w.Services {
			s.addService(Key{w.Identity.Namespace, m.Service}, nil, ServicePort{Port: m.ServicePort, Protocol: m.Protocol})
		}
		s.workloads = append(s.workloads, &w)
	}
	sort.Slice(s.workloads, func(a, b int) bool { return s.workloads[a].ID < s.workloads[b].ID })
	s.members = map[Key][]*Workload{}
	for _, w := range s.workloads {
		for i, m := range w.Services {
			if i > 0 && w.Services[i-1].Service == m.Service {
				continue // one service on several ports: listed once
			}
			k := Key{w.Identity.Namespace, m.Service}
			s.members[k] = append(s.members[k], w)
		}
	}

	s.indexAddresses(in.VirtualAddresses)

	for i := range in.RouteGroups {
		g := in.RouteGroups[i]
		s.routeGroups[g.Key] = &g
	}
	for i := range in.TCPRoutes {
		r := in.TCPRoutes[i]
		s.tcpRoutes[r.Key] = &r
	}
	splits := append([]TrafficSplit(nil), in.Splits...)
	sort.Slice(splits, func(a, b int) bool { return splits[a].Key.String() < splits[b].Key.String() })
	for i := range splits {
		sp := splits[i]
		s.addSplit(&sp)
	}
	for i := range in.Targets {
		t := in.Targets[i]
		s.addTarget(&t)
	}
	s.addRoutes(in.Routes)
	for id := range s.targets {
		ts := s.targets[id]
		sort.Slice(ts, func(a, b int) bool { return ts[a].Key.String() < ts[b].Key.String() })
	}
	s.hash = s.computeHash()
	return s
}

func (s *Snapshot) problem(obj, field, format string, args ...any) {
	s.problems = append(s.problems, Problem{Object: obj, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (s *Snapshot) warn(obj, field, format string, args ...any) {
	s.problems = append(s.problems, Problem{Object: obj, Field: field, Message: fmt.Sprintf(format, args...), Warning: true})
}

func (s *Snapshot) addService(k Key, addrs []netip.Addr, ports ...ServicePort) {
	svc := s.services[k]
	if svc == nil {
		svc = &Service{Key: k}
		s.services[k] = svc
	}
	if len(addrs) > 0 {
		svc.Addresses = append(svc.Addresses, addrs...)
	}
	for _, p := range ports {
		if p.Protocol == "" {
			p.Protocol = ProtocolHTTP
		}
		if have, ok := svc.Port(p.Port); ok {
			if have.Protocol != p.Protocol {
				s.problem("Service "+k.String(), fmt.Sprintf("ports[%d]", p.Port),
					"workloads disagree on the protocol (%s and %s); keeping %s: register every workload with the same protocol",
					have.Protocol, p.Protocol, have.Protocol)
			}
			continue
		}
		svc.Ports = append(svc.Ports, p)
	}
	sort.Slice(svc.Ports, func(a, b int) bool { return svc.Ports[a].Port < svc.Ports[b].Port })
}

func (s *Snapshot) addSplit(sp *TrafficSplit) {
	obj := "TrafficSplit " + sp.Key.String()
	root := Key{sp.Key.Namespace, sp.Service}
	if prev, ok := s.splits[root]; ok {
		s.problem(obj, "spec.service", "TrafficSplit %s already splits service %s; this one is ignored: merge them into one", prev.Key, root)
		return
	}
	if _, ok := s.services[root]; !ok {
		s.problem(obj, "spec.service", "root service %q is not a service in namespace %s (no workload is registered for it); start its workloads or fix spec.service", sp.Service, sp.Key.Namespace)
	}
	for i, b := range sp.Backends {
		if _, ok := s.services[Key{sp.Key.Namespace, b.Service}]; !ok {
			s.problem(obj, fmt.Sprintf("spec.backends[%d].service", i),
				"backend %q is not a service in namespace %s (no workload is registered for it); its share goes to the other backends until it has one: start its workloads or remove the backend", b.Service, sp.Key.Namespace)
		}
	}
	s.splits[root] = sp
}

func (s *Snapshot) addTarget(t *TrafficTarget) {
	obj := "TrafficTarget " + t.Key.String()
	for i, r := range t.Rules {
		k := Key{t.Key.Namespace, r.Name}
		switch r.Kind {
		case RuleHTTPRouteGroup:
			g, ok := s.routeGroups[k]
			if !ok {
				s.problem(obj, fmt.Sprintf("spec.rules[%d]", i), "HTTPRouteGroup %s does not exist; the rule allows nothing until it does", k)
				continue
			}
			for _, m := range r.Matches {
				if !g.hasMatch(m) {
					s.problem(obj, fmt.Sprintf("spec.rules[%d].matches", i), "HTTPRouteGroup %s has no match named %q", k, m)
				}
			}
		case RuleTCPRoute:
			if _, ok := s.tcpRoutes[k]; !ok {
				s.problem(obj, fmt.Sprintf("spec.rules[%d]", i), "TCPRoute %s does not exist; the rule allows nothing until it does", k)
			}
		}
	}
	s.targets[t.Destination] = append(s.targets[t.Destination], t)
}

func (g *HTTPRouteGroup) hasMatch(name string) bool {
	for _, m := range g.Matches {
		if m.Name == name {
			return true
		}
	}
	return false
}

func (s *Snapshot) computeHash() string {
	c := canonical{Mesh: s.mesh, Workloads: s.workloads}
	for _, v := range s.services {
		c.Services = append(c.Services, v)
	}
	sort.Slice(c.Services, func(a, b int) bool { return c.Services[a].Key.String() < c.Services[b].Key.String() })
	for _, v := range s.splits {
		c.Splits = append(c.Splits, v)
	}
	sort.Slice(c.Splits, func(a, b int) bool { return c.Splits[a].Key.String() < c.Splits[b].Key.String() })
	for _, ts := range s.targets {
		c.Targets = append(c.Targets, ts...)
	}
	sort.Slice(c.Targets, func(a, b int) bool { return c.Targets[a].Key.String() < c.Targets[b].Key.String() })
	for _, v := range s.routeGroups {
		c.RouteGroups = append(c.RouteGroups, v)
	}
	sort.Slice(c.RouteGroups, func(a, b int) bool { return c.RouteGroups[a].Key.String() < c.RouteGroups[b].Key.String() })
	for _, v := range s.tcpRoutes {
		c.TCPRoutes = append(c.TCPRoutes, v)
	}
	sort.Slice(c.TCPRoutes, func(a, b int) bool { return c.TCPRoutes[a].Key.String() < c.TCPRoutes[b].Key.String() })
	c.Routes = s.routes
	b, err := json.Marshal(c)
	if err != nil {
		panic("model: snapshot does not marshal: " + err.Error()) // all fields are plain data
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Hash is the snapshot's content hash: equal content, equal hash.
func (s *Snapshot) Hash() string { return s.hash }

// Mesh returns the mesh-wide settings.
func (s *Snapshot) Mesh() MeshSettings { return s.mesh }

// Service returns the service named k.
func (s *Snapshot) Service(k Key) (*Service, bool) {
	v, ok := s.services[k]
	return v, ok
}

// ServiceAt returns the service whose virtual address is a.
func (s *Snapshot) ServiceAt(a netip.Addr) (*Service, bool) {
	v, ok := s.byAddress[a.Unmap()]
	return v, ok
}

// indexAddresses gives services without an address one from pool (when
// valid), then indexes every address. An address two services claim goes to
// neither, with a problem on each.
//
// An assigned address is a hash of the service's key, probed forward past
// taken ones, in key order: a service keeps its address as others come and
// go unless two keys hash to the same address, which is rare in a /16.
func (s *Snapshot) indexAddresses(pool netip.Prefix) {
	s.byAddress = map[netip.Addr]*Service{}
	claimed := map[netip.Addr][]*Service{}
	keys := make([]Key, 0, len(s.services))
	for k, svc := range s.services {
		keys = append(keys, k)
		sort.Slice(svc.Addresses, func(a, b int) bool { return svc.Addresses[a].Less(svc.Addresses[b]) })
		svc.Addresses = slices.Compact(svc.Addresses)
		for _, a := range svc.Addresses {
			claimed[a] = append(claimed[a], svc)
		}
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a].String() < keys[b].String() })
	if pool.IsValid() && pool.Addr().Is4() && pool.Bits() <= 30 {
		pool = pool.Masked()
		size := uint32(1) << (32 - pool.Bits())
		base := pool.Addr().As4()
		b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		for _, k := range keys {
			svc := s.services[k]
			if len(svc.Addresses) > 0 {
				continue
			}
			h := fnv.New32a()
			h.Write([]byte(k.String()))
			off := h.Sum32() % size
			for range size {
				if off != 0 && off != size-1 { // not the network or broadcast address
					v := b + off
					a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
					if len(claimed[a]) == 0 {
						svc.Addresses = []netip.Addr{a}
						claimed[a] = []*Service{svc}
						break
					}
				}
				off = (off + 1) % size
			}
		}
	}
	addrs := make([]netip.Addr, 0, len(claimed))
	for a := range claimed {
		addrs = append(addrs, a)
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	for _, a := range addrs {
		svcs := claimed[a]
		if len(svcs) == 1 {
			s.byAddress[a] = svcs[0]
			continue
		}
		for _, svc := range svcs {
			s.problem("Service "+svc.Key.String(), "addresses", "address %s is claimed by %d services; none is reached by it: give each service its own address", a, len(svcs))
		}
	}
}

// Services returns every service, sorted by key.
func (s *Snapshot) Services() []*Service {
	out := make([]*Service, 0, len(s.services))
	for _, v := range s.services {
		out = append(out, v)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Key.String() < out[b].Key.String() })
	return out
}

// Workloads returns every workload, sorted by ID.
func (s *Snapshot) Workloads() []*Workload { return s.workloads }

// Workload returns the workload with the given ID.
func (s *Snapshot) Workload(id string) (*Workload, bool) {
	i := sort.Search(len(s.workloads), func(i int) bool { return s.workloads[i].ID >= id })
	if i < len(s.workloads) && s.workloads[i].ID == id {
		return s.workloads[i], true
	}
	return nil, false
}

// Endpoints returns the ready workloads backing service k on service port p.
func (s *Snapshot) Endpoints(k Key, port int) []*Workload {
	var out []*Workload
	for _, w := range s.members[k] {
		if !w.Ready {
			continue
		}
		for _, m := range w.Services {
			if m.Service == k.Name && m.ServicePort == port {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// Split returns the traffic split whose root is service k, if any.
func (s *Snapshot) Split(k Key) (*TrafficSplit, bool) {
	v, ok := s.splits[k]
	return v, ok
}

// TargetsFor returns the TrafficTargets whose destination is id, sorted by key.
func (s *Snapshot) TargetsFor(id Identity) []*TrafficTarget { return s.targets[id] }

// RouteGroup returns the HTTPRouteGroup named k.
func (s *Snapshot) RouteGroup(k Key) (*HTTPRouteGroup, bool) {
	v, ok := s.routeGroups[k]
	return v, ok
}

// TCPRoute returns the TCPRoute named k.
func (s *Snapshot) TCPRoute(k Key) (*TCPRoute, bool) {
	v, ok := s.tcpRoutes[k]
	return v, ok
}

// RoutesFor returns the Gateway API routes attached to service k on port, in
// precedence order (oldest first, then by namespace/name).
func (s *Snapshot) RoutesFor(k Key, port int) []*Route {
	var out []*Route
	for _, r := range s.routesFor[k] {
		for _, p := range r.Parents {
			if p.Service == k && (p.Port == 0 || p.Port == port) {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// Routes returns every Gateway API route, in precedence order.
func (s *Snapshot) Routes() []*Route { return s.routes }

// Problems returns what validation found, in the order found.
func (s *Snapshot) Problems() []Problem { return s.problems }
