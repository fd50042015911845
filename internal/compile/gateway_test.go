package compile

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-mesh/trellis/internal/model"
)

// canary is an HTTPRoute on the bookstore service: a header sends testers to
// v2, /admin is redirected, /v1/ is rewritten to v1's root, everything else is
// split 90/10 with a request timeout and header changes.
func canary() model.Route {
	bs := func(name string, w int) model.RouteBackend {
		return model.RouteBackend{Service: model.Key{Namespace: "bookstore", Name: name}, Weight: w}
	}
	return model.Route{
		Key:     model.Key{Namespace: "bookstore", Name: "canary"},
		Kind:    model.RouteKindHTTP,
		Parents: []model.RouteParent{{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001}},
		Rules: []model.RouteRule{
			{Name: "rest", Backends: []model.RouteBackend{bs("bookstore-v1", 90), bs("bookstore-v2", 10)},
				Timeout: 2 * time.Second,
				Filters: model.RouteFilters{
					RequestHeaders:  &model.HeaderChanges{Set: []model.Header{{Name: "x-route", Value: "rest"}}, Remove: []string{"x-debug"}},
					ResponseHeaders: &model.HeaderChanges{Add: []model.Header{{Name: "x-served-by-route", Value: "canary"}}},
				}},
			{Name: "testers", Matches: []model.RouteMatch{{PathType: model.MatchPathPrefix, PathValue: "/",
				Headers: []model.ValueMatch{{Name: "x-tester", Type: model.MatchExact, Value: "yes"}}}},
				Backends: []model.RouteBackend{bs("bookstore-v2", 1)}},
			{Name: "admin", Matches: []model.RouteMatch{{PathType: model.MatchExact, PathValue: "/admin"}},
				Filters: model.RouteFilters{Redirect: &model.Redirect{Path: &model.PathChange{ReplaceFullPath: "/"}, StatusCode: 301}}},
			{Name: "v1", Matches: []model.RouteMatch{{PathType: model.MatchPathPrefix, PathValue: "/v1", Method: "GET"}},
				Filters:  model.RouteFilters{Rewrite: &model.Rewrite{Path: &model.PathChange{ReplacePrefixMatch: "/", Prefix: true}}},
				Backends: []model.RouteBackend{bs("bookstore-v1", 1)}},
		},
	}
}

func TestDestinationHTTPRoute(t *testing.T) {
	in := bookstore(false, nil)
	in.Routes = []model.Route{canary()}
	s := model.Build(in)
	if len(s.Problems()) > 0 {
		t.Fatalf("problems: %v", s.Problems())
	}
	dc := Destination(s, Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001})
	golden(t, "destination-httproute-canary", dc)

	// Precedence: the Exact path first, then the longer prefix with a method,
	// then "/" with a header, then the rule without matches.
	var order []string
	for _, r := range dc.GetRoutes() {
		order = append(order, r.GetName())
	}
	want := []string{"HTTPRoute bookstore/canary#admin", "HTTPRoute bookstore/canary#v1", "HTTPRoute bookstore/canary#testers", "HTTPRoute bookstore/canary#rest"}
	if diff := cmp.Diff(want, order); diff != "" {
		t.Errorf("route order (-want +got):\n%s", diff)
	}
}

// An HTTPRoute and a TrafficSplit on the same service: the route wins, and both
// resources are told.
func TestHTTPRouteTakesPrecedenceOverSplit(t *testing.T) {
	in := bookstore(false, []model.WeightedBackend{{Service: "bookstore-v1", Weight: 50}, {Service: "bookstore-v2", Weight: 50}})
	in.Routes = []model.Route{canary()}
	s := model.Build(in)
	dc := Destination(s, Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001})
	if got := dc.GetSource(); got != "HTTPRoute bookstore/canary" {
		t.Errorf("source = %q, want the HTTPRoute", got)
	}
	var objects []string
	for _, p := range s.Problems() {
		objects = append(objects, p.Object)
	}
	want := []string{"HTTPRoute bookstore/canary", "TrafficSplit bookstore/bookstore-split"}
	if diff := cmp.Diff(want, objects); diff != "" {
		t.Errorf("problems name (-want +got):\n%s\nproblems: %v", diff, s.Problems())
	}
}

