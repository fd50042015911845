package controlplane

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/model"
)

// PolicyCheck is the answer to "may SRC call DST with this request?" for one
// destination workload. It is decided by the same code the sidecar enforces with.
type PolicyCheck struct {
	Source      string `json:"source"`      // SPIFFE ID of the caller
	Destination string `json:"destination"` // SPIFFE ID of the callee
	Workload    string `json:"workload"`    // the destination workload's ID
	Request     string `json:"request"`     // "GET /books-bought"
	Allowed     bool   `json:"allowed"`
	// DecidedBy names the policy and rule that allowed ("TrafficTarget
	// bookstore/bookstore, HTTPRouteGroup bookstore/bookstore-service-routes#books-bought"),
	// or says why nothing did.
	DecidedBy string `json:"decidedBy"`
}

// PolicyQuery is a policy check request.
type PolicyQuery struct {
	Source      string      `json:"source"`      // workload: ID, namespace/name or name
	Destination string      `json:"destination"` // workload, or service as name.namespace
	Method      string      `json:"method"`
	Path        string      `json:"path"`
	Header      http.Header `json:"header"`
}

// resolveWorkloads finds workloads by ID, namespace/name or name.
func resolveWorkloads(ws []*model.Workload, q string) []*model.Workload {
	var hits []*model.Workload
	for _, w := range ws {
		if w.Matches(q) {
			hits = append(hits, w)
		}
	}
	return hits
}

// checkPolicy answers q against snap.
func checkPolicy(snap *model.Snapshot, q PolicyQuery) ([]PolicyCheck, error) {
	td := snap.Mesh().TrustDomain
	srcs := resolveWorkloads(snap.Workloads(), q.Source)
	switch {
	case len(srcs) == 0:
		return nil, fmt.Errorf("source %q is not a registered workload: `trellis get workloads` lists them", q.Source)
	case len(srcs) > 1 && srcs[0].Identity != srcs[len(srcs)-1].Identity:
		return nil, fmt.Errorf("source %q matches workloads of several identities: give namespace/name", q.Source)
	}
	src := srcs[0].Identity.SPIFFE(td)

	dsts := resolveWorkloads(snap.Workloads(), q.Destination)
	if len(dsts) == 0 {
		// A service: every workload behind it, through its split if any.
		t, err := compile.ParseAuthority(q.Destination, srcs[0].Identity.Namespace)
		if err != nil {
			return nil, fmt.Errorf("destination %q is neither a workload nor a service: %w", q.Destination, err)
		}
		svc, ok := snap.Service(t.Service)
		if !ok {
			return nil, fmt.Errorf("destination %q is neither a registered workload nor a service in the mesh", q.Destination)
		}
		keys := []model.Key{svc.Key}
		if split, ok := snap.Split(svc.Key); ok {
			keys = keys[:0]
			for _, b := range split.Backends {
				keys = append(keys, model.Key{Namespace: svc.Key.Namespace, Name: b.Service})
			}
		}
		seen := map[string]bool{}
		for _, k := range keys {
			s, ok := snap.Service(k)
			if !ok {
				continue
			}
			for _, p := range s.Ports {
				for _, w := range snap.Endpoints(k, p.Port) {
					if !seen[w.ID] {
						seen[w.ID] = true
						dsts = append(dsts, w)
					}
				}
			}
		}
		if len(dsts) == 0 {
			return nil, fmt.Errorf("service %s has no ready workload to check", q.Destination)
		}
	}
	sort.Slice(dsts, func(i, j int) bool { return dsts[i].ID < dsts[j].ID })

	method := strings.ToUpper(q.Method)
	if method == "" {
		method = http.MethodGet
	}
	path := q.Path
	if path == "" {
		path = "/"
	}
	req := &http.Request{Method: method, URL: &url.URL{Path: path}, Header: q.Header}
	if req.Header == nil {
		req.Header = http.Header{}
	}
	var out []PolicyCheck
	for _, w := range dsts {
		ic, err := compile.Inbound(snap, w.ID)
		if err != nil {
			return nil, err
		}
		pol, err := authz.Compile(ic)
		if err != nil {
			return nil, fmt.Errorf("inbound policy of %s: %w", w.ID, err)
		}
		d := pol.AllowHTTP(src, req)
		pc := PolicyCheck{Source: src, Destination: ic.GetIdentity(), Workload: w.ID, Request: method + " " + path, Allowed: d.Allowed}
		switch {
		case d.Allowed && d.Authorization == "permissive":
			pc.DecidedBy = "permissive mode (MeshConfig spec.traffic.enablePermissiveTrafficPolicyMode)"
		case d.Allowed:
			pc.DecidedBy = d.Authorization + ", " + d.Rule
		default:
			pc.DecidedBy = explainDenial(ic.GetAuthorizations(), src, ic.GetIdentity())
		}
		out = append(out, pc)
	}
	return out, nil
}

// explainDenial says why no authorization allowed the request.
func explainDenial(auths []*proxyv1.Authorization, src, dst string) string {
	var listing []string
	for _, a := range auths {
		for _, s := range a.GetSources() {
			if s == src {
				listing = append(listing, a.GetName())
			}
		}
	}
	if len(listing) == 0 {
		return fmt.Sprintf("denied: no TrafficTarget for %s lists %s as a source (strict mode)", dst, src)
	}
	return fmt.Sprintf("denied: %s list %s as a source, but none of their rules matches the request", strings.Join(listing, ", "), src)
}
