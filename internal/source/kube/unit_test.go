package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/trellis-mesh/trellis/internal/model"
)

func TestPortProtocol(t *testing.T) {
	ap := func(s string) *string { return &s }
	tests := []struct {
		port corev1.ServicePort
		want model.Protocol
	}{
		{corev1.ServicePort{Name: "bookstore-port"}, model.ProtocolHTTP},
		{corev1.ServicePort{Name: "tcp-mysql"}, model.ProtocolTCP},
		{corev1.ServicePort{Name: "tcp-server-first-mysql"}, model.ProtocolTCPServerFirst},
		{corev1.ServicePort{Name: "grpc-api"}, model.ProtocolGRPC},
		{corev1.ServicePort{Name: "grpc"}, model.ProtocolGRPC},
		{corev1.ServicePort{Name: "tcpish"}, model.ProtocolHTTP},
		{corev1.ServicePort{Name: "client", AppProtocol: ap("tcp-server-first")}, model.ProtocolTCPServerFirst},
		{corev1.ServicePort{Name: "http-x", AppProtocol: ap("tcp")}, model.ProtocolTCP},
		// An appProtocol Trellis does not know falls back to the name.
		{corev1.ServicePort{Name: "grpc-x", AppProtocol: ap("kubernetes.io/h2c")}, model.ProtocolGRPC},
	}
	for _, tt := range tests {
		if got := portProtocol(tt.port); got != tt.want {
			t.Errorf("portProtocol(%+v) = %s, want %s", tt.port, got, tt.want)
		}
	}
}

// The server's own fields do not reach the translators, which would refuse
// them as unknown; the user's do.
func TestResourceOfDropsServerFields(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "split.smi-spec.io/v1alpha2",
		"kind":       "TrafficSplit",
		"metadata": map[string]any{
			"name": "bookstore-split", "namespace": "bookstore", "uid": "1", "resourceVersion": "7", "generation": int64(2),
			"managedFields": []any{map[string]any{"manager": "kubectl"}},
			"annotations":   map[string]any{"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "books"},
		},
		"spec":   map[string]any{"service": "bookstore.bookstore", "backends": []any{map[string]any{"service": "bookstore-v1", "weight": int64(100)}}},
		"status": map[string]any{"anything": true},
	}}
	rs, err := resourceOf(u)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"apiVersion":"split.smi-spec.io/v1alpha2","kind":"TrafficSplit","metadata":{"annotations":{"team":"books"},"name":"bookstore-split","namespace":"bookstore"},"spec":{"backends":[{"service":"bookstore-v1","weight":100}],"service":"bookstore.bookstore"}}`
	if len(rs) != 1 {
		t.Fatalf("%d resources, want 1", len(rs))
	}
	if diff := cmp.Diff(want, string(rs[0].Raw)); diff != "" {
		t.Errorf("raw (-want +got):\n%s", diff)
	}
}

func TestServiceAccount(t *testing.T) {
	tests := []struct {
		user string
		want model.Identity
		ok   bool
	}{
		{"system:serviceaccount:bookstore:bookstore-v2", model.Identity{Namespace: "bookstore", Account: "bookstore-v2"}, true},
		{"system:serviceaccount:bookstore", model.Identity{}, false},
		{"system:serviceaccount::x", model.Identity{}, false},
		{"system:serviceaccount:a:b:c", model.Identity{}, false},
		{"kubernetes-admin", model.Identity{}, false},
	}
	for _, tt := range tests {
		got, ok := serviceAccount(tt.user)
		if got != tt.want || ok != tt.ok {
			t.Errorf("serviceAccount(%q) = %v, %v; want %v, %v", tt.user, got, ok, tt.want, tt.ok)
		}
	}
}
