package kube_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/proxy/control"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestControlPlaneKubeMode runs the control plane in Kubernetes mode against
// the test cluster and connects the sidecar's own control-plane client as a
// pod's sidecar would: it certifies with the pod's projected service-account
// token and receives the pod's inbound config.
func TestControlPlaneKubeMode(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "bookstore", true)
	pod := c.MeshedPod(t, ns, "bookstore-v1", "bookstore", "10.244.0.211")
	c.Service(t, ns, "bookstore", corev1.ServicePort{Name: "bookstore-port", Port: 14001}, true, pod)

	state := t.TempDir()
	a, _ := c.ControlPlane(t, controlplane.KubeOptions{StateDir: state, Namespace: ns,
		Inject: inject.Config{ProxyImage: "localhost/trellis/proxy:test", ControlPlane: "10.96.0.20:15128"}})

	roots := x509.NewCertPool()
	rootPEM, err := os.ReadFile(filepath.Join(state, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(rootPEM); b == nil || !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("the CA's root does not parse")
	}
	exp := int64(600)
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "bookstore", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"trellis"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	// The token as the kubelet projects it: a file, read at each certification.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := &spiffe.Credentials{}
	cl := control.New(control.Config{Address: a.GRPC, Roots: roots, CredentialFile: tokenFile, WorkloadID: ns + "/bookstore-v1", Credentials: creds})
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
	other, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "bookstore", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"someone-else"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := control.New(control.Config{Address: a.GRPC, Roots: roots, Credential: other.Status.Token, WorkloadID: ns + "/bookstore-v1", Credentials: &spiffe.Credentials{}})
	if err := bad.Certify(cctx); err == nil {
		t.Error("Certify with a token for another audience succeeded")
	}
}

// TestInjectionWebhook registers the control plane's webhook with the real API
// server and creates a pod in a meshed namespace: the stored pod has the
// sidecar as a native sidecar, and the namespace has the CA bundle it mounts.
// A pod of a namespace outside the mesh is left alone.
func TestInjectionWebhook(t *testing.T) {
	c := kubetest.New(t)
	meshedNS := c.Namespace(t, "bookstore", true)
	outsideNS := c.Namespace(t, "outside", false)
	state := t.TempDir()
	info, _ := c.ControlPlane(t, controlplane.KubeOptions{StateDir: state, Namespace: meshedNS,
		Inject: inject.Config{ProxyImage: "localhost/trellis/proxy:test", ControlPlane: "10.96.0.20:15128"}})
	rootPEM, err := os.ReadFile(filepath.Join(state, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	name := "trellis-test-" + meshedNS
	fail := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	url := "https://" + info.Webhook + "/mutate"
	timeout := int32(5)
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "inject.trellis.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: rootPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: []string{meshedNS, outsideNS}}}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(bg, wh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(bg, name, metav1.DeleteOptions{})
	})

	// The API server may take a moment to start calling a new webhook.
	var pod *corev1.Pod
	for i := 0; ; i++ {
		pod = c.Pod(t, meshedNS, fmt.Sprintf("bookstore-v1-%d", i), "bookstore", fmt.Sprintf("10.244.0.%d", 220+i))
		if pod.Annotations[inject.InjectedAnnotation] == "true" || i == 20 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if len(pod.Spec.InitContainers) == 0 || pod.Spec.InitContainers[0].Name != inject.ProxyContainer ||
		pod.Spec.InitContainers[0].RestartPolicy == nil || *pod.Spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("pod %s/%s was not injected with a native sidecar: init containers %+v", meshedNS, pod.Name, pod.Spec.InitContainers)
	}
	kubetest.Eventually(t, 10*time.Second, "the CA bundle in "+meshedNS, func() error {
		cm, err := c.Client.CoreV1().ConfigMaps(meshedNS).Get(bg, inject.CABundleConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !strings.Contains(cm.Data["ca.pem"], strings.TrimSpace(string(rootPEM))) {
			return fmt.Errorf("ca.pem does not hold the root")
		}
		return nil
	})
	plain := c.Pod(t, outsideNS, "plain", "default-sa", "10.244.0.250")
	if len(plain.Spec.InitContainers) != 0 || plain.Annotations[inject.InjectedAnnotation] != "" {
		t.Errorf("a pod outside the mesh was injected: %+v", plain.Spec.InitContainers)
	}
}

// TestCAKeptInSecret starts the control plane twice with empty state
// directories, as two pods of its Deployment would: the second signs with the
// root the first made, which it found in the trellis-ca Secret.
func TestCAKeptInSecret(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "trellis-ca-test", false)
	first := t.TempDir()
	_, stop := c.ControlPlane(t, controlplane.KubeOptions{StateDir: first, Namespace: ns})
	stop()
	second := t.TempDir()
	c.ControlPlane(t, controlplane.KubeOptions{StateDir: second, Namespace: ns})
	a, err := os.ReadFile(filepath.Join(first, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(second, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("the second control plane made a new root instead of restoring the first's from the Secret")
	}
	sec, err := c.Client.CoreV1().Secrets(ns).Get(context.Background(), controlplane.CASecretName, metav1.GetOptions{})
	if err != nil || len(sec.Data["root.key"]) == 0 {
		t.Errorf("Secret %s/%s: %v, keys %d", ns, controlplane.CASecretName, err, len(sec.Data))
	}
}
