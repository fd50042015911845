package stat

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Table writes rows as an aligned table with the columns NAMESPACE, WORKLOAD,
// RPS, SUCCESS, P50, P99 and REQUESTS. A row with no requests in the window
// shows "-" for success and latencies.
func Table(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tWORKLOAD\tRPS\tSUCCESS\tP50\tP99\tREQUESTS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\t%.0f\n",
			r.Namespace, r.Workload, r.RPS, successText(r), latencyText(r.P50), latencyText(r.P99), r.Requests)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write stat table: %w", err)
	}
	return nil
}

func successText(r Row) string {
	if r.Requests <= 0 || r.SuccessRate < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", r.SuccessRate*100)
}

// latencyText shows a latency with about two significant digits: "0.45ms",
// "1.2ms", "250ms", "1.50s"; "-" when unknown.
func latencyText(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d < 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", ms)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", ms)
	case d < time.Second:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
