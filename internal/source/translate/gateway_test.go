package translate

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/model"
)

func TestTranslateHTTPRoute(t *testing.T) {
	// The example users read is the one tested.
	const example = "../../../examples/bookstore/httproute-canary.yaml"
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Decode(b, example)
	if err != nil {
		t.Fatal(err)
	}
	objs, errs, warns := Translate(rs)
	if len(errs) > 0 || len(warns) > 0 {
		t.Fatalf("errs %v, warns %v", errs, warns)
	}
	svc := func(n string) model.Key { return model.Key{Namespace: "bookstore", Name: n} }
	want := []model.Route{{
		Key:     svc("bookstore-canary"),
		Kind:    model.RouteKindHTTP,
		Parents: []model.RouteParent{{Service: svc("bookstore"), Port: 14001}},
		Rules: []model.RouteRule{
			{Name: "canary-header",
				Matches:  []model.RouteMatch{{PathType: model.MatchPathPrefix, PathValue: "/", Headers: []model.ValueMatch{{Name: "x-canary", Type: model.MatchExact, Value: "yes"}}}},
				Backends: []model.RouteBackend{{Service: svc("bookstore-v2"), Port: 14001, Weight: 1}}},
			{Name: "v1-prefix",
				Matches:  []model.RouteMatch{{PathType: model.MatchPathPrefix, PathValue: "/v1"}},
				Filters:  model.RouteFilters{Rewrite: &model.Rewrite{Path: &model.PathChange{ReplacePrefixMatch: "/", Prefix: true}}},
				Backends: []model.RouteBackend{{Service: svc("bookstore-v1"), Port: 14001, Weight: 1}}},
			{Name: "split",
				Filters:  model.RouteFilters{ResponseHeaders: &model.HeaderChanges{Add: []model.Header{{Name: "x-route", Value: "bookstore-canary"}}}},
				Backends: []model.RouteBackend{{Service: svc("bookstore-v1"), Port: 14001, Weight: 80}, {Service: svc("bookstore-v2"), Port: 14001, Weight: 20}},
				Timeout:  10 * time.Second},
		},
	}}
	if diff := cmp.Diff(want, objs.Routes); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}

	// The same route written for v1beta1, which the Gateway API still
	// serves with v1's schema, is the same route.
	beta := strings.ReplaceAll(string(b), "apiVersion: "+GatewayAPIVersion+"\n", "apiVersion: "+GatewayAPIVersionV1beta1+"\n")
	if beta == string(b) {
		t.Fatalf("%s has no %s apiVersion line to rewrite", example, GatewayAPIVersion)
	}
	rs, err = Decode([]byte(beta), example)
	if err != nil {
		t.Fatal(err)
	}
	objs, errs, warns = Translate(rs)
	if len(errs) > 0 || len(warns) > 0 {
		t.Fatalf("v1beta1: errs %v, warns %v", errs, warns)
	}
	if diff := cmp.Diff(want, objs.Routes); diff != "" {
		t.Errorf("v1beta1 routes (-want +got):\n%s", diff)
	}
}

