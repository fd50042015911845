package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/model"
)

type checkOptions struct {
	*globals
	pre, kube  bool
	namespace  string
	cpHealth   string
	kubeconfig string
	output     string
	certWarn   time.Duration
	httpClient *http.Client
}

// Check results.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
)

// CheckResult is one finding of `trellis check`.
type CheckResult struct {
	Check  string `json:"check"`
	Object string `json:"object,omitempty"`
	Result string `json:"result"` // ok, warn or fail
	Detail string `json:"detail"`
}

func newCheckCmd(g *globals) *cobra.Command {
	o := &checkOptions{globals: g, httpClient: &http.Client{Timeout: 3 * time.Second}}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the mesh's health: control plane, resources, sidecars, certificates",
		Long: `Checks that the control plane answers, shows the mesh settings in force (and a MeshConfig's
tracing settings, stored but not yet used), lists resources with problems (stored but partly
ignored, and MeshConfig fields not used yet), and for every registered workload checks that its sidecar is connected and ready,
holds the inbound policy version the control plane has compiled for it now, and has a
certificate that is not about to expire.

With --kubernetes, checks the mesh on a cluster: the control plane answers (read through the
API server's pod proxy), every meshed pod's sidecar is connected, holds its current inbound
policy and a certificate not about to expire; it says which control-plane replica holds the
Lease that lets it write status conditions, and lists resources with problems (also in their
status conditions) and Services with endpoints outside the mesh (pods without a sidecar).

With --pre, checks instead that a Kubernetes cluster can take Trellis before trellis install:
the API server answers, runs native sidecars, and lets you create what install creates.

Exit code: 0 when nothing failed (warnings allowed), 1 otherwise.`,
		Example: "  trellis check\n  trellis check -o json\n  trellis check --kubernetes\n  trellis check --pre --kubeconfig ~/.kube/config",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.pre {
				return o.runPre(cmd.Context(), cmd.OutOrStdout())
			}
			if o.kube {
				return o.runKube(cmd.Context(), cmd.OutOrStdout())
			}
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "json or yaml")
	cmd.Flags().DurationVar(&o.certWarn, "cert-warn", 6*time.Hour, "warn when a sidecar certificate expires sooner than this")
	cmd.Flags().BoolVar(&o.pre, "pre", false, "check a Kubernetes cluster before trellis install")
	cmd.Flags().BoolVar(&o.kube, "kubernetes", false, "check the mesh on a Kubernetes cluster")
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "trellis-system", "with --kubernetes: the control plane's `namespace`")
	cmd.Flags().StringVar(&o.cpHealth, "control-plane-health", "", "with --kubernetes: the control plane's health `URL` (http://host:9091), for one that runs outside the cluster; default: its pods, through the API server")
	cmd.Flags().StringVar(&o.kubeconfig, "kubeconfig", "", "with --pre or --kubernetes: kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	return cmd
}

// sidecarConfig is the part of a sidecar's /config that check reads.
type sidecarConfig struct {
	Ready       bool       `json:"ready"`
	Draining    bool       `json:"draining"`
	CertExpires *time.Time `json:"certificate_expires"`
	Inbound     *struct {
		Version string `json:"version"`
	} `json:"inbound"`
}

func (o *checkOptions) run(ctx context.Context, w io.Writer) error {
	var res []CheckResult
	add := func(check, object, result, format string, args ...any) {
		res = append(res, CheckResult{Check: check, Object: object, Result: result, Detail: fmt.Sprintf(format, args...)})
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		add("control plane", c.Info.Admin, checkFail, "%v", err)
		return o.report(w, res)
	}
	add("control plane", c.Info.Admin, checkOK, "serving snapshot %s to %d sidecar streams", st.Snapshot, st.Server.Streams)
	res = append(res, meshChecks(st.Mesh)...)
	for _, p := range st.Problems {
		add("resources", p.Object, checkWarn, "%s", p.Error())
	}
	if len(st.Problems) == 0 {
		add("resources", "", checkOK, "no resource has problems")
	}
	ws, err := c.Workloads(ctx)
	if err != nil {
		return err
	}
	versions, err := c.InboundVersions(ctx)
	if err != nil {
		return err
	}
	for _, wl := range ws {
		if !wl.Connected {
			add("sidecar", wl.ID, checkFail, "not connected to the control plane: is its `trellis run` still running?")
			continue
		}
		res = append(res, o.sidecarChecks(wl.ID, versions[wl.ID], func(cfg *sidecarConfig) error {
			return getJSON(o.httpClient, "http://"+wl.AdminAddress+"/config", cfg)
		})...)
	}
	return o.report(w, res)
}

