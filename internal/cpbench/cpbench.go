// Package cpbench is the control-plane load tool behind `trellis bench
// control-plane`: it starts `trellis control-plane` as a child process on a
// temporary state directory, registers services through the admin API, connects
// simulated proxies that watch destinations over real gRPC and mutual TLS, applies
// changes (a TrafficSplit flip, an endpoint added) and measures how long each
// takes to reach the proxies it affects, along with the control plane's memory.
// Only the CLI imports it.
package cpbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// Namespaces of what the tool registers.
const (
	serviceNS = "bench"
	clientNS  = "bench-clients"
	port      = 8080
)

// Options configure a run.
type Options struct {
	// Proxies is the number of simulated proxies; required.
	Proxies int
	// Services is the number of services registered, one workload each;
	// required. The first two also get a TrafficSplit over two backend
	// services of their own (four more services).
	Services int
	// Watch is the number of destinations each proxy watches; default 3. Every
	// proxy watches the first service (the "hot" one); the others are spread
	// evenly over the rest.
	Watch int
	// Changes is the number of changes applied, one at a time, in the order
	// split flip on the hot service, endpoint added to it, split flip on a
	// second ("cold") service, endpoint added to it, and round again; default 4.
	Changes int
	// Connections is the number of gRPC connections the proxies share, each
	// proxy's watches on one of them; default 0, one connection per proxy.
	Connections int
	// Identities is the number of registered client workloads whose
	// certificates the connections share; default 8.
	Identities int
	// Trellis is the trellis binary to start as `trellis control-plane`;
	// default the running executable.
	Trellis string
	// Env is added to the child's environment.
	Env []string
	// Timeout bounds the wait for the first configs and for each change;
	// default 60s.
	Timeout time.Duration
	// Settle is the pause between the last first config and the first
	// change, and between changes, so that each change meets a control
	// plane at rest (the garbage of 10,000 connections collected), as in a
	// running mesh; default 0 means 5s, negative means none.
	Settle time.Duration
	// Progress receives a line per phase; default discard.
	Progress io.Writer
}

// Result is what a run measured.
type Result struct {
	Proxies     int `json:"proxies"`
	Services    int `json:"services"`
	Watch       int `json:"watch"`
	Streams     int `json:"streams"`
	Connections int `json:"connections"`
	Identities  int `json:"identities"`
	// Registered is the number of workloads registered before the proxies
	// connected: services, split backends and client identities.
	Registered int `json:"registered"`
	// SetupMillis is the time to register them.
	SetupMillis float64 `json:"setupMillis"`
	// ConnectMillis is the time from the first dial until every watch of
	// every proxy had its first config.
	ConnectMillis float64        `json:"connectMillis"`
	Changes       []ChangeResult `json:"changes"`
	ControlPlane  Memory         `json:"controlPlane"`
	// ToolRSSBytes is this process's RSS (the simulated proxies), for scale.
	ToolRSSBytes int64 `json:"toolRSSBytes"`
	// Server is what the control plane's /metrics said at the end.
	Server ServerMetrics `json:"server"`
	// Notes say how the run was made.
	Notes []string `json:"notes"`
}

// ChangeResult is one change's convergence.
type ChangeResult struct {
	Kind    string `json:"kind"`
	Service string `json:"service"`
	// Affected is the number of proxies watching the service; Received the
	// number that got the new config.
	Affected int `json:"affected"`
	Received int `json:"received"`
	// ApplyMillis is how long the admin API call(s) making the change took
	// (validation, persisting the store, rebuilding the snapshot).
	ApplyMillis float64 `json:"applyMillis"`
	// FirstMillis is the time to the first affected proxy's arrival.
	FirstMillis float64 `json:"firstMillis"`
	// Time from just before the admin API call(s) making the change to the
	// new config's arrival, at the 50th, 90th, 99th and 100th percentile of
	// the affected proxies, in milliseconds.
	P50Millis  float64 `json:"p50Millis"`
	P90Millis  float64 `json:"p90Millis"`
	P99Millis  float64 `json:"p99Millis"`
	P100Millis float64 `json:"p100Millis"`
	// OtherMessages counts messages that reached watches of other
	// destinations while the change converged (want 0: nothing else changed).
	OtherMessages int64 `json:"otherMessages"`
	// ServerPushes is the growth of the control plane's push counter over the
	// change (want Affected).
	ServerPushes int64 `json:"serverPushes"`
	// ServerP99Millis is the upper bound of the control plane's push latency
	// bucket (trellis_controlplane_push_latency_seconds) that holds the 99th
	// percentile of its pushes during the change: the server's share, from
	// snapshot to send, without the admin call or the proxies' receipt.
	ServerP99Millis float64 `json:"serverP99Millis"`
}

