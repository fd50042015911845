package kube_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/proxy/control"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// TestControlPlaneKubeMode runs the control plane in Kubernetes mode against
// the test cluster and connects the sidecar's own control-plane client as a
// pod's sidecar would: it certifies with the pod's projected service-account
// token and receives the pod's inbound config.
func TestControlPlaneKubeMode(t *testing.T) {
	c := testCluster(t)
	ns := c.namespace(t, "bookstore", true)
	pod := c.pod(t, ns, "bookstore-v1", "bookstore", "10.244.0.211")
	c.service(t, ns, "bookstore", corev1.ServicePort{Name: "bookstore-port", Port: 14001}, true, pod)

	state := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	type addrs struct{ grpc, health string }
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- controlplane.RunKube(ctx, controlplane.KubeOptions{
			StateDir: state, GRPCAddr: "127.0.0.1:0", HealthAddr: "127.0.0.1:0",
			Client: c.client, Dynamic: c.dynamic,
			Ready: func(g, h string) { ready <- addrs{g, h} },
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunKube: %v", err)
		}
	})
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("RunKube: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("control plane not serving after 30s")
	}

	roots := x509.NewCertPool()
	rootPEM, err := os.ReadFile(filepath.Join(state, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(rootPEM); b == nil || !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("the CA's root does not parse")
	}
	exp := int64(600)
	tr, err := c.client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "bookstore", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"trellis"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	creds := &spiffe.Credentials{}
	cl := control.New(control.Config{Address: a.grpc, Roots: roots, Credential: tr.Status.Token, WorkloadID: ns + "/bookstore-v1", Credentials: creds})
	if err := cl.Certify(cctx); err != nil {
		t.Fatalf("Certify with the pod's token: %v", err)
	}
	if got, want := creds.ID().String(), "spiffe://cluster.local/ns/"+ns+"/sa/bookstore"; got != want {
		t.Errorf("certified identity = %q, want %q", got, want)
	}
	got := make(chan *proxyv1.InboundConfig, 1)
	go cl.WatchInbound(cctx, func(m *proxyv1.InboundConfig) error {
		select {
		case got <- m:
		default:
		}
		return nil
	})
	select {
	case m := <-got:
		if m.GetWorkload() != "bookstore-v1" || m.GetNamespace() != ns || m.GetIdentity() != creds.ID().String() {
			t.Errorf("inbound config for %s/%s identity %s, want %s/bookstore-v1 %s", m.GetNamespace(), m.GetWorkload(), m.GetIdentity(), ns, creds.ID())
		}
	case <-cctx.Done():
		t.Fatal("no inbound config within 20s")
	}

	// A token for another audience certifies nothing.
	other, err := c.client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "bookstore", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"someone-else"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := control.New(control.Config{Address: a.grpc, Roots: roots, Credential: other.Status.Token, WorkloadID: ns + "/bookstore-v1", Credentials: &spiffe.Credentials{}})
	if err := bad.Certify(cctx); err == nil {
		t.Error("Certify with a token for another audience succeeded")
	}
}
