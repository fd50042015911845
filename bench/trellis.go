package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/bench/fortio"
)

// The mesh the harness builds: namespace bench, the fortio echo server as the
// "echo" service's only workload, and a client workload whose sidecar the load
// uses as its HTTP proxy. Permissive mode, as most meshes start.
const (
	meshNamespace = "bench"
	meshService   = "echo"
	meshPort      = 8080
	meshConfig    = `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
  namespace: osm-system
spec:
  traffic:
    enablePermissiveTrafficPolicyMode: true
    enableEgress: false
`
)

// sidecarFacts are what the harness learns of the Trellis sidecars at set-up.
type sidecarFacts struct {
	// IdleRSS is each sidecar's VmRSS once certified and, for the client, with
	// the one destination loaded, before any load; keyed by hop.
	IdleRSS map[string]uint64
	// StartToReady are the durations the sidecars logged in their "ready" line.
	StartToReady []time.Duration
}

// workloadView is the part of `trellis get workloads -o json` the harness reads.
type workloadView struct {
	Name         string `json:"name"`
	AdminAddress string `json:"adminAddress"`
	Ready        bool   `json:"ready"`
	Connected    bool   `json:"connected"`
}

// sidecarConfig is the part of a sidecar's /config the harness reads.
type sidecarConfig struct {
	Ready     bool `json:"ready"`
	Listeners struct {
		Outbound string `json:"outbound"`
	} `json:"listeners"`
	Process struct {
		PID      int    `json:"pid"`
		RSSBytes uint64 `json:"rss_bytes"`
	} `json:"process"`
	Destinations []json.RawMessage `json:"destinations"`
}

// readyLine is the sidecar's JSON log line that says it is ready.
type readyLine struct {
	Msg          string `json:"msg"`
	StartToReady string `json:"start_to_ready"`
}

// parseStartToReady finds the "ready" log lines in a sidecar's output and
// returns the start-to-ready durations they carry, in order.
func parseStartToReady(output []byte) ([]time.Duration, error) {
	var out []time.Duration
	sc := bufio.NewScanner(bytes.NewReader(output))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var r readyLine
		if json.Unmarshal(line, &r) != nil || r.Msg != "ready" || r.StartToReady == "" {
			continue
		}
		d, err := time.ParseDuration(r.StartToReady)
		if err != nil {
			return nil, fmt.Errorf("ready line %q: start_to_ready: %w", line, err)
		}
		out = append(out, d)
	}
	return out, sc.Err()
}

func (e *env) trellisCmd(stateDir string, args ...string) *exec.Cmd {
	return exec.Command(filepath.Join(e.opts.TrellisBin, "trellis"), append([]string{"--state-dir", stateDir}, args...)...)
}

