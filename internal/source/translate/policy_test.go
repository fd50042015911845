package translate

import (
	"strings"
	"testing"
)

// Policies OSM's own CRDs refuse are refused, naming the field and the fix;
// the rest are stored with the note that they are not enforced.
func TestPolicyFields(t *testing.T) {
	tests := []struct {
		name, doc   string
		field, want string // want "" : accepted
	}{
		{"egress without ports", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: e, namespace: curl}
spec:
  sources: [{kind: ServiceAccount, name: curl, namespace: curl}]
  hosts: [httpbin.org]`, "spec.ports", "is required: list the ports they may reach"},
		{"egress source of another kind", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: e, namespace: curl}
spec:
  sources: [{kind: Pod, name: curl, namespace: curl}]
  ports: [{number: 80, protocol: http}]`, "spec.sources[0].kind", `kind "Pod" is not supported: use ServiceAccount`},
		{"ingress source kind", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: IngressBackend
metadata: {name: i, namespace: bookstore}
spec:
  backends: [{name: bookstore, port: {number: 14001, protocol: http}}]
  sources: [{kind: Gateway, name: ingress}]`, "spec.sources[0].kind", `kind "Gateway" is not supported: use Service, AuthenticatedPrincipal or IPRange`},
		{"ingress port out of range", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: IngressBackend
metadata: {name: i, namespace: bookstore}
spec:
  backends: [{name: bookstore, port: {number: 0, protocol: http}}]
  sources: [{kind: IPRange, name: 10.0.0.0/8}]`, "spec.backends[0].port.number", "0 is not from 1 to 65535"},
		{"retry without a backoff", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: Retry
metadata: {name: r, namespace: bookbuyer}
spec:
  source: {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
  destinations: [{kind: Service, name: bookstore, namespace: bookstore}]
  retryPolicy: {retryOn: 5xx, perTryTimeout: 1s, numRetries: 3}`, "spec.retryPolicy.retryBackoffBaseInterval", "is required: give a duration"},
		{"rate limit by the day", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: u, namespace: httpbin}
spec:
  host: httpbin
  httpRoutes: [{path: /get, rateLimit: {local: {requests: 5, unit: day}}}]`, "spec.httpRoutes[0].rateLimit.local.unit", `unit "day" is not supported: use second, minute or hour`},
		{"rate limit answered with a success", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: u, namespace: httpbin}
spec:
  host: httpbin
  rateLimit: {local: {http: {requests: 5, unit: second, responseStatusCode: 200}}}`, "spec.rateLimit.local.http.responseStatusCode", "200 is not from 400 to 599"},
		{"no spec", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: u, namespace: httpbin}`, "spec", "is required: write the UpstreamTrafficSetting's spec"},
		{"a complete retry", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: Retry
metadata: {name: r, namespace: bookbuyer}
spec:
  source: {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
  destinations: [{kind: Service, name: bookstore, namespace: bookstore}]
  retryPolicy: {retryOn: 5xx, perTryTimeout: 1s, numRetries: 3, retryBackoffBaseInterval: 25ms}`, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := Decode([]byte(tt.doc), "test.yaml")
			if err != nil {
				t.Fatal(err)
			}
			_, errs, warns := Translate(rs)
			if tt.want == "" {
				if len(errs) > 0 || len(warns) != 1 || warns[0].Message != NotEnforcedYet {
					t.Fatalf("errors %v, warnings %v; want only %q", errs, warns, NotEnforcedYet)
				}
				return
			}
			if len(errs) != 1 || errs[0].Field != tt.field || !strings.Contains(errs[0].Message, tt.want) {
				t.Fatalf("errors %v; want one at %s saying %q", errs, tt.field, tt.want)
			}
			if len(warns) > 0 {
				t.Errorf("warnings %v for an object left out", warns)
			}
		})
	}
}