// Memory is the control plane process's memory, from /proc.
type Memory struct {
	PID int `json:"pid"`
	// RSSBytes is VmRSS after the last change; PeakRSSBytes is VmHWM, the
	// peak over the whole run.
	RSSBytes     int64 `json:"rssBytes"`
	PeakRSSBytes int64 `json:"peakRSSBytes"`
}

// ServerMetrics are figures from the control plane's /metrics.
type ServerMetrics struct {
	ConnectedProxies   float64 `json:"connectedProxies"`
	Streams            float64 `json:"streams"`
	Pushes             float64 `json:"pushes"`
	CertificatesIssued float64 `json:"certificatesIssued"`
	PushLatencyCount   uint64  `json:"pushLatencyCount"`
	SnapshotBuilds     uint64  `json:"snapshotBuilds"`
}

// ErrNotConverged means a change did not reach every affected proxy in time.
var ErrNotConverged = errors.New("not every affected proxy received the change")

func (o *Options) defaults() error {
	if o.Watch == 0 {
		o.Watch = 3
	}
	if o.Changes == 0 {
		o.Changes = 4
	}
	if o.Identities == 0 {
		o.Identities = 8
	}
	if o.Connections == 0 {
		o.Connections = o.Proxies
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	switch {
	case o.Settle == 0:
		o.Settle = 5 * time.Second
	case o.Settle < 0:
		o.Settle = 0
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	switch {
	case o.Proxies < 1:
		return errors.New("--proxies must be at least 1")
	case o.Services < 2:
		return errors.New("--services must be at least 2 (a hot and a cold service are changed)")
	case o.Watch < 1 || o.Watch > o.Services:
		return fmt.Errorf("--watch %d: want from 1 to --services (%d)", o.Watch, o.Services)
	case o.Changes < 1:
		return errors.New("--changes must be at least 1")
	case o.Connections < 1 || o.Connections > o.Proxies:
		return fmt.Errorf("--connections %d: want from 1 to --proxies (%d)", o.Connections, o.Proxies)
	}
	o.Identities = min(o.Identities, o.Connections)
	if o.Trellis == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding the trellis binary: %w", err)
		}
		o.Trellis = self
	}
	return nil
}

func serviceName(i int) string { return fmt.Sprintf("svc-%04d", i) }

// watched returns the services proxy p watches: the hot one (0) and watch-1
// others spread evenly over 1..services-1.
func watched(p, watch, services int) []int {
	out := []int{0}
	for j := range watch - 1 {
		out = append(out, 1+(p*(watch-1)+j)%(services-1))
	}
	return out
}

