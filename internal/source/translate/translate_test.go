package translate

import (
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trellis-mesh/trellis/internal/model"
)

// decodeFiles decodes testdata files into one list of resources.
func decodeFiles(t *testing.T, files ...string) []Resource {
	t.Helper()
	var rs []Resource
	for _, f := range files {
		got, err := Decode(readTestdata(t, f), f)
		if err != nil {
			t.Fatalf("Decode(%s): %v", f, err)
		}
		rs = append(rs, got...)
	}
	return rs
}

// TestTranslate round-trips the bookstore demo's YAML (seed 001, re-indented)
// and other valid objects into model objects.
func TestTranslate(t *testing.T) {
	rootWarning := func(obj string) model.Problem {
		return model.Problem{Object: obj, Field: "spec.backends[0].service",
			Message: `backend "bookstore" is the root service itself: its share goes to every workload of bookstore, not split again; to send it to one version only, name that version's service`}
	}
	bookstore := model.Key{Namespace: "bookstore", Name: "bookstore-split"}
	warehouse := func(name string) model.Key { return model.Key{Namespace: "bookwarehouse", Name: name} }
	tests := []struct {
		name      string
		files     []string
		want      Objects
		wantWarns []model.Problem
	}{
		{
			name:  "seed 001 traffic access",
			files: []string{"bookstore/traffic-access.yaml"},
			want: Objects{
				Targets: []model.TrafficTarget{{
					Key:         model.Key{Namespace: "bookstore", Name: "bookstore"},
					Destination: model.Identity{Namespace: "bookstore", Account: "bookstore"},
					Sources: []model.Identity{
						{Namespace: "bookbuyer", Account: "bookbuyer"},
						{Namespace: "bookthief", Account: "bookthief"},
					},
					Rules: []model.TrafficRule{{
						Kind: model.RuleHTTPRouteGroup, Name: "bookstore-service-routes",
						Matches: []string{"buy-a-book", "books-bought"},
					}},
				}},
				RouteGroups: []model.HTTPRouteGroup{{
					Key: model.Key{Namespace: "bookstore", Name: "bookstore-service-routes"},
					Matches: []model.HTTPMatch{
						{
							Name: "books-bought", PathRegex: "/books-bought", Methods: []string{"GET"},
							Headers: map[string]string{"user-agent": ".*-http-client/*.*", "client-app": "bookbuyer"},
						},
						{Name: "buy-a-book", PathRegex: ".*a-book.*new", Methods: []string{"GET"}},
					},
				}},
			},
		},
		{
			name:  "seed 001 split 50/50",
			files: []string{"bookstore/traffic-split-50-50.yaml"},
			want: Objects{Splits: []model.TrafficSplit{{
				Key: bookstore, Service: "bookstore",
				Backends: []model.WeightedBackend{{Service: "bookstore", Weight: 50}, {Service: "bookstore-v2", Weight: 50}},
			}}},
			wantWarns: []model.Problem{rootWarning("TrafficSplit bookstore/bookstore-split")},
		},
		{
			name:  "seed 001 split 0/100",
			files: []string{"bookstore/traffic-split-v2.yaml"},
			want: Objects{Splits: []model.TrafficSplit{{
				Key: bookstore, Service: "bookstore",
				Backends: []model.WeightedBackend{{Service: "bookstore", Weight: 0}, {Service: "bookstore-v2", Weight: 100}},
			}}},
			wantWarns: []model.Problem{rootWarning("TrafficSplit bookstore/bookstore-split")},
		},
		{
			name:      "seed 001 IngressBackend is stored, not enforced",
			files:     []string{"bookstore/ingress-backend.yaml"},
			wantWarns: []model.Problem{{Object: "IngressBackend bookstore/bookstore-backend", Message: NotEnforcedYet}},
		},
		{
			name:  "OSM policies are stored, not enforced",
			files: []string{"policies.yaml"},
			wantWarns: []model.Problem{
				{Object: "Egress curl/httpbin-80", Message: NotEnforcedYet},
				{Object: "Retry bookbuyer/retry", Message: NotEnforcedYet},
				{Object: "UpstreamTrafficSetting httpbin/httpbin", Message: NotEnforcedYet},
			},
		},
		{
			name:  "defaults and less common forms",
			files: []string{"valid.yaml"},
			want: Objects{
				TCPRoutes: []model.TCPRoute{
					{Key: warehouse("mysql"), Ports: []int{3306, 33060}},
					{Key: warehouse("any-port")},
				},
				Targets: []model.TrafficTarget{{
					Key:         warehouse("mysql"),
					Destination: model.Identity{Namespace: "bookwarehouse", Account: "mysql"},
					Sources:     []model.Identity{{Namespace: "bookwarehouse", Account: "bookwarehouse"}},
					Rules:       []model.TrafficRule{{Kind: model.RuleTCPRoute, Name: "mysql"}},
				}},
				RouteGroups: []model.HTTPRouteGroup{{
					Key: warehouse("everything"),
					Matches: []model.HTTPMatch{
						{Name: "all"},
						{Name: "any-method", PathRegex: "/.*", Methods: []string{"*"}, Headers: map[string]string{"x-trace-&-debug": "on|yes"}},
					},
				}},
				Splits: []model.TrafficSplit{{
					Key: warehouse("warehouse"), Service: "bookwarehouse",
					Backends: []model.WeightedBackend{{Service: "bookwarehouse-v1", Weight: 90}, {Service: "bookwarehouse-v2", Weight: 10}},
				}},
			},
			wantWarns: []model.Problem{{
				Object: "TrafficTarget bookwarehouse/mysql", Field: "spec.rules[0].matches",
				Message: "matches apply to HTTPRouteGroup rules only and are ignored for a TCPRoute: remove them",
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, errs, warns := Translate(decodeFiles(t, tc.files...))
			if len(errs) > 0 {
				t.Errorf("errors: %v; want none", errs)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("objects (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarns, warns, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTranslateMeshConfig(t *testing.T) {
	tests := []struct {
		name       string
		file       string
		wantMesh   *model.MeshSettings
		wantConfig []string
		wantErrs   []model.Problem
		wantWarned []string // fields warned about, each NotUsedYet
	}{
		{
			name: "OSM install with permissive mode off and tracing on",
			file: "meshconfig.yaml",
			wantMesh: &model.MeshSettings{
				TrustDomain: "cluster.local", Permissive: false, Egress: true, CertValidity: 24 * time.Hour,
				SidecarLogLevel: "error", ControlPlaneLogLevel: "info",
				Tracing: model.Tracing{Enable: true, Address: "jaeger.osm-system.svc.cluster.local", Port: 9411, Endpoint: "/api/v2/spans"},
				Source:  "MeshConfig osm-system/osm-mesh-config",
			},
			wantConfig: []string{"MeshConfig osm-system/osm-mesh-config"},
			wantWarned: []string{
				"spec.certificate.certKeyBitSize",
				"spec.featureFlags.enableAsyncProxyServiceMapping",
				"spec.featureFlags.enableEgressPolicy",
				"spec.featureFlags.enableEnvoyActiveHealthChecks",
				"spec.featureFlags.enableIngressBackendPolicy",
				"spec.featureFlags.enableRetryPolicy",
				"spec.featureFlags.enableSnapshotCacheMode",
				"spec.featureFlags.enableWASMStats",
				"spec.observability.enableDebugServer",
				"spec.observability.tracing.address",
				"spec.observability.tracing.enable",
				"spec.observability.tracing.endpoint",
				"spec.observability.tracing.port",
				"spec.sidecar.configResyncInterval",
				"spec.sidecar.enablePrivilegedInitContainer",
				"spec.sidecar.localProxyMode",
				"spec.sidecar.tlsMaxProtocolVersion",
				"spec.sidecar.tlsMinProtocolVersion",
				"spec.traffic.inboundExternalAuthorization.enable",
				"spec.traffic.inboundExternalAuthorization.failureModeAllow",
				"spec.traffic.inboundExternalAuthorization.statPrefix",
				"spec.traffic.inboundExternalAuthorization.timeout",
			},
		},
		{
			name:       "v1alpha1 with egress off; permissive defaults to true",
			file:       "meshconfig-v1alpha1.yaml",
			wantMesh:   &model.MeshSettings{TrustDomain: "cluster.local", Permissive: true, Egress: false, Source: "MeshConfig osm-system/osm-mesh-config"},
			wantConfig: []string{"MeshConfig osm-system/osm-mesh-config"},
		},
		{
			name:       "a second MeshConfig is refused; the first keeps OSM's defaults",
			file:       "meshconfig-two.yaml",
			wantMesh:   &model.MeshSettings{TrustDomain: "cluster.local", Permissive: true, Egress: true, Source: "MeshConfig osm-system/osm-mesh-config"},
			wantConfig: []string{"MeshConfig osm-system/osm-mesh-config"},
			wantErrs: []model.Problem{{
				Object:  "MeshConfig osm-system/another-mesh-config",
				Message: "a mesh has one MeshConfig and MeshConfig osm-system/osm-mesh-config is already in use: delete this one, or merge its settings into that one",
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, errs, warns := Translate(decodeFiles(t, tc.file))
			if diff := cmp.Diff(tc.wantMesh, got.Mesh); diff != "" {
				t.Errorf("mesh (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantConfig, got.MeshConfigs); diff != "" {
				t.Errorf("MeshConfigs (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errs, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			var warned []string
			for _, w := range warns {
				if w.Message != NotUsedYet || w.Object != tc.wantConfig[0] {
					t.Errorf("warning %v; want %q about %s", w, NotUsedYet, tc.wantConfig[0])
				}
				warned = append(warned, w.Field)
			}
			if diff := cmp.Diff(tc.wantWarned, warned); diff != "" {
				t.Errorf("fields warned about (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTranslateInvalid checks each validation rule: every object in the files
// under testdata/invalid is wrong in one way, and must be left out with exactly
// the listed problems.
func TestTranslateInvalid(t *testing.T) {
	type want struct {
		field    string
		contains string // the fix, or enough of the message to identify it
	}
	tests := []struct {
		object string
		want   []want
	}{
		// TrafficSplit
		{"TrafficSplit bookstore/no-service", []want{{"spec.service", "is required: name the root service"}}},
		{"TrafficSplit bookstore/other-namespace", []want{{"spec.service", "a TrafficSplit must live in its root service's namespace: move it to namespace bookbuyer"}}},
		{"TrafficSplit bookstore/other-namespace-fqdn", []want{{"spec.service", "move it to namespace bookbuyer"}}},
		{"TrafficSplit bookstore/bad-service", []want{{"spec.service", "use name, name.namespace or name.namespace.svc.cluster.local"}}},
		{"TrafficSplit bookstore/no-backends", []want{{"spec.backends", "at least one backend is required"}}},
		{"TrafficSplit bookstore/negative-weight", []want{{"spec.backends[1].weight", "weight -1 is negative: use 0 or more"}}},
		{"TrafficSplit bookstore/zero-sum", []want{{"spec.backends", "weights sum to 0: give at least one backend a positive weight"}}},
		{"TrafficSplit bookstore/huge-sum", []want{{"spec.backends", "weights sum to 8000000000, more than 4294967295: scale them down"}}},
		{"TrafficSplit bookstore/duplicate-backend", []want{{"spec.backends[1].service", `backend "bookstore-v1" is listed twice (also spec.backends[0]): merge them into one entry`}}},
		{"TrafficSplit bookstore/backend-with-namespace", []want{{"spec.backends[0].service", "give the name only"}}},
		{"TrafficSplit bookstore/unknown-field", []want{{"spec.backends[0].wieght", `unknown field "wieght": remove it or check the apiVersion`}}},
		{"TrafficSplit bookstore/wrong-case-field", []want{{"spec.Service", `(did you mean "service"?): remove it or check the apiVersion`}}},
		{"TrafficSplit bookstore/quoted-weight", []want{{"spec.backends[0].weight", `want a number, got the string "50": remove the quotes`}}},
		{"TrafficSplit bookstore/fractional-weight", []want{{"spec.backends[0].weight", "want a whole number, got 0.5"}}},
		// TrafficTarget
		{"TrafficTarget bookstore/destination-service", []want{{"spec.destination.kind", "set kind: ServiceAccount"}}},
		{"TrafficTarget bookbuyer/wrong-namespace", []want{{"spec.destination.namespace", "TrafficTarget must live in its destination's namespace: move it to namespace bookstore"}}},
		{"TrafficTarget bookstore/no-sources", []want{{"spec.sources", "at least one source is required: list the ServiceAccounts allowed to call bookstore/bookstore"}}},
		{"TrafficTarget bookstore/source-kind", []want{{"spec.sources[0].kind", `kind "Group" is not supported: identities are ServiceAccounts; set kind: ServiceAccount`}}},
		{"TrafficTarget bookstore/source-no-name", []want{{"spec.sources[0].name", "is required: name the ServiceAccount"}}},
		{"TrafficTarget bookstore/rule-kind", []want{{"spec.rules[0].kind", `kind "UDPRoute" is not supported: use HTTPRouteGroup or TCPRoute`}}},
		{"TrafficTarget bookstore/no-rules", []want{{"spec.rules", "at least one rule is required"}}},
		{"TrafficTarget bookstore/rule-no-name", []want{{"spec.rules[0].name", "is required: name the TCPRoute in namespace bookstore"}}},
		{"TrafficTarget bookstore/no-destination-name", []want{{"spec.destination.name", "is required: name the ServiceAccount"}}},
		// HTTPRouteGroup
		{"HTTPRouteGroup bookstore/no-matches", []want{{"spec.matches", "at least one match is required"}}},
		{"HTTPRouteGroup bookstore/unnamed-match", []want{{"spec.matches[0].name", "is required: TrafficTarget rules refer to matches by name"}}},
		{"HTTPRouteGroup bookstore/duplicate-match", []want{{"spec.matches[1].name", `match name "books" is used twice (also spec.matches[0]): give each match its own name`}}},
		{"HTTPRouteGroup bookstore/bad-path-regex", []want{{"spec.matches[0].pathRegex", `"/books(" is not a valid regular expression (error parsing regexp: missing closing ): ` + "`/books(`" + `): fix it`}}},
		{"HTTPRouteGroup bookstore/bad-header-regex", []want{{`spec.matches[0].headers[0]["user-agent"]`, `"[a-" is not a valid regular expression (error parsing regexp: missing closing ]`}}},
		{"HTTPRouteGroup bookstore/lower-case-method", []want{{"spec.matches[0].methods[0]", `method "get" must be upper case: use "GET"`}}},
		{"HTTPRouteGroup bookstore/unknown-method", []want{{"spec.matches[0].methods[1]", `"FETCH" is not an HTTP method: use one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH, or "*" for any`}}},
		{"HTTPRouteGroup bookstore/two-headers-one-entry", []want{{"spec.matches[0].headers[0]", "has 2 header names: write each header as its own list entry"}}},
		{"HTTPRouteGroup bookstore/duplicate-header", []want{{`spec.matches[0].headers[1]["User-Agent"]`, "merge the two into one regex"}}},
		{"HTTPRouteGroup bookstore/header-not-string", []want{{`spec.matches[0].headers[0]["x-version"]`, "want a string, got the number 2: quote it"}}},
		{"HTTPRouteGroup bookstore/headers-as-map", []want{{"spec.matches[0].headers", "want a list, got an object"}}},
		// TCPRoute
		{"TCPRoute bookstore/port-zero", []want{{"spec.matches.ports[1]", "port 0 is not from 1 to 65535"}}},
		{"TCPRoute bookstore/port-too-big", []want{{"spec.matches.ports[0]", "port 70000 is not from 1 to 65535"}}},
		{"TCPRoute bookstore/matches-list", []want{{"spec.matches", "want an object, got a list"}}},
		// MeshConfig
		{"MeshConfig osm-system/bad-log-level", []want{{"spec.sidecar.logLevel", `"verbose" is not one of trace, debug, info, warning, warn, error, critical, off`}}},
		{"MeshConfig osm-system/bad-osm-log-level", []want{{"spec.observability.osmLogLevel", `"chatty" is not one of trace, debug, info, warn, warning, error, fatal, panic, disabled, off`}}},
		{"MeshConfig osm-system/bad-duration", []want{{"spec.certificate.serviceCertValidityDuration", "write one such as 30s, 5m or 24h"}}},
		{"MeshConfig osm-system/bad-cidr", []want{{"spec.traffic.outboundIPRangeExclusionList[1]", `"10.0.0.1" is not an IP range in CIDR form`}}},
		{"MeshConfig osm-system/bad-port", []want{{"spec.traffic.inboundPortExclusionList[0]", "port 99999 is not from 1 to 65535"}}},
		{"MeshConfig osm-system/quoted-bool", []want{{"spec.traffic.enablePermissiveTrafficPolicyMode", `want true or false, got the string "false"`}}},
		{"MeshConfig osm-system/bad-sidecar-cpu", []want{{"spec.sidecar.resources", "quantities must match"}}},
		{"MeshConfig osm-system/sidecar-request-over-limit", []want{{"spec.sidecar.resources.requests.memory", "request 128Mi is above the limit 64Mi"}}},
		{"MeshConfig osm-system/v1alpha2-field-in-v1alpha1", []want{{"spec.sidecar.localProxyMode", "remove it or check the apiVersion (the field is in config.openservicemesh.io/v1alpha2"}}},
		{"MeshConfig osm-system/unknown-section", []want{{"spec.tracing", `unknown field "tracing": remove it or check the apiVersion`}}},
		// OSM policies
		{"Retry bookbuyer/old-field-name", []want{{"spec.retryPolicy.retryBackoffInterval", "remove it or check the apiVersion"}}},
		{"UpstreamTrafficSetting bookstore/global-rate-limit", []want{{"spec.rateLimit.global", "remove it or check the apiVersion"}}},
	}
	files := []string{
		"invalid/trafficsplit.yaml", "invalid/traffictarget.yaml", "invalid/httproutegroup.yaml",
		"invalid/tcproute.yaml", "invalid/meshconfig.yaml", "invalid/policy.yaml",
	}
	rs := decodeFiles(t, files...)
	objs, errs, warns := Translate(rs)
	if diff := cmp.Diff(Objects{}, objs, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("invalid objects were kept (-want +got):\n%s", diff)
	}
	if len(warns) > 0 {
		t.Errorf("warnings %v; want none for objects left out", warns)
	}
	byObject := map[string][]model.Problem{}
	for _, p := range errs {
		byObject[p.Object] = append(byObject[p.Object], p)
	}
	var tested []string
	for _, tc := range tests {
		tested = append(tested, tc.object)
		t.Run(tc.object, func(t *testing.T) {
			got := byObject[tc.object]
			if len(got) != len(tc.want) {
				t.Fatalf("problems %v; want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if got[i].Field != w.field || !strings.Contains(got[i].Message, w.contains) {
					t.Errorf("problem %d = %v; want field %q and a message containing %q", i, got[i], w.field, w.contains)
				}
			}
		})
	}
	var all []string
	for _, r := range rs {
		all = append(all, r.Ref())
	}
	sort.Strings(all)
	sort.Strings(tested)
	if diff := cmp.Diff(all, tested); diff != "" {
		t.Errorf("objects in testdata/invalid without a test case, or the reverse (-files +cases):\n%s", diff)
	}
}

// TestTranslateResources checks resources built by a source other than Decode.
func TestTranslateResources(t *testing.T) {
	tests := []struct {
		name string
		r    Resource
		want model.Problem
	}{
		{
			name: "kind not accepted",
			r:    Resource{APIVersion: "v1", Kind: "Service", Namespace: "bookstore", Name: "bookstore", Raw: []byte(`{}`)},
			want: model.Problem{Object: "Service bookstore/bookstore", Message: "apiVersion v1 kind Service is not accepted; Trellis accepts " + acceptedList()},
		},
		{
			name: "Raw is not JSON",
			r:    Resource{APIVersion: "specs.smi-spec.io/v1alpha4", Kind: "TCPRoute", Namespace: "ns", Name: "t", Raw: []byte(`{"apiVersion":`)},
			want: model.Problem{Object: "TCPRoute ns/t", Message: "the stored object is not valid JSON (unexpected EOF): apply it again"},
		},
		{
			name: "Raw names another object",
			r: Resource{APIVersion: "specs.smi-spec.io/v1alpha4", Kind: "TCPRoute", Namespace: "ns", Name: "t",
				Raw: []byte(`{"apiVersion":"specs.smi-spec.io/v1alpha4","kind":"TCPRoute","metadata":{"name":"u","namespace":"ns"}}`)},
			want: model.Problem{Object: "TCPRoute ns/t", Field: "metadata.name", Message: `"u" does not match the resource's name "t": apply the object again`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs, _ := Translate([]Resource{tc.r})
			if diff := cmp.Diff([]model.Problem{tc.want}, errs); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(Objects{}, objs, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("objects (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTranslateKeepsValidNeighbours checks that one bad object does not take
// the good ones down with it.
func TestTranslateKeepsValidNeighbours(t *testing.T) {
	rs := decodeFiles(t, "bookstore/traffic-access.yaml", "invalid/httproutegroup.yaml")
	objs, errs, _ := Translate(rs)
	if len(errs) == 0 {
		t.Fatal("no errors; want the invalid route groups reported")
	}
	var got []string
	for _, g := range objs.RouteGroups {
		got = append(got, g.Key.String())
	}
	if want := []string{"bookstore/bookstore-service-routes"}; !slices.Equal(got, want) {
		t.Errorf("route groups kept = %v; want %v", got, want)
	}
	if len(objs.Targets) != 1 {
		t.Errorf("targets kept = %d; want 1", len(objs.Targets))
	}
}
