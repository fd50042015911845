package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// KubeOptions configure a control plane in Kubernetes mode.
type KubeOptions struct {
	// StateDir keeps the built-in CA (a mounted volume in a pod); required.
	StateDir string
	// GRPCAddr is where sidecars connect; default :15128. HealthAddr serves
	// /healthz (alive), /readyz (the sources have synced) and /status (what
	// trellis check --kubernetes reads: KubeStatus); default :9091.
	GRPCAddr, HealthAddr string
	Client               kubernetes.Interface // required
	Dynamic              dynamic.Interface    // required
	// DNSNames and IPs the serving certificate names besides the defaults
	// (the trellis-control-plane Service of Namespace).
	DNSNames []string
	IPs      []net.IP
	// Namespace the control plane runs in; default trellis-system.
	Namespace string
	// WebhookAddr serves the webhooks (HTTPS): injection at /mutate and the
	// validation of Trellis's custom resources at /validate; default :9443.
	// Inject configures the sidecars it adds; without a ProxyImage no webhook
	// is served.
	WebhookAddr string
	Inject      inject.Config
	LeafTTL     time.Duration
	Logger      *slog.Logger
	// LogLevel, if set, is the level Logger's handler logs at; the MeshConfig
	// changes it live (see Options.LogLevel).
	LogLevel *slog.LevelVar
	// Ready, if set, is called once the sources have synced and sidecars are
	// served, with the bound addresses.
	Ready func(KubeInfo)
}

// KubeInfo is where a Kubernetes-mode control plane listens.
type KubeInfo struct {
	GRPC, Health string
	Webhook      string // empty when no webhook is served
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
	if o.WebhookAddr == "" {
		o.WebhookAddr = ":9443"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger
	dir := filepath.Join(o.StateDir, caDir)
	if err := restoreCA(ctx, o.Client, o.Namespace, dir); err != nil {
		return err
	}
	ca, err := identity.LoadOrCreate(dir, identity.Options{TrustDomain: model.DefaultTrustDomain, LeafTTL: o.LeafTTL})
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	if err := saveCA(ctx, o.Client, o.Namespace, dir); err != nil {
		return fmt.Errorf("keep the CA in Secret %s/%s: %w", o.Namespace, CASecretName, err)
	}
	// Installed in a cluster, the control plane's own Service names where
	// sidecars reach it: its ClusterIP goes in the certificate and, unless
	// told otherwise, in the sidecars it injects (pods may have no DNS).
	if svc, err := o.Client.CoreV1().Services(o.Namespace).Get(ctx, ServiceName, metav1.GetOptions{}); err == nil && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		if ip := net.ParseIP(svc.Spec.ClusterIP); ip != nil {
			o.IPs = append(o.IPs, ip)
			if o.Inject.ControlPlane == "" {
				o.Inject.ControlPlane = net.JoinHostPort(svc.Spec.ClusterIP, "15128")
			}
		}
	}
	if o.Inject.ProxyImage != "" && o.Inject.ControlPlane == "" {
		return fmt.Errorf("injection needs the address sidecars reach the control plane at: there is no Service %s/%s; pass --inject-control-plane", o.Namespace, ServiceName)
	}
	// Every replica serves; the one that holds the Lease in the control
	// plane's namespace writes status conditions.
	src := kube.New(kube.Options{Client: o.Client, Dynamic: o.Dynamic, Logger: log.With("component", "kube-source"), WriteStatus: true,
		LeaderElection: &kube.LeaderElection{Namespace: o.Namespace}})
	conns := &connections{}
	srv := serve.New(serve.Config{Authenticator: &kube.TokenReviewer{Client: o.Client}, Signer: ca, Observer: conns, LeafTTL: o.LeafTTL, Logger: log})

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
	// What trellis check --kubernetes reads (through the API server's pod
	// proxy, or directly).
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-src.Synced():
		default:
			http.Error(w, "sources not synced yet", http.StatusServiceUnavailable)
			return
		}
		st := kubeStatus(src.Snapshot(), src.Problems(), srv.Stats(), conns)
		st.StatusWriter = src.StatusWriter()
		serveJSON(w, st)
	})
	health := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var webhook *http.Server
	info := KubeInfo{GRPC: gl.Addr().String(), Health: hl.Addr().String()}
	if o.Inject.ProxyImage != "" {
		wl, err := net.Listen("tcp", o.WebhookAddr)
		if err != nil {
			gl.Close()
			hl.Close()
			return fmt.Errorf("webhook listener: %w", err)
		}
		cert, err := newServingCert(ca, spiffe.ID{TrustDomain: model.DefaultTrustDomain, Namespace: o.Namespace, Account: "trellis-control-plane"}, names, ips)
		if err != nil {
			gl.Close()
			hl.Close()
			wl.Close()
			return err
		}
		wmux := http.NewServeMux()
		wmux.Handle("POST /mutate", &inject.Webhook{Config: o.Inject, Namespaces: src.Namespace, Logger: log.With("component", "injector"),
			SidecarResources: func() string {
				if snap := src.Snapshot(); snap != nil {
					return snap.Mesh().SidecarResources
				}
				return ""
			}})
		wmux.Handle("POST /validate", validator{})
		webhook = &http.Server{Handler: wmux, ReadHeaderTimeout: 10 * time.Second, TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12, // the API server's client
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get(time.Now()) },
		}}
		go webhook.ServeTLS(wl, "", "")
		info.Webhook = wl.Addr().String()
	}
	// Streams and certification wait in serve until the first Update: the
	// gRPC server may accept connections before the caches have synced.
	go g.Serve(gl)
	go health.Serve(hl)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		health.Shutdown(sctx)
		if webhook != nil {
			webhook.Shutdown(sctx)
		}
		cancel()
		g.Stop()
		log.Info("control plane stopped")
	}()

	srcCtx, stopSrc := context.WithCancel(ctx)
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(srcCtx) }()
	srcEnded := false
	// On the way out, wait for the source: it returns once it has handed the
	// status writer's Lease over, which a process that exits first leaves for
	// the other replicas to wait out.
	defer func() {
		stopSrc()
		if !srcEnded {
			<-srcDone
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-srcDone:
		srcEnded = true
		return err
	case <-src.Synced():
	}
	srv.Update(src.Snapshot())
	level := newLogLevel(o.LogLevel)
	level.follow(src.Snapshot().Mesh(), log)
	if webhook != nil {
		if err := setWebhookCABundle(ctx, o.Client, ca.BundlePEM()); err != nil {
			log.Warn("the injection webhook's caBundle is not set; the API server cannot call the webhook until it is", "err", err)
		}
	}
	bundles := &caBundles{client: o.Client, pem: ca.BundlePEM(), log: log}
	bundles.ensure(ctx, src.MeshedNamespaces())
	log.Info("control plane serving", "mode", "kubernetes", "grpc", info.GRPC, "health", info.Health, "webhook", info.Webhook,
		"watching", src.Watched(), "snapshot", src.Snapshot().Hash())
	if o.Ready != nil {
		o.Ready(info)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcDone:
			srcEnded = true
			return err
		case <-src.Changes():
			snap := src.Snapshot()
			srv.Update(snap)
			level.follow(snap.Mesh(), log)
			bundles.ensure(ctx, src.MeshedNamespaces())
			log.Debug("snapshot", "hash", snap.Hash(), "problems", len(src.Problems()))
		}
	}
}

