package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/inject"
)

type namespaceOptions struct {
	*globals
	kubeconfig string
	output     string
}

func newNamespaceCmd(g *globals) *cobra.Command {
	o := &namespaceOptions{globals: g}
	cmd := &cobra.Command{
		Use:     "namespace",
		Aliases: []string{"ns"},
		Short:   "Add namespaces to the mesh on Kubernetes, remove them, list them",
		Long: `A namespace is in the mesh when it has the label trellis.io/inject=enabled, or OSM's
openservicemesh.io/monitored-by label (with the sidecar-injection annotation for injection), so
namespaces added with osm namespace add stay in the mesh. Pods started after a namespace is
added get a sidecar; restart running ones (kubectl rollout restart) to mesh them.`,
		Example: `  trellis namespace add bookstore bookbuyer
  trellis namespace list -o json
  trellis namespace remove bookthief`,
	}
	cmd.PersistentFlags().StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	add := &cobra.Command{
		Use:     "add NAMESPACE...",
		Short:   "Add namespaces to the mesh (label trellis.io/inject=enabled)",
		Example: "  trellis namespace add bookstore bookbuyer bookthief bookwarehouse",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.label(cmd.Context(), args, map[string]any{inject.InjectKey: "enabled"}, nil, cmd.OutOrStdout(), "added to the mesh")
		},
	}
	remove := &cobra.Command{
		Use:     "remove NAMESPACE...",
		Short:   "Remove namespaces from the mesh (Trellis's label and OSM's label and annotation)",
		Example: "  trellis namespace remove bookthief",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.label(cmd.Context(), args, map[string]any{inject.InjectKey: nil, inject.OSMMonitoredBy: nil},
				map[string]any{inject.OSMSidecarInjectKey: nil}, cmd.OutOrStdout(), "removed from the mesh; restart its pods to run them without sidecars")
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the namespaces in the mesh",
		Example: "  trellis namespace list\n  trellis namespace list -o json",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.list(cmd.Context(), cmd.OutOrStdout()) },
	}
	list.Flags().StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: a table)")
	cmd.AddCommand(add, remove, list)
	return cmd
}

func (o *namespaceOptions) client() (kubernetes.Interface, error) {
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// label merge-patches the namespaces' labels and annotations (nil removes).
func (o *namespaceOptions) label(ctx context.Context, names []string, labels, annotations map[string]any, w io.Writer, done string) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	meta := map[string]any{"labels": labels}
	if annotations != nil {
		meta["annotations"] = annotations
	}
	patch, _ := json.Marshal(map[string]any{"metadata": meta})
	for _, n := range names {
		if n == "trellis-system" || n == "kube-system" {
			return fmt.Errorf("namespace %s cannot be in the mesh: it runs the control plane or the cluster itself", n)
		}
		if _, err := c.CoreV1().Namespaces().Patch(ctx, n, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("namespace %s: %w", n, err)
		}
		fmt.Fprintf(w, "namespace %s %s\n", n, done)
	}
	return nil
}

// meshedNamespace is a row of `trellis namespace list`.
type meshedNamespace struct {
	Name      string `json:"name"`
	By        string `json:"by"`        // trellis or osm
	Injection bool   `json:"injection"` // whether new pods get a sidecar
}

func (o *namespaceOptions) list(ctx context.Context, w io.Writer) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var rows []meshedNamespace
	for _, ns := range nss.Items {
		switch {
		case ns.Labels[inject.InjectKey] == "enabled":
			rows = append(rows, meshedNamespace{Name: ns.Name, By: "trellis", Injection: true})
		case ns.Labels[inject.OSMMonitoredBy] != "":
			rows = append(rows, meshedNamespace{Name: ns.Name, By: "osm (" + ns.Labels[inject.OSMMonitoredBy] + ")", Injection: ns.Annotations[inject.OSMSidecarInjectKey] == "enabled"})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return output(w, o.output, rows, func() error {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tIN MESH BY\tINJECTION")
		for _, r := range rows {
			inj := "disabled"
			if r.Injection {
				inj = "enabled"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.By, inj)
		}
		return tw.Flush()
	})
}