func TestTranslateGRPCRoute(t *testing.T) {
	rs, err := Decode([]byte(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: greeter}]
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
      headers: [{name: X-Tenant, value: gold}]
    backendRefs: [{name: greeter-v2, port: 50051}]
`), "greeter.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, errs, _ := Translate(rs)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := objs.Routes[0].Rules[0].Matches[0]
	want := model.RouteMatch{PathType: model.MatchExact, PathValue: "/helloworld.Greeter/SayHello", Method: "POST",
		Headers: []model.ValueMatch{{Name: "x-tenant", Type: model.MatchExact, Value: "gold"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("match (-want +got):\n%s", diff)
	}
}

// TestTranslateRouteInvalid checks that bad routes are refused with a message
// naming the field and the fix.
func TestTranslateRouteInvalid(t *testing.T) {
	head := "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: bookstore}\nspec:\n"
	svcParent := "  parentRefs: [{kind: Service, group: \"\", name: bookstore, port: 14001}]\n"
	tests := []struct {
		name, spec, field, want string
	}{
		{"gateway parent only", "  parentRefs: [{name: my-gateway}]\n  rules: [{backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.parentRefs", "no parentRef is a Service"},
		{"parent in another namespace", "  parentRefs: [{kind: Service, group: \"\", name: bookstore, namespace: other}]\n",
			"spec.parentRefs[0].namespace", "move the route to namespace other"},
		{"cross-namespace backend", svcParent + "  rules: [{backendRefs: [{name: bookstore-v1, namespace: other, port: 14001}]}]\n",
			"spec.rules[0].backendRefs[0].namespace", "ReferenceGrant"},
		{"bad path regex", svcParent + "  rules: [{matches: [{path: {type: RegularExpression, value: \"/(a\"}}], backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].matches[0].path.value", "not a valid regular expression"},
		{"relative path", svcParent + "  rules: [{matches: [{path: {type: PathPrefix, value: books}}], backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].matches[0].path.value", "must start with /"},
		{"bad method", svcParent + "  rules: [{matches: [{method: FETCH}], backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].matches[0].method", "not an HTTP method"},
		{"mirror filter", svcParent + "  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: x, port: 1}}}], backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].filters[0].type", "not supported"},
		{"bad timeout", svcParent + "  rules: [{timeouts: {request: 10 seconds}, backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].timeouts.request", "not a Gateway API duration"},
		{"no backends", svcParent + "  rules: [{matches: [{path: {value: /a}}]}]\n",
			"spec.rules[0].backendRefs", "a rule needs backendRefs"},
		{"redirect and rewrite", svcParent + "  rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}, {type: URLRewrite, urlRewrite: {hostname: x}}]}]\n",
			"spec.rules[0].filters", "cannot be used together"},
		{"redirect status", svcParent + "  rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]}]\n",
			"spec.rules[0].filters[0].requestRedirect.statusCode", "use 301 or 302"},
		{"prefix rewrite without prefix match", svcParent + "  rules: [{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}], backendRefs: [{name: bookstore-v1, port: 14001}]}]\n",
			"spec.rules[0].filters[0].urlRewrite.path.type", "PathPrefix"},
		{"unknown field", svcParent + "  rules: [{backendRefs: [{name: bookstore-v1, port: 14001, wieght: 3}]}]\n",
			"spec.rules[0].backendRefs[0].wieght", "unknown field"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Decode([]byte(head+tc.spec), "route.yaml")
			if err != nil {
				t.Fatal(err)
			}
			objs, errs, _ := Translate(rs)
			if len(objs.Routes) != 0 {
				t.Errorf("the route was kept: %+v", objs.Routes)
			}
			for _, e := range errs {
				if e.Object == "HTTPRoute bookstore/r" && e.Field == tc.field && strings.Contains(e.Message, tc.want) {
					return
				}
			}
			t.Errorf("no problem at %s containing %q; got %v", tc.field, tc.want, errs)
		})
	}
}

// A parentRef to a Gateway next to a Service one is ignored with a warning.
func TestTranslateRouteIgnoresGatewayParent(t *testing.T) {
	rs, err := Decode([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: bookstore}\nspec:\n  parentRefs: [{name: edge}, {kind: Service, group: \"\", name: bookstore}]\n"), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, errs, warns := Translate(rs)
	if len(errs) > 0 || len(objs.Routes) != 1 {
		t.Fatalf("errs %v, routes %v", errs, objs.Routes)
	}
	if len(warns) != 1 || warns[0].Field != "spec.parentRefs[0]" {
		t.Errorf("warns = %v, want one about spec.parentRefs[0]", warns)
	}
	// No rules: everything goes to the parent, as the Gateway API says.
	want := []model.RouteRule{{Name: "0", Backends: []model.RouteBackend{{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Weight: 1}}}}
	if diff := cmp.Diff(want, objs.Routes[0].Rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
}

// TestHTTPRouteDefaultedRules: the rule the API server fills in for an
// HTTPRoute without rules (the CRD's default) translates as no rules at all,
// so a route behaves the same applied locally and read from a cluster; a
// rule that differs from the default in anything stays a rule.
func TestHTTPRouteDefaultedRules(t *testing.T) {
	route := func(rules string) []model.Route {
		t.Helper()
		rs, err := Decode([]byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
`+rules), "route.yaml")
		if err != nil {
			t.Fatal(err)
		}
		objs, errs, _ := Translate(rs)
		if len(errs) > 0 {
			return nil
		}
		return objs.Routes
	}
	bare := route("")
	if len(bare) != 1 || len(bare[0].Rules) != 1 || len(bare[0].Rules[0].Backends) != 1 || bare[0].Rules[0].Backends[0].Service.Name != "bookstore" {
		t.Fatalf("a route without rules = %+v, want one rule to its parent", bare)
	}
	defaulted := route("  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /}\n")
	if diff := cmp.Diff(bare, defaulted); diff != "" {
		t.Errorf("the CRD's defaulted rule translates unlike no rules (-none +defaulted):\n%s", diff)
	}
	// Anything more than the default is the user's rule, and one without
	// backendRefs is refused.
	if got := route("  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /v1}\n"); got != nil {
		t.Errorf("a rule of /v1 without backendRefs was accepted: %+v", got)
	}
}