// Run starts a control plane, loads it and measures. It stops everything it
// started before returning. A change that does not reach every affected proxy
// within the timeout fails the run with ErrNotConverged, with the figures so far.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	res := &Result{Proxies: o.Proxies, Services: o.Services, Watch: o.Watch, Streams: o.Proxies * o.Watch,
		Connections: o.Connections, Identities: o.Identities}
	// Each connection is a socket at both ends; the child inherits the limit.
	if err := raiseNoFile(uint64(o.Connections) + 1024); err != nil {
		return nil, err
	}
	progress := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	cp, err := startControlPlane(ctx, o.Trellis, o.Env)
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	progress("control plane pid %d: gRPC %s, admin %s", cp.pid, cp.info.GRPC, cp.info.Admin)

	start := time.Now()
	tokens, err := register(ctx, cp.client, o)
	if err != nil {
		return nil, err
	}
	res.Registered = o.Services + 4 + o.Identities
	res.SetupMillis = millis(time.Since(start))
	progress("registered %d workloads in %s", res.Registered, time.Since(start).Round(time.Millisecond))

	fleet, err := newFleet(ctx, cp, tokens, o)
	if err != nil {
		return nil, err
	}
	defer fleet.close()
	start = time.Now()
	if err := fleet.connect(ctx, o.Timeout); err != nil {
		return nil, err
	}
	res.ConnectMillis = millis(time.Since(start))
	progress("%d proxies (%d streams on %d connections) have their first configs after %s",
		o.Proxies, res.Streams, o.Connections, time.Since(start).Round(time.Millisecond))

	var failed error
	splitFlips := map[int]int{}
	for i := range o.Changes {
		select {
		case <-time.After(o.Settle):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		target := 0
		if (i/2)%2 == 1 {
			target = 1
		}
		var ch change
		if i%2 == 0 {
			ch = splitFlip(target, splitFlips[target])
			splitFlips[target]++
		} else {
			ch = endpointAdded(target, i)
		}
		cr, err := fleet.measure(ctx, cp, ch, o.Timeout)
		if err != nil && !errors.Is(err, ErrNotConverged) {
			return nil, err
		}
		res.Changes = append(res.Changes, cr)
		progress("change %d, %s on %s: %d/%d affected proxies, p99 %.1f ms, max %.1f ms",
			i+1, cr.Kind, cr.Service, cr.Received, cr.Affected, cr.P99Millis, cr.P100Millis)
		if err != nil {
			failed = err
			break
		}
	}

	res.ControlPlane, err = readMemory(cp.pid)
	if err != nil {
		return nil, err
	}
	if self, err := readMemory(os.Getpid()); err == nil {
		res.ToolRSSBytes = self.RSSBytes
	}
	if sm, err := cp.metrics(ctx); err == nil {
		res.Server = sm
	} else {
		progress("reading the control plane's /metrics: %v", err)
	}
	res.Notes = notes(o)
	return res, failed
}

func notes(o Options) []string {
	n := []string{
		"control plane: `trellis control-plane` as a child process on a temporary state directory, on 127.0.0.1; its memory is its own",
		"services: local-mode registrations with no sidecars behind them; the control plane runs with --grace 24h so that registered, ready workloads count as endpoints",
		fmt.Sprintf("proxies: simulated in this process with grpc-go over mutual TLS; they share the certificates of %d registered client workloads (a destination's config does not depend on the caller)", o.Identities),
		"time of a change: from just before the admin API call(s) that make it until the proxy's stream returns the new config; it includes validation, persisting the store (fsync) and rebuilding the snapshot",
		fmt.Sprintf("changes are %s apart, the first %s after the last proxy got its first configs", o.Settle, o.Settle),
		"the machine's cores are shared by the control plane, the simulated proxies and anything else running",
	}
	if o.Connections < o.Proxies {
		n = append(n, fmt.Sprintf("connections: %d proxies share %d gRPC connections (about %d per connection, each proxy's %d watches on one); a real mesh has one connection per proxy", o.Proxies, o.Connections, (o.Proxies+o.Connections-1)/o.Connections, o.Watch))
	} else {
		n = append(n, "connections: one gRPC connection (TLS session) per proxy")
	}
	return n
}

// change is one mutation and how to recognise its result.
type change struct {
	kind    string
	service int
	// apply makes the change through the admin API.
	apply func(ctx context.Context, c *controlplane.Client) error
	// arrived says whether a config of the service includes the change.
	arrived func(*proxyv1.DestinationConfig) bool
}

func splitYAML(svc int, w1, w2 int) []byte {
	name := serviceName(svc)
	return fmt.Appendf(nil, `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: %[1]s-split
  namespace: %[2]s
spec:
  service: %[1]s.%[2]s
  backends:
  - service: %[1]s-v1
    weight: %[3]d
  - service: %[1]s-v2
    weight: %[4]d
`, name, serviceNS, w1, w2)
}

// splitFlip moves the split's weights to 90/10 and 10/90 in turn (they start at
// 50/50).
func splitFlip(svc, flip int) change {
	w1, w2 := 90, 10
	if flip%2 == 1 {
		w1, w2 = 10, 90
	}
	name := serviceName(svc)
	return change{
		kind:    fmt.Sprintf("TrafficSplit %d/%d", w1, w2),
		service: svc,
		apply: func(ctx context.Context, c *controlplane.Client) error {
			_, err := c.Apply(ctx, name+"-split.yaml", splitYAML(svc, w1, w2))
			return err
		},
		arrived: func(dc *proxyv1.DestinationConfig) bool {
			want := map[string]uint32{name + "-v1." + serviceNS: uint32(w1), name + "-v2." + serviceNS: uint32(w2)}
			got := 0
			for _, r := range dc.GetRoutes() {
				for _, b := range r.GetBackends() {
					if w, ok := want[b.GetBackend()]; ok && w == b.GetWeight() {
						got++
					}
				}
			}
			return got == len(want)
		},
	}
}

