package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/inject"
)

type metricsOptions struct {
	*globals
	kubeconfig string
	namespaces []string
}

func newMetricsCmd(g *globals) *cobra.Command {
	o := &metricsOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "metrics",
		Short: "Turn Prometheus scraping of the sidecars on or off, per namespace, on Kubernetes",
		Long: `enable annotates the namespaces with openservicemesh.io/metrics=enabled, as OSM did, and their
meshed pods with prometheus.io/scrape, port (the sidecar's admin port) and path, so that a
Prometheus configured for those annotations scrapes the sidecars; pods injected later get them
too. disable removes them.`,
		Example: `  trellis metrics enable --namespace bookstore,bookbuyer
  trellis metrics disable --namespace bookthief`,
	}
	cmd.PersistentFlags().StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	cmd.PersistentFlags().StringSliceVar(&o.namespaces, "namespace", nil, "the `namespaces` (comma-separated or repeated; required)")
	for _, on := range []bool{true, false} {
		use, short := "disable", "Stop Prometheus scraping the sidecars of namespaces"
		if on {
			use, short = "enable", "Let Prometheus scrape the sidecars of namespaces"
		}
		cmd.AddCommand(&cobra.Command{
			Use:     use,
			Short:   short,
			Example: "  trellis metrics " + use + " --namespace bookstore,bookbuyer",
			Args:    cobra.NoArgs,
			RunE:    func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), on, cmd.OutOrStdout()) },
		})
	}
	return cmd
}

func (o *metricsOptions) run(ctx context.Context, on bool, w io.Writer) error {
	if len(o.namespaces) == 0 {
		return fmt.Errorf("--namespace is required: name the namespaces")
	}
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	// A merge patch: values set, nil removes.
	nsValue, podValues, state := any(nil), map[string]any{}, "disabled"
	if on {
		nsValue, state = "enabled", "enabled"
	}
	for k, v := range inject.ScrapeAnnotations() {
		podValues[k] = nil
		if on {
			podValues[k] = v
		}
	}
	nsPatch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{inject.MetricsAnnotation: nsValue}}})
	podPatch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": podValues}})
	for _, ns := range o.namespaces {
		if _, err := c.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, nsPatch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("pods of %s: %w", ns, err)
		}
		n := 0
		for _, p := range pods.Items {
			if p.Annotations[inject.InjectedAnnotation] != "true" {
				continue
			}
			if _, err := c.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, podPatch, metav1.PatchOptions{}); err != nil {
				return fmt.Errorf("pod %s/%s: %w", ns, p.Name, err)
			}
			n++
		}
		fmt.Fprintf(w, "namespace %s: metrics %s on %d meshed pods\n", ns, state, n)
	}
	return nil
}
