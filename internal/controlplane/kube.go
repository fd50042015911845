package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// KubeOptions configure a control plane in Kubernetes mode.
type KubeOptions struct {
	// StateDir keeps the built-in CA (a mounted volume in a pod); required.
	StateDir string
	// GRPCAddr is where sidecars connect; default :15128. HealthAddr serves
	// /healthz (alive) and /readyz (the sources have synced); default :9091.
	GRPCAddr, HealthAddr string
	Client               kubernetes.Interface // required
	Dynamic              dynamic.Interface    // required
	// DNSNames and IPs the serving certificate names besides the defaults
	// (the trellis-control-plane Service of Namespace).
	DNSNames []string
	IPs      []net.IP
	// Namespace the control plane runs in; default trellis-system.
	Namespace string
	LeafTTL   time.Duration
	Logger    *slog.Logger
	// Ready, if set, is called once the sources have synced and sidecars are
	// served, with the gRPC and health addresses.
	Ready func(grpcAddr, healthAddr string)
}

// RunKube serves sidecars from the Kubernetes source until ctx ends. Sidecars
// authenticate with projected service-account tokens (TokenReview), and no
// sidecar is served, not even certified, before every informer has synced.
func RunKube(ctx context.Context, o KubeOptions) error {
	if o.StateDir == "" || o.Client == nil || o.Dynamic == nil {
		return errors.New("kube mode needs a state directory, a client and a dynamic client")
	}
	if o.GRPCAddr == "" {
		o.GRPCAddr = ":15128"
	}
	if o.HealthAddr == "" {
		o.HealthAddr = ":9091"
	}
	if o.Namespace == "" {
		o.Namespace = identityNS
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger
	ca, err := identity.LoadOrCreate(filepath.Join(o.StateDir, caDir), identity.Options{TrustDomain: model.DefaultTrustDomain, LeafTTL: o.LeafTTL})
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	src := kube.New(kube.Options{Client: o.Client, Dynamic: o.Dynamic, Logger: log.With("component", "kube-source")})
	srv := serve.New(serve.Config{Authenticator: &kube.TokenReviewer{Client: o.Client}, Signer: ca, LeafTTL: o.LeafTTL, Logger: log})

	svc := "trellis-control-plane." + o.Namespace
	names := append([]string{"trellis-control-plane", svc, svc + ".svc", svc + ".svc.cluster.local", "localhost"}, o.DNSNames...)
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1)}, o.IPs...)
	g, gl, err := listenGRPC(o.GRPCAddr, ca, srv, model.DefaultTrustDomain, names, ips)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", o.HealthAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("health listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-src.Synced():
			w.Write([]byte("ok\n"))
		default:
			http.Error(w, "sources not synced yet", http.StatusServiceUnavailable)
		}
	})
	health := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// Streams and certification wait in serve until the first Update: the
	// gRPC server may accept connections before the caches have synced.
	go g.Serve(gl)
	go health.Serve(hl)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		health.Shutdown(sctx)
		cancel()
		g.Stop()
		log.Info("control plane stopped")
	}()

	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(srcCtx) }()
	select {
	case <-ctx.Done():
		return nil
	case err := <-srcDone:
		return err
	case <-src.Synced():
	}
	srv.Update(src.Snapshot())
	log.Info("control plane serving", "mode", "kubernetes", "grpc", gl.Addr().String(), "health", hl.Addr().String(),
		"watching", src.Watched(), "snapshot", src.Snapshot().Hash())
	if o.Ready != nil {
		o.Ready(gl.Addr().String(), hl.Addr().String())
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcDone:
			return err
		case <-src.Changes():
			snap := src.Snapshot()
			srv.Update(snap)
			log.Debug("snapshot", "hash", snap.Hash(), "problems", len(src.Problems()))
		}
	}
}
