package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/stat"
)

type statOptions struct {
	*globals
	namespace string
	window    time.Duration
	output    string
}

func newStatCmd(g *globals) *cobra.Command {
	o := &statOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "stat",
		Short: "Show golden metrics per workload: requests per second, success rate, latency",
		Long: `Scrapes every sidecar's metrics twice, --window apart, and prints for each workload the
requests it served in that window: requests per second, success rate, and p50 and p99
latency (from the request duration histogram), plus the cumulative totals.`,
		Example: "  trellis stat\n  trellis stat -n bookstore --window 5s -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "only workloads in this `namespace`")
	f.DurationVar(&o.window, "window", 10*time.Second, "how long to measure")
	f.StringVarP(&o.output, "output", "o", "", "json or yaml")
	return cmd
}

func (o *statOptions) run(ctx context.Context, w io.Writer) error {
	if o.window <= 0 {
		return fmt.Errorf("--window must be positive, got %s", o.window)
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
