package kube

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestInstallKeepsClusterGatewayCRDs: a cluster whose HTTPRoute CRD is its
// own (brought by a gateway's installation, not labelled as Trellis's) keeps
// it through trellis install and through trellis uninstall --delete-crds,
// which deletes only the CRDs Trellis installed. The control plane's images
// are not needed: install is run without --wait.
func TestInstallKeepsClusterGatewayCRDs(t *testing.T) {
	c := kubetest.New(t)
	ctx := context.Background()
	const own = "httproutes.gateway.networking.k8s.io"
	crds := c.Dynamic.Resource(kubetest.CRDResource)
	// The cluster's own: Trellis's label gone, and a mark of the test's
	// that a replacement by Trellis's copy would drop.
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null},"annotations":{"test.trellis.io/cluster-own":"yes"}}}`, manifests.PartOfLabel)
	if _, err := crds.Patch(ctx, own, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			trellis(t, "uninstall")
		}
		// Trellis's CRDs as the other tests expect them, label included.
		kubetest.New(t)
		crds.Patch(context.Background(), own, types.MergePatchType, []byte(`{"metadata":{"annotations":{"test.trellis.io/cluster-own":null}}}`), metav1.PatchOptions{})
	})
	isOwn := func() error {
		got, err := crds.Get(ctx, own, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.GetLabels()[manifests.PartOfLabel] != "" || got.GetAnnotations()["test.trellis.io/cluster-own"] != "yes" {
			return fmt.Errorf("CRD %s was replaced: labels %v, annotations %v", own, got.GetLabels(), got.GetAnnotations())
		}
		return nil
	}

	progress := trellis(t, "install", "--set", "pullPolicy=Never")
	if !strings.Contains(progress, "kept the cluster's own CRD "+own+" (Gateway API v") {
		t.Errorf("install does not say it kept %s:\n%s", own, progress)
	}
	if err := isOwn(); err != nil {
		t.Error(err)
	}
	// Trellis's other CRDs were applied, the GRPCRoute one among them.
	if got, err := crds.Get(ctx, "grpcroutes.gateway.networking.k8s.io", metav1.GetOptions{}); err != nil || got.GetLabels()[manifests.PartOfLabel] != "trellis" {
		t.Errorf("the GRPCRoute CRD after install: labels %v, err %v; want Trellis's", got.GetLabels(), err)
	}

	out := trellis(t, "uninstall", "--delete-crds")
	uninstalled = true
	if !strings.Contains(out, "kept the cluster's own CRD "+own) {
		t.Errorf("uninstall --delete-crds does not say it kept %s:\n%s", own, out)
	}
	if err := isOwn(); err != nil {
		t.Errorf("after uninstall --delete-crds: %v", err)
	}
	kubetest.Eventually(t, 60*time.Second, "Trellis's own CRDs deleted", func() error {
		for _, n := range []string{"grpcroutes.gateway.networking.k8s.io", "trafficsplits.split.smi-spec.io"} {
			if _, err := crds.Get(ctx, n, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("CRD %s still there (%v)", n, err)
			}
		}
		return nil
	})
}
