package controlplane

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func TestValidate(t *testing.T) {
	req := func(ns, doc string) *admissionv1.AdmissionRequest {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return &admissionv1.AdmissionRequest{Namespace: ns, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: j}}
	}
	tests := []struct {
		name, ns, doc string
		allowed       bool
		want          string // in the message or a warning
	}{
		{"a valid split, with the server's fields", "bookstore", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s, namespace: bookstore, uid: "1", resourceVersion: "2", managedFields: [{manager: kubectl}]}
spec: {service: bookstore, backends: [{service: bookstore-v1, weight: 1}]}
status: {whatever: true}`, true, ""},
		{"weights sum to 0", "bookstore", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s}
spec: {service: bookstore, backends: [{service: bookstore-v1, weight: 0}]}`, false, "spec.backends: weights sum to 0"},
		{"TrafficTarget outside its destination's namespace", "bookbuyer", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: bookstore}
  sources: [{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}]`, false, "spec.destination.namespace"},
		{"unknown field", "bookstore", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s}
spec: {service: bookstore, backend: [{service: bookstore-v1, weight: 1}]}`, false, "spec.backend: unknown field"},
		{"an OSM policy is accepted with a warning", "bookstore", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: Retry
metadata: {name: r}
spec:
  source: {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
  destinations: [{kind: Service, name: bookstore, namespace: bookstore}]
  retryPolicy: {retryOn: 5xx, perTryTimeout: 1s, numRetries: 3, retryBackoffBaseInterval: 25ms}`, true, "not enforced by Trellis yet"},
		{"an HTTPRoute written for v1beta1, which the Gateway API still serves", "bookstore", `apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules: [{backendRefs: [{name: bookstore-v2, port: 14001}]}]`, true, ""},
		{"a GRPCRoute of a version the Gateway API does not serve", "bookstore", `apiVersion: gateway.networking.k8s.io/v1beta1
kind: GRPCRoute
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]`, false, "use apiVersion gateway.networking.k8s.io/v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := validate(req(tt.ns, tt.doc))
			if resp.Allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (%+v)", resp.Allowed, tt.allowed, resp.Result)
			}
			text := strings.Join(resp.Warnings, "\n")
			if resp.Result != nil {
				text += resp.Result.Message
			}
			if !strings.Contains(text, tt.want) {
				t.Errorf("response %q, want it to contain %q", text, tt.want)
			}
		})
	}
}
