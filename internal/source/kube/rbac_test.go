package kube_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/internal/syncbuf"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// installedClusterRole is the control plane's ClusterRole as trellis install
// applies it.
func installedClusterRole(t *testing.T) rbacv1.ClusterRole {
	t.Helper()
	b, err := manifests.InstallYAML(manifests.DefaultValues())
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal(doc, &role); err != nil {
			t.Fatal(err)
		}
		if role.Kind == "ClusterRole" {
			return role
		}
	}
	t.Fatal("install.yaml has no ClusterRole")
	return rbacv1.ClusterRole{}
}

// TestSourceWithoutServiceAccountsRule runs the source as a control plane
// whose ClusterRole is the installed one without serviceaccounts, as after an
// upgrade of the image alone: it syncs and serves the mesh, says in its log
// what is off and how to turn it on, and does not warn of missing accounts it
// cannot see.
func TestSourceWithoutServiceAccountsRule(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "oldrbac", true)
	ctx := context.Background()

	role := installedClusterRole(t)
	var rules []rbacv1.PolicyRule
	dropped := false
	for _, r := range role.Rules {
		if i := slices.Index(r.Resources, "serviceaccounts"); i >= 0 {
			r.Resources = slices.Delete(slices.Clone(r.Resources), i, i+1)
			dropped = true
			if len(r.Resources) == 0 {
				continue
			}
		}
		rules = append(rules, r)
	}
	if !dropped {
		t.Fatal("the installed ClusterRole has no serviceaccounts rule to drop")
	}
	name := ns + "-control-plane"
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Client.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "trellis", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})

	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":trellis"}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The binding can take a moment to reach the authorizer: wait until the
	// role's own rules hold and the dropped one is refused.
	kubetest.Eventually(t, 10*time.Second, "the old role in force", func() error {
		if _, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			return err
		}
		if _, err := client.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{Limit: 1}); err == nil {
			return fmt.Errorf("ServiceAccounts may still be listed")
		}
		return nil
	})

	c.MeshedPod(t, ns, "bookstore-v1", "bookstore", "10.244.0.211")
	c.Apply(t, fmt.Sprintf(`apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: bookstore, namespace: %s}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: %[1]s}
  rules: [{kind: TCPRoute, name: bookstore-tcp}]
  sources: [{kind: ServiceAccount, name: bookbuyre, namespace: %[1]s}]
`, ns))

	var logs syncbuf.Buffer
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	src := kube.New(kube.Options{Client: client, Dynamic: dyn, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	runSynced(t, runCtx, src, &logs)
	kubetest.Eventually(t, 10*time.Second, "the TrafficTarget and the pod in the snapshot", func() error {
		snap := src.Snapshot()
		if _, ok := snap.Workload(ns + "/bookstore-v1"); !ok {
			return fmt.Errorf("no bookstore-v1 yet")
		}
		if len(snap.TargetsFor(model.Identity{Namespace: ns, Account: "bookstore"})) == 0 {
			return fmt.Errorf("no TrafficTarget yet")
		}
		return nil
	})
	if !strings.Contains(logs.String(), "may not list ServiceAccounts") {
		t.Errorf("the log does not say that the ServiceAccount check is off:\n%s", logs.String())
	}
	said := false
	for _, p := range src.Problems() {
		if strings.Contains(p.Message, "ServiceAccount") && strings.Contains(p.Message, "does not exist") {
			t.Errorf("a missing-account warning without the informer to know: %+v", p)
		}
		// What trellis check shows.
		said = said || (p.Object == "ClusterRole trellis-control-plane" && p.Warning && strings.Contains(p.Message, "may not list serviceaccounts"))
	}
	if !said {
		t.Errorf("no warning on the ClusterRole among the problems: %+v", src.Problems())
	}
}
