package cpbench_test

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/cpbench"
)

// childEnv makes the test binary act as the trellis command, so that the tool
// can start it as `trellis control-plane`.
const childEnv = "TRELLIS_CPBENCH_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func smokeOptions(t *testing.T) cpbench.Options {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("progress:\n%s", progress.String())
		}
	})
	return cpbench.Options{
		Proxies: 50, Services: 10, Changes: 4,
		Trellis: self, Env: []string{childEnv + "=1"},
		Timeout: 20 * time.Second, Settle: 100 * time.Millisecond, Progress: &progress,
	}
}

// TestSmoke runs the tool at small scale: every proxy watching a changed
// service receives every change, with its content, and nothing else is sent.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := smokeOptions(t)
	o.Connections = 10 // five proxies per connection: shared connections work too
	res, err := cpbench.Run(ctx, o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := len(res.Changes), o.Changes; got != want {
		t.Fatalf("%d changes measured, want %d", got, want)
	}
	wantKinds := []string{"TrafficSplit 90/10", "endpoint added", "TrafficSplit 90/10", "endpoint added"}
	for i, c := range res.Changes {
		if c.Kind != wantKinds[i] {
			t.Errorf("change %d is %q, want %q", i+1, c.Kind, wantKinds[i])
		}
		if c.Affected == 0 {
			t.Errorf("change %d (%s on %s) affects no proxy", i+1, c.Kind, c.Service)
		}
		if c.Received != c.Affected {
			t.Errorf("change %d (%s on %s): %d of %d affected proxies received it", i+1, c.Kind, c.Service, c.Received, c.Affected)
		}
		if c.ServerPushes != int64(c.Affected) {
			t.Errorf("change %d (%s on %s): the control plane pushed %d configs, want one per affected proxy (%d)", i+1, c.Kind, c.Service, c.ServerPushes, c.Affected)
		}
		if c.ServerP99Millis <= 0 {
			t.Errorf("change %d (%s on %s): server push latency p99 bucket %v, want one from /metrics", i+1, c.Kind, c.Service, c.ServerP99Millis)
		}
		if c.OtherMessages != 0 {
			t.Errorf("change %d (%s on %s): %d messages reached watches of other services, want none", i+1, c.Kind, c.Service, c.OtherMessages)
		}
		if !(0 < c.P50Millis && c.P50Millis <= c.P90Millis && c.P90Millis <= c.P99Millis && c.P99Millis <= c.P100Millis) {
			t.Errorf("change %d: percentiles %v ≤ %v ≤ %v ≤ %v are not ordered and positive", i+1, c.P50Millis, c.P90Millis, c.P99Millis, c.P100Millis)
		}
	}
	// The hot service is watched by every proxy; the cold one by some.
	if res.Changes[0].Affected != o.Proxies {
		t.Errorf("the hot service's change affects %d proxies, want all %d", res.Changes[0].Affected, o.Proxies)
	}
	if a := res.Changes[2].Affected; a >= o.Proxies {
		t.Errorf("the cold service's change affects %d proxies, want fewer than %d", a, o.Proxies)
	}
	if res.ControlPlane.RSSBytes <= 0 || res.ControlPlane.PeakRSSBytes < res.ControlPlane.RSSBytes {
		t.Errorf("control plane memory: RSS %d, peak %d; want a positive RSS and a peak at least as large", res.ControlPlane.RSSBytes, res.ControlPlane.PeakRSSBytes)
	}
	if res.ControlPlane.PID == os.Getpid() {
		t.Error("the control plane's memory is this process's: want the child's")
	}
	if got := res.Server.ConnectedProxies; got != float64(o.Connections) {
		t.Errorf("/metrics connected proxies = %v, want %d connections", got, o.Connections)
	}
	if got := res.Server.Streams; got != float64(res.Streams) {
		t.Errorf("/metrics streams = %v, want %d", got, res.Streams)
	}
	if got := res.Server.CertificatesIssued; got != float64(res.Identities) {
		t.Errorf("/metrics certificates issued = %v, want %d", got, res.Identities)
	}
	var pushed int
	for _, c := range res.Changes {
		pushed += c.Affected
	}
	if got := res.Server.PushLatencyCount; got != uint64(pushed) {
		t.Errorf("/metrics push latencies observed = %d, want one per push caused by a change (%d)", got, pushed)
	}
	var table bytes.Buffer
	if err := cpbench.WriteTable(&table, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TrafficSplit 90/10", "svc-0000.bench", "p99 ms", "share 10 gRPC connections", "control plane (pid"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}
