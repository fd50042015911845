package model

import (
	"fmt"
	"sort"
)

// addRoutes validates Gateway API routes against the services and splits, and
// indexes them by parent service. A route takes over the routing of its
// parents: a TrafficSplit of the same service is then not used, and both
// resources are told so.
func (s *Snapshot) addRoutes(in []Route) {
	routes := make([]*Route, len(in))
	for i := range in {
		r := in[i]
		routes[i] = &r
	}
	sort.SliceStable(routes, func(a, b int) bool {
		ra, rb := routes[a], routes[b]
		if !ra.Created.Equal(rb.Created) {
			return ra.Created.Before(rb.Created)
		}
		return ra.Key.String() < rb.Key.String()
	})
	for _, r := range routes {
		obj := string(r.Kind) + " " + r.Key.String()
		indexed := map[Key]bool{}
		for i, p := range r.Parents {
			f := fmt.Sprintf("spec.parentRefs[%d]", i)
			svc, ok := s.services[p.Service]
			if !ok {
				s.problem(obj, f, "parent service %s does not exist (no workload is registered for it); the route applies once it does", p.Service)
			} else if p.Port != 0 {
				if _, ok := svc.Port(p.Port); !ok {
					s.problem(obj, f+".port", "service %s has no port %d; the route applies to no traffic until it does", p.Service, p.Port)
				}
			}
			if split, ok := s.splits[p.Service]; ok {
				s.warn(obj, f, "service %s is also split by TrafficSplit %s; this %s takes precedence and the TrafficSplit is not used for it", p.Service, split.Key, r.Kind)
				s.warn("TrafficSplit "+split.Key.String(), "spec.service",
					"not used: %s %s routes service %s and takes precedence; delete one of them, or move the weights into the route's backendRefs", r.Kind, r.Key, p.Service)
			}
			if !indexed[p.Service] {
				indexed[p.Service] = true
				s.routesFor[p.Service] = append(s.routesFor[p.Service], r)
			}
		}
		for i, rule := range r.Rules {
			for j, b := range rule.Backends {
				if _, ok := s.services[b.Service]; !ok {
					s.problem(obj, fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, j),
						"backend service %s does not exist (no workload is registered for it); its share goes to the other backends until it has one", b.Service)
				}
			}
		}
	}
	s.routes = routes
}
