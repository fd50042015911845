package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

func newProxyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "proxy",
		Short:   "Inspect sidecars",
		Example: "  trellis proxy config bookstore/bookstore-v1",
	}
	cmd.AddCommand(newProxyConfigCmd(g))
	return cmd
}

type proxyConfigOptions struct {
	*globals
	output     string
	kubeconfig string
	kube       bool
	namespace  string
}

func newProxyConfigCmd(g *globals) *cobra.Command {
	o := &proxyConfigOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "config WORKLOAD | --kubernetes [-n NAMESPACE] POD",
		Short: "Print a sidecar's effective config: identity, inbound policy, destinations, defaults",
		Long: `Prints what one sidecar holds right now, read from its admin endpoint: its identity and
certificate expiry, its inbound policy, every destination its app has called with routes,
weights, endpoints and identities, and every default (timeouts included). WORKLOAD is a
workload ID, NAMESPACE/NAME, or NAME when it is unique.

With --kubernetes, POD is a pod of a meshed namespace; its sidecar's admin endpoint is read
through the API server's pod proxy, so no port-forward is needed.`,
		Example: "  trellis proxy config bookstore/bookstore-v1\n  trellis proxy config bookbuyer -o json\n  trellis proxy config --kubernetes -n bookstore bookstore-v1-5d8f9c7b6-x2x7q",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), args[0])
		},
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "json", "json or yaml")
	cmd.Flags().BoolVar(&o.kube, "kubernetes", false, "POD is a Kubernetes pod")
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "default", "with --kubernetes: the pod's `namespace`")
	cmd.Flags().StringVar(&o.kubeconfig, "kubeconfig", "", "with --kubernetes: kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	return cmd
}

// runKube reads a pod's sidecar config through the API server's pod proxy.
func (o *proxyConfigOptions) runKube(ctx context.Context, w io.Writer, pod string) error {
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	b, err := c.CoreV1().Pods(o.namespace).ProxyGet("http", pod, strconv.Itoa(inject.AdminPort), "/config", nil).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("sidecar of pod %s/%s (admin port %d, through the API server): %w; is the pod meshed and ready?", o.namespace, pod, inject.AdminPort, err)
	}
	var doc json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("sidecar of pod %s/%s: /config is not JSON: %w", o.namespace, pod, err)
	}
	return output(w, o.output, doc, func() error { return output(w, "json", doc, nil) })
}

// findWorkload resolves an ID, NAMESPACE/NAME or NAME to one registration.
func findWorkload(ws []local.WorkloadStatus, q string) (local.WorkloadStatus, error) {
	var hits []local.WorkloadStatus
	for _, w := range ws {
		if w.Matches(q) {
			hits = append(hits, w)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		return local.WorkloadStatus{}, fmt.Errorf("no workload %q: `trellis get workloads` lists them", q)
	}
	ids := make([]string, len(hits))
	for i, h := range hits {
		ids[i] = h.ID
	}
	return local.WorkloadStatus{}, fmt.Errorf("%q matches several workloads (%s): give the ID", q, strings.Join(ids, ", "))
}

func (o *proxyConfigOptions) run(ctx context.Context, w io.Writer, q string) error {
	if o.kube {
		return o.runKube(ctx, w, q)
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	ws, err := c.Workloads(ctx)
	if err != nil {
		return err
	}
	wl, err := findWorkload(ws, q)
	if err != nil {
		return err
	}
	var cfg json.RawMessage
	if err := getJSON(&http.Client{Timeout: 5 * time.Second}, "http://"+wl.AdminAddress+"/config", &cfg); err != nil {
		return fmt.Errorf("sidecar of %s: %w", wl.ID, err)
	}
	return output(w, o.output, cfg, func() error { return output(w, "json", cfg, nil) })
}
