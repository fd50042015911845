package cli

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
)

type controlPlaneOptions struct {
	*globals
	grpcAddr, adminAddr string
	leafTTL, grace      time.Duration
	logLevel            string
}

func newControlPlaneCmd(g *globals) *cobra.Command {
	o := &controlPlaneOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Run the control plane in local mode",
		Long: `Runs the control plane for one machine: a store of applied resources and registered
workloads in the state directory, a built-in CA, the gRPC API for sidecars and the admin API
for the CLI. A restart loses no resource, registration or CA.`,
		Example: "  trellis control-plane --state-dir /tmp/mesh",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			return controlplane.Run(cmd.Context(), controlplane.Options{
				StateDir: o.stateDir, GRPCAddr: o.grpcAddr, AdminAddr: o.adminAddr,
				LeafTTL: o.leafTTL, Grace: o.grace, Logger: log,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.grpcAddr, "grpc-listen", "127.0.0.1:15128", "`address` of the gRPC API for sidecars")
	f.StringVar(&o.adminAddr, "admin-listen", "127.0.0.1:15129", "`address` of the admin API for the CLI")
	f.DurationVar(&o.leafTTL, "cert-validity", 24*time.Hour, "lifetime of workload certificates, unless a MeshConfig sets spec.certificate.serviceCertValidityDuration")
	f.DurationVar(&o.grace, "grace", 15*time.Second, "after start, how long registered workloads count as alive before their sidecars reconnect")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