// sidecarChecks reads one connected sidecar's /config with get and checks that
// it is ready, holds the inbound policy version the control plane has for it
// (want), and has a certificate that is not about to expire.
func (o *checkOptions) sidecarChecks(id, want string, get func(*sidecarConfig) error) []CheckResult {
	var res []CheckResult
	add := func(check, result, format string, args ...any) {
		res = append(res, CheckResult{Check: check, Object: id, Result: result, Detail: fmt.Sprintf(format, args...)})
	}
	var cfg sidecarConfig
	if err := get(&cfg); err != nil {
		add("sidecar", checkFail, "admin endpoint does not answer: %v", err)
		return res
	}
	switch {
	case cfg.Draining:
		add("sidecar", checkWarn, "draining: shutting down")
	case !cfg.Ready:
		add("sidecar", checkFail, "not ready: no certificate or inbound policy yet")
	case cfg.Inbound == nil || cfg.Inbound.Version != want:
		have := "none"
		if cfg.Inbound != nil {
			have = cfg.Inbound.Version
		}
		add("sidecar", checkWarn, "holds inbound policy %s, the control plane has %s (catching up, or stuck)", have, want)
	default:
		add("sidecar", checkOK, "ready, inbound policy %s is current", cfg.Inbound.Version)
	}
	now := time.Now()
	switch {
	case cfg.CertExpires == nil:
		add("certificate", checkFail, "no certificate")
	case !cfg.CertExpires.After(now):
		add("certificate", checkFail, "expired at %s", cfg.CertExpires.Format(time.RFC3339))
	case cfg.CertExpires.Sub(now) < o.certWarn:
		add("certificate", checkWarn, "expires in %s (at %s); renewal is due at 2/3 of its life", cfg.CertExpires.Sub(now).Round(time.Minute), cfg.CertExpires.Format(time.RFC3339))
	default:
		add("certificate", checkOK, "valid for %s", cfg.CertExpires.Sub(now).Round(time.Minute))
	}
	return res
}

func (o *checkOptions) report(w io.Writer, res []CheckResult) error {
	err := output(w, o.output, res, func() error {
		for _, r := range res {
			obj := ""
			if r.Object != "" {
				obj = " " + r.Object
			}
			fmt.Fprintf(w, "%-4s  %s%s: %s\n", r.Result, r.Check, obj, r.Detail)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.Result == checkFail {
			return &exitError{code: 1, msg: "some checks failed"}
		}
	}
	return nil
}

// meshChecks reports the mesh-wide settings in force, and the tracing
// settings a MeshConfig holds, which Trellis stores but does not use yet.
func meshChecks(m model.MeshSettings) []CheckResult {
	src := m.Source
	if src == "" {
		src = "no MeshConfig, OSM's defaults"
	}
	mode := "strict (TrafficTargets allow)"
	if m.Permissive {
		mode = "permissive"
	}
	egress := "off"
	if m.Egress {
		egress = "on"
	}
	validity := "24h (the control plane's default)"
	if m.CertValidity > 0 {
		validity = m.CertValidity.String()
	}
	levels := func(l, own string) string {
		if l == "" {
			return own
		}
		return l
	}
	detail := fmt.Sprintf("%s: traffic policy %s, egress %s, certificates valid %s, sidecar log level %s, control-plane log level %s",
		src, mode, egress, validity, levels(m.SidecarLogLevel, "each sidecar's --log-level"), levels(m.ControlPlaneLogLevel, "its --log-level"))
	if m.SidecarResources != "" {
		detail += ", sidecar resources " + m.SidecarResources + " (for sidecars injected on Kubernetes)"
	}
	res := []CheckResult{{Check: "mesh config", Object: m.Source, Result: checkOK, Detail: detail}}
	if t := m.Tracing; t != (model.Tracing{}) {
		r := CheckResult{Check: "tracing", Object: m.Source, Result: checkOK}
		if t.Enable {
			r.Result = checkWarn // asked for, not delivered
		}
		r.Detail = fmt.Sprintf("stored, not yet used: enable %t, collector %s port %d endpoint %s; sidecars export no spans yet",
			t.Enable, orNone(t.Address), t.Port, orNone(t.Endpoint))
		res = append(res, r)
	}
	return res
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
