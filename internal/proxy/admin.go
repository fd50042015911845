package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/probe"
	"github.com/trellis-mesh/trellis/internal/proxy/procenv"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	probes := newProbes(p.opts.AppProbes)
	if p.Admin != nil {
		_, probes.adminPort, _ = net.SplitHostPort(p.Admin.String())
	}
	mux.Handle(probe.PathPrefix, probes)
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case p.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !p.ready.Load():
			http.Error(w, "not ready: waiting for a certificate and inbound policy from the control plane", http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ok\n"))
		}
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		p.metrics.WritePrometheus(w)
		probes.writeMetrics(w)
		if t := p.creds.NotAfter(); !t.IsZero() {
			fmt.Fprintf(w, "# HELP trellis_certificate_expiry_timestamp_seconds When the sidecar's workload certificate expires, in seconds since the epoch; renewal is due at two thirds of its life.\n# TYPE trellis_certificate_expiry_timestamp_seconds gauge\ntrellis_certificate_expiry_timestamp_seconds %d\n", t.Unix())
		}
	})
	mux.HandleFunc("GET /config", p.serveConfig)
	addProfiles(mux) // /debug/pprof/, in builds with the pprof tag (admin_pprof.go)
	return mux
}

var pj = protojson.MarshalOptions{EmitUnpopulated: true, UseProtoNames: true}

// serveConfig prints the effective config: identity, certificate, inbound policy
// and every destination held, defaults included.
func (p *Proxy) serveConfig(w http.ResponseWriter, r *http.Request) {
	type dest struct {
		Authority string          `json:"authority"`
		Config    json.RawMessage `json:"config"`
	}
	out := struct {
		Identity     string          `json:"identity"`
		Workload     string          `json:"workload_id"`
		CertExpires  *time.Time      `json:"certificate_expires,omitempty"`
		CertKeyType  string          `json:"certificate_key_type,omitempty"` // --key-type
		Ready        bool            `json:"ready"`
		Draining     bool            `json:"draining"`
		Listeners    map[string]any  `json:"listeners"`
		Inbound      json.RawMessage `json:"inbound"`
		Destinations []dest          `json:"destinations"`
		AppProbes    probe.Table     `json:"app_probes"`
		Defaults     map[string]any  `json:"defaults"`
		Process      processInfo     `json:"process"`
	}{
		Process:  readProcess(),
		Identity: p.creds.ID().String(),
		Workload: p.opts.WorkloadID,
		Ready:    p.ready.Load(),
		Draining: p.draining.Load(),
		Listeners: map[string]any{
			"inbound": addrString(p.Inbound), "outbound": addrString(p.Outbound), "admin": addrString(p.Admin), "app": p.opts.AppAddr,
		},
		Inbound:   json.RawMessage("null"),
		AppProbes: p.opts.AppProbes,
		Defaults: map[string]any{
			"drain_timeout":        p.opts.DrainTimeout.String(),
			"destination_idle":     p.opts.IdleTimeout.String(),
			"first_config_timeout": p.opts.FirstConfigTimeout.String(),
			"note":                 "per-destination timeouts and balancers are spelled out in each destination's config",
		},
	}
	if t := p.creds.NotAfter(); !t.IsZero() {
		out.CertExpires = &t
	}
	if m, ok := p.creds.Load(); ok && m.Key != nil {
		kt, _ := spiffe.TypeOfKey(m.Key.Public())
		out.CertKeyType = string(kt)
	}
	if pol := p.policy.Load(); pol != nil {
		out.Inbound, _ = pj.Marshal(pol.Config())
	}
	if p.dests != nil {
		for name, m := range p.dests.snapshot() {
			d := dest{Authority: name, Config: json.RawMessage("null")}
			if m != nil {
				d.Config, _ = pj.Marshal(m)
			}
			out.Destinations = append(out.Destinations, d)
		}
	}
	sort.Slice(out.Destinations, func(i, j int) bool { return out.Destinations[i].Authority < out.Destinations[j].Authority })
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

func addrString(a interface{ String() string }) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// processInfo is the sidecar's own footprint, read from /proc.
type processInfo struct {
	PID      int   `json:"pid"`
	RSSBytes int64 `json:"rss_bytes"`
	// GODEBUG is the runtime setting the launchers give every sidecar
	// (package procenv); false: started without it, at a higher CPU cost.
	GODEBUG bool `json:"godebug_schedtrace"`
	// GOMAXPROCS is how many threads run the sidecar's Go code at once
	// (--concurrency, package procenv).
	GOMAXPROCS int `json:"gomaxprocs"`
}

func readProcess() processInfo {
	pi := processInfo{PID: os.Getpid(), GODEBUG: procenv.Active(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return pi
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			pi.RSSBytes = kb * 1024
		}
	}
	return pi
}
