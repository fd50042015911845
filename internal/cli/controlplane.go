package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

type controlPlaneOptions struct {
	*globals
	grpcAddr, adminAddr string
	leafTTL, grace      time.Duration
	logLevel            string

	// Kubernetes mode.
	kubernetes                                     bool
	kubeconfig, namespace, healthAddr, webhookAddr string
	proxyImage, injectControlPlane                 string
	captureImage                                   string
	sidecarKeyType                                 string
}

func newControlPlaneCmd(g *globals) *cobra.Command {
	o := &controlPlaneOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Run the control plane, in local mode or on Kubernetes",
		Long: `Runs the control plane for one machine: a store of applied resources and registered
workloads in the state directory, a built-in CA, the gRPC API for sidecars and the admin API
for the CLI. A restart loses no resource, registration or CA.

With --kubernetes it runs in a cluster instead: it reads Services, EndpointSlices, Pods and the
accepted custom resources from the API server (in-cluster credentials, or --kubeconfig),
serves nothing before its caches have synced, authenticates sidecars by their projected
service-account tokens, and, with --proxy-image, serves the injection webhook. The built-in CA
stays in the state directory.`,
		Example: `  trellis control-plane --state-dir /tmp/mesh
  trellis control-plane --kubernetes --kubeconfig ~/.kube/config --state-dir /var/lib/trellis \
      --proxy-image localhost/trellis/proxy:dev --inject-control-plane 10.96.0.20:15128`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
				return err
			}
			level := new(slog.LevelVar) // a MeshConfig's osmLogLevel changes it live
			level.Set(lvl)
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if o.kubernetes {
				if !cmd.Flags().Changed("grpc-listen") {
					o.grpcAddr = ":15128"
				}
				return o.runKube(cmd, log, level)
			}
			return controlplane.Run(cmd.Context(), controlplane.Options{
				StateDir: o.stateDir, GRPCAddr: o.grpcAddr, AdminAddr: o.adminAddr,
				LeafTTL: o.leafTTL, Grace: o.grace, Logger: log, LogLevel: level,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.grpcAddr, "grpc-listen", "127.0.0.1:15128", "`address` of the gRPC API for sidecars")
	f.StringVar(&o.adminAddr, "admin-listen", "127.0.0.1:15129", "`address` of the admin API for the CLI")
	f.DurationVar(&o.leafTTL, "cert-validity", 24*time.Hour, "lifetime of workload certificates, unless a MeshConfig sets spec.certificate.serviceCertValidityDuration")
	f.DurationVar(&o.grace, "grace", 15*time.Second, "after start, how long registered workloads count as alive before their sidecars reconnect")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error; a MeshConfig's spec.observability.osmLogLevel overrides it while it is in force")
	f.BoolVar(&o.kubernetes, "kubernetes", false, "run on Kubernetes: read the cluster instead of a local store (gRPC then listens on :15128 unless --grpc-listen says otherwise)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "with --kubernetes: kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	f.StringVar(&o.namespace, "namespace", "trellis-system", "with --kubernetes: the `namespace` the control plane runs in (its Service's names go in its certificate)")
	f.StringVar(&o.healthAddr, "health-listen", ":9091", "with --kubernetes: `address` of /healthz and /readyz")
	f.StringVar(&o.webhookAddr, "webhook-listen", ":9443", "with --kubernetes and --proxy-image: `address` of the injection webhook (HTTPS, /mutate)")
	f.StringVar(&o.proxyImage, "proxy-image", "", "with --kubernetes: the sidecar `image` to inject; empty: no injection webhook")
	f.StringVar(&o.sidecarKeyType, "sidecar-key-type", "", "with --kubernetes and --proxy-image: the `type` of key injected sidecars make for their certificates: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072 (empty: ecdsa-p256)")
	f.StringVar(&o.captureImage, "capture-image", "", "with --kubernetes and --proxy-image: the `image` of trellis-capture, injected as an init container that programs transparent capture; empty: no capture")
	f.StringVar(&o.injectControlPlane, "inject-control-plane", "", "with --kubernetes: the `address` injected sidecars reach the control plane at; default: its Service's ClusterIP, port 15128")
	return cmd
}

func (o *controlPlaneOptions) runKube(cmd *cobra.Command, log *slog.Logger, level *slog.LevelVar) error {
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	if o.sidecarKeyType != "" {
		if _, err := spiffe.ParseKeyType(o.sidecarKeyType); err != nil {
			return fmt.Errorf("--sidecar-key-type: %w", err)
		}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	return controlplane.RunKube(cmd.Context(), controlplane.KubeOptions{
		StateDir: o.stateDir, GRPCAddr: o.grpcAddr, HealthAddr: o.healthAddr, WebhookAddr: o.webhookAddr,
		Client: client, Dynamic: dyn, Namespace: o.namespace, LeafTTL: o.leafTTL, Logger: log, LogLevel: level,
		Inject: inject.Config{ProxyImage: o.proxyImage, ControlPlane: o.injectControlPlane, CaptureImage: o.captureImage, KeyType: o.sidecarKeyType},
	})
}

// kubeConfig loads client credentials: the file given, else in-cluster ones,
// else $KUBECONFIG.
func kubeConfig(path string) (*rest.Config, error) {
	var cfg *rest.Config
	if path == "" {
		cfg, _ = rest.InClusterConfig()
		path = os.Getenv("KUBECONFIG")
	}
	if cfg == nil {
		if path == "" {
			return nil, errors.New("no Kubernetes credentials: not in a cluster, and neither --kubeconfig nor $KUBECONFIG is set")
		}
		var err error
		if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
	}
	cfg.QPS, cfg.Burst = 50, 100 // a dozen informers list at start
	return cfg, nil
}
