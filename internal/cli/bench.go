package cli

import (
	"errors"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/cpbench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "bench",
		Short:   "Benchmarks of Trellis itself",
		Example: "  trellis bench control-plane --proxies 10000 --services 1000",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(newBenchControlPlaneCmd())
	return cmd
}

type benchControlPlaneOptions struct {
	opts   cpbench.Options
	settle time.Duration
	output string
}

func newBenchControlPlaneCmd() *cobra.Command {
	o := &benchControlPlaneOptions{}
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Measure how fast the control plane converges many proxies, and its memory",
		Long: `Starts ` + "`trellis control-plane`" + ` as a child process on a temporary state directory
(on 127.0.0.1), registers --services services through its admin API, and connects --proxies
simulated proxies, each watching --watch destinations with Destinations.Watch over gRPC and
mutual TLS: every proxy watches the first ("hot") service, the rest are spread over the others.
The proxies share the certificates of a few registered client identities, and share
--connections gRPC connections (default one per proxy).

Once every proxy has its first configs, it applies --changes changes one at a time (a
TrafficSplit flip with trellis apply's YAML, an endpoint added by a new registration; on the hot
service, then on a second one) and reports, per change, the time until 50%, 90%, 99% and 100% of
the proxies watching that service received the new config; the control plane's RSS and peak RSS
from /proc; and the budgets of BUDGETS.md that the figures meet. Progress goes to stderr.

It exits non-zero if a change does not reach every affected proxy within --timeout.`,
		Example: `  trellis bench control-plane --proxies 10000 --services 1000
  trellis bench control-plane --proxies 1000 --services 100 --watch 5 --changes 8 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.opts.Progress = cmd.ErrOrStderr()
			o.opts.Settle = o.settle
			if o.settle == 0 {
				o.opts.Settle = -1 // none
			}
			res, err := cpbench.Run(cmd.Context(), o.opts)
			if res == nil {
				return err
			}
			if werr := output(cmd.OutOrStdout(), o.output, res, func() error {
				return cpbench.WriteTable(cmd.OutOrStdout(), res)
			}); werr != nil {
				return werr
			}
			if errors.Is(err, cpbench.ErrNotConverged) {
				return &exitError{code: 2, msg: err.Error()}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.opts.Proxies, "proxies", 1000, "simulated proxies")
	f.IntVar(&o.opts.Services, "services", 100, "services registered (plus 4 split backends)")
	f.IntVar(&o.opts.Watch, "watch", 3, "destinations each proxy watches")
	f.IntVar(&o.opts.Changes, "changes", 4, "changes applied one at a time")
	f.IntVar(&o.opts.Connections, "connections", 0, "gRPC connections the proxies share; 0: one per proxy")
	f.IntVar(&o.opts.Identities, "identities", 8, "client identities whose certificates the connections share")
	f.DurationVar(&o.opts.Timeout, "timeout", 60*time.Second, "longest wait for the first configs and for each change")
	f.DurationVar(&o.settle, "settle", 5*time.Second, "pause before each change, so that it meets a control plane at rest; 0 for none")
	f.StringVarP(&o.output, "output", "o", "", "json or yaml; default a table")
	return cmd
}
