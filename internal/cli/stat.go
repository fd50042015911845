package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/stat"
)

type statOptions struct {
	*globals
	namespace  string
	window     time.Duration
	output     string
	kube       bool
	kubeconfig string
}

func newStatCmd(g *globals) *cobra.Command {
	o := &statOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "stat",
		Short: "Show golden metrics per workload: requests per second, success rate, latency",
		Long: `Scrapes every sidecar's metrics twice, --window apart, and prints for each workload the
requests it served in that window: requests per second, success rate, and p50 and p99
latency (from the request duration histogram), plus the cumulative totals.

With --kubernetes, the meshed pods (of -n NAMESPACE, or of every namespace) are read through
the API server's pod proxy, and each row is a workload, named as kubectl names it
(deployment/bookstore-v1): a Deployment, StatefulSet, DaemonSet or Job sums its pods; a pod of
no such owner is a row of its own (pod/NAME).`,
		Example: "  trellis stat\n  trellis stat -n bookstore --window 5s -o json\n  trellis stat --kubernetes -n bookstore",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "only workloads in this `namespace`")
	f.DurationVar(&o.window, "window", 10*time.Second, "how long to measure")
	f.StringVarP(&o.output, "output", "o", "", "json or yaml")
	f.BoolVar(&o.kube, "kubernetes", false, "read the meshed pods of a Kubernetes cluster")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "with --kubernetes: kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	return cmd
}

// runKube measures the meshed pods' sidecars, read through the API server.
func (o *statOptions) runKube(ctx context.Context, w io.Writer) error {
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	pods, err := c.CoreV1().Pods(o.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	who := map[string]stat.WorkloadRef{}
	for _, p := range pods.Items {
		if p.Annotations[inject.InjectedAnnotation] == "true" && p.Status.Phase == corev1.PodRunning {
			who[p.Namespace+"/"+p.Name] = stat.WorkloadRef{Namespace: p.Namespace, Name: kubeWorkload(&p)}
		}
	}
	scrape := func() map[string]*stat.Sample {
		out := map[string]*stat.Sample{}
		for id := range who {
			ns, pod, _ := strings.Cut(id, "/")
			b, err := c.CoreV1().Pods(ns).ProxyGet("http", pod, strconv.Itoa(inject.AdminPort), "/metrics", nil).DoRaw(ctx)
			if err != nil {
				continue // shows with no data
			}
			if s, err := stat.Parse(bytes.NewReader(b)); err == nil {
				out[id] = s
			}
		}
		return out
	}
	before := scrape()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.window):
	}
	rows := stat.Compute(before, scrape(), o.window, who)
	return output(w, o.output, rows, func() error { return stat.Table(w, rows) })
}

// kubeWorkload names the workload a pod belongs to as kubectl does, kind/name
// with the kind in lower case: its controller (a ReplicaSet made by a
// Deployment stands for the Deployment: its name is the Deployment's and the
// pod template hash), else the pod itself. The kind keeps a Deployment and a
// StatefulSet of the same name in one namespace in rows of their own.
func kubeWorkload(p *corev1.Pod) string {
	owner := metav1.GetControllerOf(p)
	if owner == nil {
		return "pod/" + p.Name
	}
	if owner.Kind == "ReplicaSet" {
		if hash := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; hash != "" {
			if d, ok := strings.CutSuffix(owner.Name, "-"+hash); ok {
				return "deployment/" + d
			}
		}
	}
	return strings.ToLower(owner.Kind) + "/" + owner.Name
}

func (o *statOptions) run(ctx context.Context, w io.Writer) error {
	if o.window <= 0 {
		return fmt.Errorf("--window must be positive, got %s", o.window)
	}
	if o.kube {
		return o.runKube(ctx, w)
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	keep, err := workloadsIn(ctx, c, o.namespace)
	if err != nil {
		return err
	}
	who := map[string]stat.WorkloadRef{}
	for _, wl := range keep {
		who[wl.ID] = stat.WorkloadRef{Namespace: wl.Identity.Namespace, Name: wl.Name}
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	before := scrapeAll(hc, keep)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.window):
	}
	after := scrapeAll(hc, keep)
	rows := stat.Compute(before, after, o.window, who)
	return output(w, o.output, rows, func() error { return stat.Table(w, rows) })
}

// scrapeAll reads each sidecar's /metrics; a sidecar that does not answer is left
// out (it shows with no data).
func scrapeAll(hc *http.Client, ws []local.WorkloadStatus) map[string]*stat.Sample {
	out := map[string]*stat.Sample{}
	for _, wl := range ws {
		resp, err := hc.Get("http://" + wl.AdminAddress + "/metrics")
		if err != nil {
			continue
		}
		s, err := stat.Parse(resp.Body)
		resp.Body.Close()
		if err == nil {
			out[wl.ID] = s
		}
	}
	return out
}
