package bench

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the report for people: latency, proxies, ratios, the
// sidecar's own figures and the budgets.
func WriteTable(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "trellis-bench %s, nproc %d, load average %.2f → %.2f: %d round(s) of each configuration, %g rps fixed, %d connections, %d B body echoed, %s measured after %s warm-up\n",
		r.Date.Format("2006-01-02 15:04 UTC"), r.NProc, r.LoadAverage[0], r.LoadAverage[1], r.Load.Rounds, r.Load.QPS, r.Load.Connections, r.Load.PayloadBytes, r.Load.Duration, r.Load.Warmup)
	var vs []string
	for _, k := range slices.Sorted(maps.Keys(r.Versions)) {
		vs = append(vs, k+" "+r.Versions[k])
	}
	fmt.Fprintf(&b, "load: %s; %s\n\n", r.Load.Client, strings.Join(vs, ", "))

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(&b, "Latency and rate, median of rounds")
	fmt.Fprintln(tw, "configuration\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\trate/s\terrors (all rounds)\t")
	for _, c := range r.Configurations {
		if c.Median == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t\n", c.Name)
			continue
		}
		var errs int64
		for _, rd := range c.Rounds {
			errs += rd.Errors
		}
		m := c.Median
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.1f\t%d\t\n", c.Name, m.P50Ms, m.P90Ms, m.P99Ms, m.P999Ms, m.RateRPS, errs)
	}
	tw.Flush()

	fmt.Fprintln(&b, "\nProxies, median of rounds (CPU: utime+stime over the measured period; RSS and PSS max: largest VmRSS and Pss sampled every 100ms, summed over a hop's processes; VmHWM: peak over the period, * if lifetime)")
	fmt.Fprintln(tw, "configuration\thop\tprocesses\tCPU s\tcores\tcores per 1k rps\tRSS max MiB\tPSS max MiB\tVmHWM MiB\t")
	for _, c := range r.Configurations {
		if c.Median == nil {
			continue
		}
		for _, h := range c.Median.Hops {
			star := ""
			if h.HWMLifetime {
				star = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f\t%.3f\t%.3f\t%.1f\t%.1f\t%.1f%s\t\n", c.Name, h.Name, h.Processes, h.CPUSeconds, h.Cores, h.CoresPer1kRPS,
				float64(h.RSSMaxBytes)/mib, float64(h.PSSMaxBytes)/mib, float64(h.HWMBytes)/mib, star)
		}
	}
	tw.Flush()

	fmt.Fprintln(&b, "\nRatios of medians to nginx-2hop (CPU per 1k rps; cpu both hops: CPU seconds summed), and latency to direct")
	fmt.Fprintln(tw, "configuration\tp50\tp90\tp99\tp99.9\tcpu both hops\tcpu hop1\tcpu hop2\trss hop1\trss hop2\tpss hop1\tpss hop2\tp50 ÷ direct\tp99 ÷ direct\t")
	for _, c := range r.Configurations {
		if c.Median == nil {
			continue
		}
		row := []string{c.Name}
		for _, k := range []string{"p50", "p90", "p99", "p99.9", "cpu", "cpu_hop1", "cpu_hop2", "rss_hop1", "rss_hop2", "pss_hop1", "pss_hop2"} {
			row = append(row, fmtRatio(c.VsNginx, k))
		}
		row = append(row, fmtRatio(c.VsDirect, "p50"), fmtRatio(c.VsDirect, "p99"))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()

	if s := r.Sidecar; s != nil {
		fmt.Fprintf(&b, "\nTrellis sidecar before load: idle RSS hop1 (client, certificate + one destination) %.1f MiB, hop2 (server) %.1f MiB; start to ready median %.1f ms, max %.1f ms over %d starts\n",
			float64(s.IdleRSSBytes["hop1"])/mib, float64(s.IdleRSSBytes["hop2"])/mib, s.StartToReadyMedianMs, s.StartToReadyMaxMs, len(s.StartToReadyMs))
	}

	fmt.Fprintln(&b, "\nBudgets (BUDGETS.md)")
	for _, bu := range r.Budgets {
		line := fmt.Sprintf("  %-12s %s %s", bu.Status, bu.Figure, bu.Budget)
		if bu.Value != nil {
			line += fmt.Sprintf(": %s %s", fmtNum(*bu.Value), bu.Unit)
		}
		if bu.Detail != "" {
			line += " (" + bu.Detail + ")"
		}
		fmt.Fprintln(&b, line)
	}
	if failed := r.Failed(); len(failed) > 0 {
		fmt.Fprintln(&b, "\nFailed configurations:")
		for _, c := range r.Configurations {
			if slices.Contains(failed, c.Name) {
				fmt.Fprintf(&b, "  %s: %s\n", c.Name, firstLine(c.Error, "fewer rounds than asked"))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func fmtRatio(r Ratios, k string) string {
	v, ok := r[k]
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}

func fmtNum(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) < 1:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func firstLine(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	line, _, _ := strings.Cut(s, "\n")
	return line
}
