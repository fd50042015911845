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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

// installedRules are the rules of the control plane's Role or ClusterRole
// (kind) as trellis install applies them.
func installedRules(t *testing.T, kind string) []rbacv1.PolicyRule {
	t.Helper()
	b, err := manifests.InstallYAML(manifests.DefaultValues())
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var role rbacv1.ClusterRole // a Role's fields are the same
		if err := yaml.Unmarshal(doc, &role); err != nil {
			t.Fatal(err)
		}
		if role.Kind == kind {
			return role.Rules
		}
	}
	t.Fatalf("install.yaml has no %s", kind)
	return nil
}

// grant gives the ServiceAccounts of ns the rules, cluster-wide (kind
// ClusterRole) or in ns (Role), until the end of the test.
func grant(t *testing.T, c *kubetest.Cluster, kind, ns string, rules []rbacv1.PolicyRule, accounts ...string) {
	t.Helper()
	ctx := context.Background()
	name := ns + "-" + accounts[0]
	var subjects []rbacv1.Subject
	for _, a := range accounts {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: a, Namespace: ns})
	}
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
	switch kind {
	case "ClusterRole":
		if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{}) })
		if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, RoleRef: ref, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{}) })
	case "Role": // deleted with the namespace
		if _, err := c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, RoleRef: ref, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("grant: kind %s is neither Role nor ClusterRole", kind)
	}
}

// clientsAs returns clients that act as user (impersonated).
func clientsAs(t *testing.T, c *kubetest.Cluster, user string) (kubernetes.Interface, dynamic.Interface) {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client, dyn
}

// account is "system:serviceaccount:ns:name", as which clientsAs acts.
func account(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }

// TestSourceWithoutServiceAccountsRule runs the source as a control plane
// whose ClusterRole is the installed one without serviceaccounts, as after an
// upgrade of the image alone: it syncs and serves the mesh, says in its log
// what is off and how to turn it on, and does not warn of missing accounts it
// cannot see.
func TestSourceWithoutServiceAccountsRule(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "oldrbac", true)
	ctx := context.Background()

	var rules []rbacv1.PolicyRule
	dropped := false
	for _, r := range installedRules(t, "ClusterRole") {
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
	grant(t, c, "ClusterRole", ns, rules, "trellis")
	client, dyn := clientsAs(t, c, account(ns, "trellis"))
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
	c.Apply(t, misspeltSourceTarget(ns))

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

// TestStatusWriterLeaseRBAC runs the source with leader election as the
// control plane's ServiceAccount would: with the installed ClusterRole and
// Role it holds the Lease and writes status; with the ClusterRole alone, as
// after an upgrade of the image alone, it says in its log that every replica
// writes and how to fix it, and writes status as before the election.
func TestStatusWriterLeaseRBAC(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "leaserbac", true)
	ctx := context.Background()
	grant(t, c, "ClusterRole", ns, installedRules(t, "ClusterRole"), "elected", "unelected")
	grant(t, c, "Role", ns, installedRules(t, "Role"), "elected")
	elected, electedDyn := clientsAs(t, c, account(ns, "elected"))
	unelected, unelectedDyn := clientsAs(t, c, account(ns, "unelected"))
	kubetest.Eventually(t, 10*time.Second, "the roles in force", func() error {
		for _, cl := range []kubernetes.Interface{elected, unelected} {
			if _, err := cl.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
				return err
			}
		}
		if _, err := elected.CoordinationV1().Leases(ns).Get(ctx, kube.DefaultLeaseName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("get the Lease with the Role: %v, want not found", err)
		}
		if _, err := unelected.CoordinationV1().Leases(ns).Get(ctx, kube.DefaultLeaseName, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			return fmt.Errorf("get the Lease without the Role: %v, want forbidden", err)
		}
		return nil
	})

	// run runs a source as id until it has written the status of a new
	// TrafficSplit, then calls while, and returns the source's log.
	run := func(client kubernetes.Interface, dyn dynamic.Interface, id, split string, while func()) string {
		t.Helper()
		var logs syncbuf.Buffer
		runCtx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel) // also when runSynced fails the test
		src := kube.New(kube.Options{Client: client, Dynamic: dyn, WriteStatus: true, LeaderElection: testElection(ns, id),
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		done := runSynced(t, runCtx, src, &logs)
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", id, err)
			}
			if t.Failed() {
				t.Logf("log of %s:\n%s", id, logs.String())
			}
		}()
		c.Apply(t, brokenSplit(ns, split))
		waitRefused(t, c, ns, split)
		while()
		return logs.String()
	}

	logs := run(unelected, unelectedDyn, "unelected", "without-role", func() {
		if _, err := c.Client.CoordinationV1().Leases(ns).Get(ctx, kube.DefaultLeaseName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("a Lease without the Role to hold one: %v", err)
		}
	})
	if !strings.Contains(logs, "written without leader election, by every replica") || !strings.Contains(logs, "apply its current Role") {
		t.Errorf("without the Role, the log does not say status is written without election and how to fix it:\n%s", logs)
	}

	logs = run(elected, electedDyn, "elected", "with-role", func() {
		if holder, _, err := leaseHolder(t, c, ns); err != nil || holder != "elected" {
			t.Errorf("with the installed Role: Lease holder %q (%v), want elected", holder, err)
		}
	})
	if !strings.Contains(logs, "holds the Lease and writes status conditions") || strings.Contains(logs, "without leader election") {
		t.Errorf("with the installed Role, the source did not write as the Lease's holder:\n%s", logs)
	}
}