// The installed objects the control plane looks for in Kubernetes mode
// (internal/manifests installs them).
const (
	ServiceName         = "trellis-control-plane"
	WebhookConfigName   = "trellis-injector"  // MutatingWebhookConfiguration
	ValidatorConfigName = "trellis-validator" // ValidatingWebhookConfiguration
)

// setWebhookCABundle writes the CA that signs the webhooks' certificate into
// the installed webhook configurations, where there are some (whoever
// registered them otherwise sets their CA).
func setWebhookCABundle(ctx context.Context, c kubernetes.Interface, pem []byte) error {
	ar := c.AdmissionregistrationV1()
	if m, err := ar.MutatingWebhookConfigurations().Get(ctx, WebhookConfigName, metav1.GetOptions{}); err == nil {
		changed := false
		for i := range m.Webhooks {
			changed = setCA(&m.Webhooks[i].ClientConfig.CABundle, pem) || changed
		}
		if changed {
			if _, err := ar.MutatingWebhookConfigurations().Update(ctx, m, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	v, err := ar.ValidatingWebhookConfigurations().Get(ctx, ValidatorConfigName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	changed := false
	for i := range v.Webhooks {
		changed = setCA(&v.Webhooks[i].ClientConfig.CABundle, pem) || changed
	}
	if changed {
		_, err = ar.ValidatingWebhookConfigurations().Update(ctx, v, metav1.UpdateOptions{})
	}
	return err
}

func setCA(dst *[]byte, pem []byte) bool {
	if bytes.Equal(*dst, pem) {
		return false
	}
	*dst = pem
	return true
}

// caBundles keeps the trellis-ca-bundle ConfigMap, the roots injected
// sidecars verify the control plane with, in every meshed namespace.
type caBundles struct {
	client kubernetes.Interface
	pem    []byte
	log    *slog.Logger
	// done holds the namespaces, by UID, known to hold the current bundle: a
	// namespace deleted and made again under the same name gets it again.
	done map[types.UID]bool
}

func (b *caBundles) ensure(ctx context.Context, namespaces []*corev1.Namespace) {
	if b.done == nil {
		b.done = map[types.UID]bool{}
	}
	for _, ns := range namespaces {
		if b.done[ns.UID] {
			continue
		}
		if err := b.ensureOne(ctx, ns.Name); err != nil {
			b.log.Warn("CA bundle not written; pods injected there cannot start their sidecar until it is", "namespace", ns.Name, "err", err)
			continue
		}
		b.done[ns.UID] = true
	}
}

func (b *caBundles) ensureOne(ctx context.Context, ns string) error {
	cms := b.client.CoreV1().ConfigMaps(ns)
	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: inject.CABundleConfigMap, Labels: map[string]string{"app.kubernetes.io/part-of": "trellis"}},
		Data:       map[string]string{"ca.pem": string(b.pem)},
	}
	cur, err := cms.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, want, metav1.CreateOptions{})
		return err
	case err != nil:
		return err
	case bytes.Equal([]byte(cur.Data["ca.pem"]), b.pem):
		return nil
	}
	cur.Data = want.Data
	_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}