// A route on another port of the service, or on another service, leaves the
// destination to its split.
func TestHTTPRouteOnOtherPort(t *testing.T) {
	in := bookstore(false, []model.WeightedBackend{{Service: "bookstore-v2", Weight: 1}})
	r := canary()
	r.Parents[0].Port = 8080
	in.Routes = []model.Route{r}
	s := model.Build(in)
	dc := Destination(s, Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001})
	if got := dc.GetSource(); got != "TrafficSplit bookstore/bookstore-split" {
		t.Errorf("source = %q, want the TrafficSplit", got)
	}
}

// A backendRef on another port makes its own backend, named with the port.
func TestHTTPRouteBackendPort(t *testing.T) {
	in := bookstore(true, nil)
	in.Workloads = append(in.Workloads, model.Workload{ID: "bookstore/admin-ffffff", Name: "admin", Identity: model.Identity{Namespace: "bookstore", Account: "admin"},
		Services: []model.ServiceMembership{{Service: "bookstore-admin", ServicePort: 9000}}, Address: "127.0.0.1:20009", Ready: true})
	in.Routes = []model.Route{{
		Key: model.Key{Namespace: "bookstore", Name: "admin"}, Kind: model.RouteKindHTTP,
		Parents: []model.RouteParent{{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}}},
		Rules:   []model.RouteRule{{Name: "0", Backends: []model.RouteBackend{{Service: model.Key{Namespace: "bookstore", Name: "bookstore-admin"}, Port: 9000, Weight: 1}}}},
	}}
	dc := Destination(model.Build(in), Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001})
	if n := len(dc.GetBackends()); n != 1 {
		t.Fatalf("%d backends, want 1: %v", n, dc.GetBackends())
	}
	b := dc.GetBackends()[0]
	if b.GetName() != "bookstore-admin.bookstore:9000" || len(b.GetEndpoints()) != 1 || b.GetEndpoints()[0].GetAddress() != "127.0.0.1:20009" {
		t.Errorf("backend = %v, want bookstore-admin.bookstore:9000 with the admin workload", b)
	}
	if got := dc.GetRoutes()[0].GetBackends()[0].GetBackend(); got != b.GetName() {
		t.Errorf("route refers to %q, want %q", got, b.GetName())
	}
}

// A GRPCRoute on a gRPC service: method matches become path matches, header
// filters apply.
func TestDestinationGRPCRoute(t *testing.T) {
	in := bookstore(true, nil)
	in.Workloads = append(in.Workloads,
		model.Workload{ID: "shop/greeter-v1-aaaaaa", Name: "greeter-v1", Identity: model.Identity{Namespace: "shop", Account: "greeter"},
			Services: []model.ServiceMembership{{Service: "greeter", ServicePort: 50051, Protocol: model.ProtocolGRPC}, {Service: "greeter-v1", ServicePort: 50051, Protocol: model.ProtocolGRPC}},
			Address:  "127.0.0.1:20011", Ready: true},
		model.Workload{ID: "shop/greeter-v2-bbbbbb", Name: "greeter-v2", Identity: model.Identity{Namespace: "shop", Account: "greeter"},
			Services: []model.ServiceMembership{{Service: "greeter", ServicePort: 50051, Protocol: model.ProtocolGRPC}, {Service: "greeter-v2", ServicePort: 50051, Protocol: model.ProtocolGRPC}},
			Address:  "127.0.0.1:20012", Ready: true})
	shop := func(n string) model.Key { return model.Key{Namespace: "shop", Name: n} }
	in.Routes = []model.Route{{
		Key: shop("greeter"), Kind: model.RouteKindGRPC,
		Parents: []model.RouteParent{{Service: shop("greeter")}},
		Rules: []model.RouteRule{
			{Name: "gold", Matches: []model.RouteMatch{{PathType: model.MatchExact, PathValue: "/helloworld.Greeter/SayHello", Method: "POST",
				Headers: []model.ValueMatch{{Name: "x-tenant", Type: model.MatchExact, Value: "gold"}}}},
				Filters:  model.RouteFilters{RequestHeaders: &model.HeaderChanges{Set: []model.Header{{Name: "x-route", Value: "gold"}}}},
				Backends: []model.RouteBackend{{Service: shop("greeter-v2"), Weight: 1}}},
			{Name: "rest", Backends: []model.RouteBackend{{Service: shop("greeter-v1"), Weight: 1}}},
		},
	}}
	s := model.Build(in)
	if len(s.Problems()) > 0 {
		t.Fatalf("problems: %v", s.Problems())
	}
	golden(t, "destination-grpcroute", Destination(s, Target{Service: shop("greeter"), Port: 50051}))
}
