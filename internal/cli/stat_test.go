package cli

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubeWorkload: a pod's row in `trellis stat --kubernetes` is its
// Deployment (through the ReplicaSet), its other controller, or itself.
func TestKubeWorkload(t *testing.T) {
	ctrl := true
	pod := func(name string, labels map[string]string, kind, owner string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if owner != "" {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: owner, Controller: &ctrl}}
		}
		return p
	}
	for _, tt := range []struct {
		pod  *corev1.Pod
		want string
	}{
		{pod("bookstore-v2-6f9c7d-x2k4q", map[string]string{"pod-template-hash": "6f9c7d"}, "ReplicaSet", "bookstore-v2-6f9c7d"), "deployment/bookstore-v2"},
		// A ReplicaSet of its own (no Deployment's hash in its name) is the workload.
		{pod("cache-a1b2c", map[string]string{"pod-template-hash": "zzz"}, "ReplicaSet", "cache"), "replicaset/cache"},
		{pod("mysql-0", nil, "StatefulSet", "mysql"), "statefulset/mysql"},
		// A Deployment and a StatefulSet of one name are two workloads.
		{pod("mysql-7d4b9c-q8w2e", map[string]string{"pod-template-hash": "7d4b9c"}, "ReplicaSet", "mysql-7d4b9c"), "deployment/mysql"},
		{pod("logs-x7k2p", nil, "DaemonSet", "logs"), "daemonset/logs"},
		{pod("restock-8xk2p", nil, "Job", "restock"), "job/restock"},
		{pod("bookthief", nil, "", ""), "pod/bookthief"},
	} {
		if got := kubeWorkload(tt.pod); got != tt.want {
			t.Errorf("kubeWorkload(%s) = %q, want %q", tt.pod.Name, got, tt.want)
		}
	}
}
