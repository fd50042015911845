package cpbench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Budgets of BUDGETS.md that the run can judge.
const (
	// BudgetP99Millis: a TrafficSplit change reaches 99% of 10,000 proxies
	// within 1 s.
	BudgetP99Millis = 1000
	// BudgetMemoryBytes: control-plane memory with 10,000 proxies and 1,000
	// services.
	BudgetMemoryBytes = 1 << 30
)

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// WriteTable writes r for people.
func WriteTable(w io.Writer, r *Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "trellis bench control-plane: %d proxies × %d watches = %d streams on %d connections (%d client identities), %d services (%d workloads registered)\n\n",
		r.Proxies, r.Watch, r.Streams, r.Connections, r.Identities, r.Services, r.Registered)
	fmt.Fprintf(&b, "registration of the services      %8.0f ms\n", r.SetupMillis)
	fmt.Fprintf(&b, "all proxies connected, 1st config %8.0f ms\n\n", r.ConnectMillis)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "change\tservice\taffected\treceived\tapply ms\tfirst ms\tp50 ms\tp90 ms\tp99 ms\tmax ms\tserver pushes\tserver p99 ≤ ms\tother msgs\t")
	for _, c := range r.Changes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%g\t%d\t\n", c.Kind, c.Service, c.Affected, c.Received,
			c.ApplyMillis, c.FirstMillis, c.P50Millis, c.P90Millis, c.P99Millis, c.P100Millis, c.ServerPushes, c.ServerP99Millis, c.OtherMessages)
	}

	tw.Flush()
	b.WriteString("apply: the admin API call(s) making the change; first … max: from just before them to the proxies' receipt;\n" +
		"server p99: bucket of the control plane's push latency histogram (snapshot to send) holding its 99th percentile\n")
	fmt.Fprintf(&b, "\ncontrol plane (pid %d): RSS %s after the changes, peak %s\n", r.ControlPlane.PID, mib(r.ControlPlane.RSSBytes), mib(r.ControlPlane.PeakRSSBytes))
	fmt.Fprintf(&b, "this tool (the simulated proxies): RSS %s\n", mib(r.ToolRSSBytes))
	s := r.Server
	fmt.Fprintf(&b, "control plane /metrics: connected proxies %.0f, streams %.0f, pushes %.0f, certificates issued %.0f, push latencies observed %d, snapshot builds %d\n",
		s.ConnectedProxies, s.Streams, s.Pushes, s.CertificatesIssued, s.PushLatencyCount, s.SnapshotBuilds)
	b.WriteString("\nbudgets (BUDGETS.md; judged at 10,000 proxies and 1,000 services):\n")
	for _, l := range r.Budgets() {
		b.WriteString("  " + l + "\n")
	}
	b.WriteString("\nnotes:\n")
	for _, n := range r.Notes {
		b.WriteString("  - " + n + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Budgets says, per budget, the figure and whether it is met.
func (r *Result) Budgets() []string {
	scale := ""
	if r.Proxies < 10000 || r.Services < 1000 {
		scale = fmt.Sprintf(" (this run: %d proxies, %d services, below the budget's scale)", r.Proxies, r.Services)
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var out []string
	worst, affected := -1.0, 0
	for _, c := range r.Changes {
		if strings.HasPrefix(c.Kind, "TrafficSplit") && c.Affected == r.Proxies && c.P99Millis > worst {
			worst, affected = c.P99Millis, c.Affected
		}
	}
	if worst >= 0 {
		out = append(out, fmt.Sprintf("TrafficSplit change to 99%% of %d proxies: %.1f ms, budget ≤ %d ms: %s%s", affected, worst, BudgetP99Millis, verdict(worst <= BudgetP99Millis), scale))
	}
	peak := r.ControlPlane.PeakRSSBytes
	out = append(out, fmt.Sprintf("control-plane memory (peak RSS): %s, budget ≤ 1 GiB: %s%s", mib(peak), verdict(peak <= BudgetMemoryBytes), scale))
	return out
}