// endpointAdded registers a new, ready workload behind the service's v1 backend.
func endpointAdded(svc, round int) change {
	name := serviceName(svc)
	addr := fmt.Sprintf("127.0.0.1:%d", 40000+round)
	return change{
		kind:    "endpoint added",
		service: svc,
		apply: func(ctx context.Context, c *controlplane.Client) error {
			r, err := c.Register(ctx, local.Registration{
				Name: fmt.Sprintf("%s-v1-new%d", name, round), Namespace: serviceNS, Account: name,
				Services: []model.ServiceMembership{{Service: name, ServicePort: port}, {Service: name + "-v1", ServicePort: port}},
				Address:  addr,
			})
			if err != nil {
				return err
			}
			return c.SetReady(ctx, r.ID, true)
		},
		arrived: func(dc *proxyv1.DestinationConfig) bool {
			for _, b := range dc.GetBackends() {
				for _, e := range b.GetEndpoints() {
					if e.GetAddress() == addr {
						return true
					}
				}
			}
			return false
		},
	}
}

// register registers the services, the split backends and splits, and the
// client identities, and returns the client identities' join tokens.
func register(ctx context.Context, c *controlplane.Client, o Options) ([]string, error) {
	type job struct {
		reg   local.Registration
		ready bool
	}
	var jobs []job
	for i := range o.Services {
		name := serviceName(i)
		jobs = append(jobs, job{reg: local.Registration{
			Name: name, Namespace: serviceNS, Account: name,
			Services: []model.ServiceMembership{{Service: name, ServicePort: port}},
			Address:  fmt.Sprintf("127.0.0.1:%d", 20000+i),
		}, ready: true})
	}
	for _, svc := range []int{0, 1} {
		name := serviceName(svc)
		for v := 1; v <= 2; v++ {
			b := fmt.Sprintf("%s-v%d", name, v)
			jobs = append(jobs, job{reg: local.Registration{
				Name: b, Namespace: serviceNS, Account: name,
				Services: []model.ServiceMembership{{Service: name, ServicePort: port}, {Service: b, ServicePort: port}},
				Address:  fmt.Sprintf("127.0.0.1:%d", 30000+svc*2+v),
			}, ready: true})
		}
	}
	first := len(jobs)
	for i := range o.Identities {
		jobs = append(jobs, job{reg: local.Registration{
			Name: fmt.Sprintf("proxy-%d", i), Namespace: clientNS, Account: fmt.Sprintf("proxy-%d", i),
			Address: "127.0.0.1:1", // never called: no service
		}})
	}
	tokens := make([]string, o.Identities)
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) || ctx.Err() != nil {
					return
				}
				r, err := c.Register(ctx, jobs[i].reg)
				if err == nil && jobs[i].ready {
					err = c.SetReady(ctx, r.ID, true)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("registering %s/%s: %w", jobs[i].reg.Namespace, jobs[i].reg.Name, err) })
					next.Store(int64(len(jobs)))
					return
				}
				if i >= first {
					tokens[i-first] = r.Token
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	for _, svc := range []int{0, 1} {
		if _, err := c.Apply(ctx, serviceName(svc)+"-split.yaml", splitYAML(svc, 50, 50)); err != nil {
			return nil, fmt.Errorf("applying the TrafficSplit of %s: %w", serviceName(svc), err)
		}
	}
	return tokens, ctx.Err()
}

// percentile returns the p-th percentile (nearest rank) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// raiseNoFile raises the soft limit on open files to at least need, up to the
// hard limit, and fails when the hard limit is below need.
func raiseNoFile(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("%d connections need about %d open files, and the hard limit (ulimit -Hn) is %d: raise it or pass --connections", need-1024, need, lim.Max)
	}
	lim.Cur = lim.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}