// startTrellis starts a control plane, the echo server and a client under
// `trellis run`, and returns the topology with the facts of its sidecars.
func (e *env) startTrellis(ctx context.Context) (*topology, *sidecarFacts, error) {
	dir := filepath.Join(e.dir, Trellis)
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, nil, err
	}
	t := &topology{name: Trellis, url: fmt.Sprintf("http://%s.%s:%d/echo", meshService, meshNamespace, meshPort)}

	cp, err := e.sup.start("trellis control-plane",
		e.trellisCmd(state, "control-plane", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
		filepath.Join(dir, "control-plane.log"), syscall.SIGTERM)
	if err != nil {
		return nil, nil, err
	}
	t.procs = append(t.procs, cp)
	if err := waitFile(ctx, filepath.Join(state, "control-plane.json"), 15*time.Second, cp); err != nil {
		return nil, nil, err
	}
	mc := filepath.Join(dir, "mesh-config.yaml")
	if err := os.WriteFile(mc, []byte(meshConfig), 0o644); err != nil {
		return nil, nil, err
	}
	if out, err := e.trellisCmd(state, "apply", "-f", mc).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("trellis apply -f %s: %w: %s", mc, err, out)
	}

	appPort, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	appAddr := "127.0.0.1:" + strconv.Itoa(appPort)
	serverArgs := append([]string{"run", "-n", meshNamespace, "--account", "server",
		"--service", fmt.Sprintf("%s:%d", meshService, meshPort), "--port", strconv.Itoa(appPort),
		"--", e.opts.FortioBin}, fortio.ServerArgs(appAddr)...)
	srvCmd := e.trellisCmd(state, serverArgs...)
	srvCmd.Dir = dir
	srv, err := e.sup.start("trellis run (server)", srvCmd, filepath.Join(dir, "server.log"), syscall.SIGTERM)
	if err != nil {
		return nil, nil, err
	}
	t.procs = append(t.procs, srv)
	cli, err := e.sup.start("trellis run (client)",
		e.trellisCmd(state, "run", "-n", meshNamespace, "--account", "client", "--", "sleep", "infinity"),
		filepath.Join(dir, "client.log"), syscall.SIGTERM)
	if err != nil {
		return nil, nil, err
	}
	t.procs = append(t.procs, cli)

	// Wait until both workloads are registered, connected, and the server ready.
	var admins map[string]string
	deadline := time.Now().Add(30 * time.Second)
	for {
		admins, err = e.readyWorkloads(state)
		if err == nil {
			break
		}
		if aerr := t.alive(); aerr != nil {
			return nil, nil, aerr
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("trellis workloads not ready after 30s: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	cfgs := map[string]sidecarConfig{}
	for _, w := range []string{"client", "server"} {
		c, err := getSidecarConfig(admins[w])
		if err != nil {
			return nil, nil, fmt.Errorf("sidecar of %s: %w", w, err)
		}
		cfgs[w] = c
	}
	t.proxy = cfgs["client"].Listeners.Outbound
	t.hops = []hop{
		{name: "hop1", pids: []int{cfgs["client"].Process.PID}},
		{name: "hop2", pids: []int{cfgs["server"].Process.PID}},
	}
	// One request loads the destination into the client sidecar.
	if err := waitOK(ctx, t.url, t.proxy, 15*time.Second, t.procs...); err != nil {
		return nil, nil, fmt.Errorf("through the client sidecar: %w", err)
	}
	time.Sleep(200 * time.Millisecond)
	facts := &sidecarFacts{IdleRSS: map[string]uint64{}}
	for _, h := range t.hops {
		st, err := e.fs.Status(h.pids[0])
		if err != nil {
			return nil, nil, fmt.Errorf("sidecar %s: %w", h.name, err)
		}
		facts.IdleRSS[h.name] = st.VmRSS
	}
	for _, p := range []*proc{srv, cli} {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			return nil, nil, err
		}
		d, err := parseStartToReady(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p.name, err)
		}
		facts.StartToReady = append(facts.StartToReady, d...)
	}
	// More start-to-ready samples: short-lived workloads whose program exits at once.
	for i := range e.opts.Probes {
		cmd := e.trellisCmd(state, "run", "-n", meshNamespace, "--account", fmt.Sprintf("probe-%d", i), "--", "true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, nil, fmt.Errorf("start-to-ready probe %d: %w: %s", i, err, out)
		}
		d, err := parseStartToReady(out)
		if err != nil || len(d) != 1 {
			return nil, nil, fmt.Errorf("start-to-ready probe %d: want one ready line, got %d (%v): %s", i, len(d), err, out)
		}
		facts.StartToReady = append(facts.StartToReady, d...)
	}
	return t, facts, nil
}

// readyWorkloads returns the admin addresses of the client and server
// workloads once both are connected and the server is ready.
func (e *env) readyWorkloads(state string) (map[string]string, error) {
	out, err := e.trellisCmd(state, "get", "workloads", "-o", "json").Output()
	if err != nil {
		return nil, fmt.Errorf("trellis get workloads: %w", err)
	}
	var ws []workloadView
	if err := json.Unmarshal(out, &ws); err != nil {
		return nil, fmt.Errorf("trellis get workloads -o json: %w", err)
	}
	admins := map[string]string{}
	for _, w := range ws {
		if w.Name != "client" && w.Name != "server" {
			continue
		}
		if !w.Connected || (w.Name == "server" && !w.Ready) {
			return nil, fmt.Errorf("workload %s: connected %v, ready %v", w.Name, w.Connected, w.Ready)
		}
		admins[w.Name] = w.AdminAddress
	}
	if len(admins) != 2 {
		return nil, errors.New("client and server workloads not both registered yet")
	}
	return admins, nil
}

func getSidecarConfig(admin string) (sidecarConfig, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := hc.Get("http://" + admin + "/config")
	if err != nil {
		return sidecarConfig{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sidecarConfig{}, fmt.Errorf("GET /config: status %d", resp.StatusCode)
	}
	var c sidecarConfig
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return sidecarConfig{}, fmt.Errorf("GET /config: %w", err)
	}
	if !c.Ready || c.Process.PID == 0 || c.Listeners.Outbound == "" {
		return sidecarConfig{}, fmt.Errorf("GET /config: ready %v, pid %d, outbound %q", c.Ready, c.Process.PID, c.Listeners.Outbound)
	}
	return c, nil
}

// waitFile waits until path exists.
func waitFile(ctx context.Context, path string, timeout time.Duration, p *proc) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if ok, err := p.exited(); ok {
			return fmt.Errorf("%s exited (%v) before writing %s; its output ends with:\n%s", p.name, err, filepath.Base(path), p.logTail(8))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not write %s within %s", p.name, filepath.Base(path), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
