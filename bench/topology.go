package bench

import (
	"context"
	"fmt"
	"github.com/trellis-mesh/trellis/internal/freeport"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/bench/fortio"
	"github.com/trellis-mesh/trellis/bench/procfs"
)

// The configurations, by the names the flags and the report use.
const (
	Direct  = "direct"
	Trellis = "trellis-2hop"
	Nginx   = "nginx-2hop"
	HAProxy = "haproxy-2hop"
)

// AllConfigurations lists every configuration, in the order of a round.
func AllConfigurations() []string { return []string{Direct, Trellis, Nginx, HAProxy} }

// hop is one proxy process tree measured as one.
type hop struct {
	name string // hop1 (the caller's side) or hop2 (the app's side)
	pids []int
}

// topology is one configuration, up and ready for the load.
type topology struct {
	name string
	// url is what the load calls; proxy, if set, is the explicit HTTP proxy it
	// goes through.
	url, proxy string
	hops       []hop
	procs      []*proc
}

// alive fails if a process of the topology has exited.
func (t *topology) alive() error {
	for _, p := range t.procs {
		if ok, err := p.exited(); ok {
			return fmt.Errorf("%s exited (%v); its output ends with:\n%s", p.name, err, p.logTail(8))
		}
	}
	return nil
}

// env is what the set-up of every topology shares.
type env struct {
	opts    Options
	dir     string
	sup     *supervisor
	fs      procfs.FS
	log     io.Writer
	backend string // fortio's echo server for direct and the reference proxies
}

// freePort picks a loopback port below the ephemeral range.
func freePort() (int, error) { return freeport.Pick() }

func freeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// waitOK calls url (through proxy, if set) until it answers 200.
func waitOK(ctx context.Context, rawURL, proxy string, timeout time.Duration, procs ...*proc) error {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	if proxy != "" {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: proxy})
	}
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := hc.Get(rawURL)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("status %d (%s)", resp.StatusCode, resp.Header.Get("X-Trellis-Reason"))
		} else {
			last = err.Error()
		}
		for _, p := range procs {
			if ok, err := p.exited(); ok {
				return fmt.Errorf("%s exited (%v) before %s answered; its output ends with:\n%s", p.name, err, rawURL, p.logTail(8))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer 200 within %s; last: %s", rawURL, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startBackend starts fortio's echo server for direct and the reference proxies.
func (e *env) startBackend(ctx context.Context) (string, error) {
	if e.backend != "" {
		return e.backend, nil
	}
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(e.dir, "backend")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command(e.opts.FortioBin, fortio.ServerArgs(addr)...)
	cmd.Dir = dir
	p, err := e.sup.start("fortio server", cmd, filepath.Join(dir, "output.log"), syscall.SIGTERM)
	if err != nil {
		return "", err
	}
	if err := waitOK(ctx, "http://"+addr+"/echo", "", 10*time.Second, p); err != nil {
		return "", fmt.Errorf("fortio server: %w", err)
	}
	e.backend = addr
	return addr, nil
}

func (e *env) startDirect(ctx context.Context) (*topology, error) {
	backend, err := e.startBackend(ctx)
	if err != nil {
		return nil, err
	}
	return &topology{name: Direct, url: "http://" + backend + "/echo"}, nil
}

// startReference starts two hops of nginx or haproxy in front of the backend.
func (e *env) startReference(ctx context.Context, name string) (*topology, error) {
	backend, err := e.startBackend(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(e.dir, name), 0o755); err != nil {
		return nil, err
	}
	pki, err := writePKI(filepath.Join(e.dir, name))
	if err != nil {
		return nil, err
	}
	hop1Addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	hop2Addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	t := &topology{name: name, url: "http://" + hop1Addr + "/echo"}
	// hop2 first, so that hop1's first connection finds it.
	for _, h := range []hopConfig{
		{Listen: hop2Addr, Upstream: backend, TLSIn: true, PKI: pki},
		{Listen: hop1Addr, Upstream: hop2Addr, TLSOut: true, PKI: pki},
	} {
		hopName := "hop1"
		if h.TLSIn {
			hopName = "hop2"
		}
		h.Dir = filepath.Join(e.dir, name, hopName)
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return nil, err
		}
		var cmd *exec.Cmd
		var stopSig syscall.Signal
		switch name {
		case Nginx:
			conf := filepath.Join(h.Dir, "nginx.conf")
			if err := os.WriteFile(conf, []byte(nginxConfig(h)), 0o644); err != nil {
				return nil, err
			}
			// -e: the error log before the file is read, -p: relative paths;
			// nothing of the system's nginx set-up is read.
			cmd = exec.Command(e.opts.NginxBin, "-p", h.Dir, "-c", conf, "-e", filepath.Join(h.Dir, "error.log"))
			stopSig = syscall.SIGTERM
		case HAProxy:
			conf := filepath.Join(h.Dir, "haproxy.cfg")
			if err := os.WriteFile(conf, []byte(haproxyConfig(h)), 0o644); err != nil {
				return nil, err
			}
			cmd = exec.Command(e.opts.HAProxyBin, "-f", conf, "-db")
			stopSig = syscall.SIGTERM
		}
		cmd.Dir = h.Dir
		p, err := e.sup.start(name+" "+hopName, cmd, filepath.Join(h.Dir, "output.log"), stopSig)
		if err != nil {
			return nil, err
		}
		t.procs = append(t.procs, p)
	}
	if err := waitOK(ctx, t.url, "", 10*time.Second, t.procs...); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// hop1 was started second.
	for i, p := range []*proc{t.procs[1], t.procs[0]} {
		kids, err := e.fs.Children(p.pid())
		if err != nil {
			return nil, err
		}
		t.hops = append(t.hops, hop{name: fmt.Sprintf("hop%d", i+1), pids: append([]int{p.pid()}, kids...)})
	}
	return t, nil
}
