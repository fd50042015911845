package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"time"

	"github.com/trellis-mesh/trellis/internal/capture"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/netns"
)

// Ports of a sidecar in a network namespace of its own: fixed, since nothing
// else listens there.
const (
	nsAdminPort    = 15000
	nsOutboundPort = 15001 // the explicit HTTP proxy, still offered
	nsCapturedOut  = 15002 // connections capture redirects from the app
	nsInboundPort  = 15003 // mTLS from peers
	nsCapturedIn   = 15006 // connections to the app's ports
	// nsSocketMark marks the sidecar's own sockets, which capture lets pass.
	nsSocketMark = 0x7e11
)

// placement is where a workload's sidecar and program run, and how they reach
// each other and the mesh.
type placement struct {
	inbound, admin string         // the sidecar's addresses, as registered
	proxyArgs      []string       // the sidecar's listener and control-plane flags
	listeners      []net.Listener // sockets handed to the sidecar as fd 3, 4, ...
	appEnv         []string       // the program's environment beyond the host's
	command        func(name string, args ...string) *exec.Cmd
	dial           func(addr string) (net.Conn, error) // from where the program runs
	close          func()
}

// sharedPlacement runs the workload in the host's network: the sidecar's
// listeners are bound here on loopback and handed over as inherited sockets
// (their ports are known before registration and cannot be taken by another
// process in between), and the program uses the sidecar as its HTTP proxy.
func sharedPlacement(cpGRPC string, forwards []tcpForward) (*placement, error) {
	lns, err := bindLoopback(3)
	if err != nil {
		return nil, err
	}
	pl := &placement{
		inbound: lns[0].Addr().String(), admin: lns[2].Addr().String(),
		listeners: lns,
		proxyArgs: []string{"--control-plane", cpGRPC, "--inbound", "fd:3", "--outbound", "fd:4", "--admin", "fd:5"},
		command:   exec.Command,
		dial:      func(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) },
		close:     func() { closeAll(lns) },
	}
	proxyURL := "http://" + lns[1].Addr().String()
	pl.appEnv = []string{
		"HTTP_PROXY=" + proxyURL, "http_proxy=" + proxyURL,
		"NO_PROXY=localhost,127.0.0.1,::1", "no_proxy=localhost,127.0.0.1,::1",
	}
	// TCP forward ports are bound here too, and handed over after the
	// sidecar's own three.
	for i, f := range forwards {
		ln, err := net.Listen("tcp", f.listen)
		if err != nil {
			pl.close()
			return nil, fmt.Errorf("--tcp-forward %s=%s: %w", f.listen, f.authority, err)
		}
		pl.listeners = append(pl.listeners, ln)
		pl.proxyArgs = append(pl.proxyArgs, "--tcp-forward", fmt.Sprintf("fd:%d=%s", 6+i, f.authority))
	}
	return pl, nil
}

// isolatedPlacement gives the workload a network namespace of its own with
// transparent capture, as a pod has: the program calls services by name
// (resolved to their virtual addresses by the namespace's /etc/hosts) with no
// proxy setting, and capture hands its connections to the sidecar.
func (o *runOptions) isolatedPlacement(c *controlplane.Client, forwards []tcpForward) (*placement, error) {
	if c.Info.GRPCSocket == "" {
		return nil, fmt.Errorf("the control plane of %s serves no Unix socket, which a sidecar in a namespace of its own needs: restart it with a shorter --state-dir path", o.stateDir)
	}
	inPorts, err := capture.ParsePorts(o.excludeInboundPorts)
	if err != nil {
		return nil, fmt.Errorf("--exclude-inbound-ports: %w", err)
	}
	outPorts, err := capture.ParsePorts(o.excludeOutboundPorts)
	if err != nil {
		return nil, fmt.Errorf("--exclude-outbound-ports: %w", err)
	}
	cidrs, err := capture.ParseCIDRs(o.excludeOutboundCIDRs)
	if err != nil {
		return nil, fmt.Errorf("--exclude-outbound-cidrs: %w", err)
	}
	ns, err := netns.Create(o.namespace + "-" + o.name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(ns.Path)
	if err != nil {
		ns.Close()
		return nil, err
	}
	rules := capture.Rules{
		OutboundPort: nsCapturedOut, InboundPort: nsCapturedIn, ProxyMark: nsSocketMark,
		ExcludeInboundPorts:  append([]int{nsAdminPort, nsInboundPort}, inPorts...),
		ExcludeOutboundPorts: outPorts, ExcludeOutboundCIDRs: cidrs,
	}
	err = capture.Apply(int(f.Fd()), rules)
	f.Close()
	if err != nil {
		ns.Close()
		return nil, err
	}
	hostsCtx, stopHosts := context.WithCancel(context.Background())
	go keepHosts(hostsCtx, c, ns)

	ip := ns.IP.String()
	pl := &placement{
		inbound: net.JoinHostPort(ip, strconv.Itoa(nsInboundPort)),
		admin:   net.JoinHostPort(ip, strconv.Itoa(nsAdminPort)),
		proxyArgs: []string{
			"--control-plane", c.Info.GRPCSocket,
			"--inbound", net.JoinHostPort(ip, strconv.Itoa(nsInboundPort)),
			"--outbound", net.JoinHostPort("127.0.0.1", strconv.Itoa(nsOutboundPort)),
			"--admin", net.JoinHostPort(ip, strconv.Itoa(nsAdminPort)),
			"--capture-outbound", net.JoinHostPort("127.0.0.1", strconv.Itoa(nsCapturedOut)),
			"--capture-inbound", net.JoinHostPort("0.0.0.0", strconv.Itoa(nsCapturedIn)),
			"--socket-mark", fmt.Sprintf("%#x", nsSocketMark),
		},
		command: ns.Command,
		dial: func(addr string) (conn net.Conn, err error) {
			err = capture.InNamespace(ns.Path, func() error {
				conn, err = net.DialTimeout("tcp", addr, time.Second)
				return err
			})
			return conn, err
		},
		close: func() { stopHosts(); ns.Close() },
	}
	for _, f := range forwards {
		pl.proxyArgs = append(pl.proxyArgs, "--tcp-forward", f.listen+"="+f.authority)
	}
	return pl, nil
}

// keepHosts keeps the namespace's /etc/hosts in step with the mesh's
// services: each service answers to name.namespace, name.namespace.svc and
// name.namespace.svc.cluster.local at its virtual address.
func keepHosts(ctx context.Context, c *controlplane.Client, ns *netns.Namespace) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if svcs, err := c.Services(ctx); err == nil {
			var es []netns.HostEntry
			for _, s := range svcs {
				base := s.Key.Name + "." + s.Key.Namespace
				for _, a := range s.Addresses {
					es = append(es, netns.HostEntry{Addr: a, Names: []string{base, base + ".svc", base + ".svc.cluster.local"}})
				}
			}
			sort.Slice(es, func(i, j int) bool { return es[i].Addr.Less(es[j].Addr) })
			ns.WriteHosts(es)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
