// Package netns gives a local-mode workload a network namespace of its own,
// as a pod has on Kubernetes: a veth into the bridge trellis0 on 198.19.0.0/16
// (the host is 198.19.0.1), an address leased for the namespace's life, a
// route to the services' virtual addresses, and an /etc/hosts that resolves
// service names to them. `trellis run --isolation netns` uses it, and programs
// transparent capture inside (package capture).
//
// It drives iproute2's ip for links, addresses and namespaces, and needs root.
// Leases live in /run/trellis, shared by every state directory on the machine,
// so two meshes never hand out one address; a lease whose process is gone is
// reclaimed, with whatever it left.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Bridge and addressing.
const (
	BridgeName = "trellis0"
)

var (
	// Subnet holds the host's bridge address and every workload's.
	Subnet = netip.MustParsePrefix("198.19.0.0/16")
	// Gateway is the host's address on the bridge.
	Gateway = netip.MustParseAddr("198.19.0.1")
	// ServiceRange is routed toward the bridge so that connections to the
	// services' virtual addresses (model.LocalVirtualAddresses) have a way
	// out of the app, on which capture takes them.
	ServiceRange = netip.MustParsePrefix("198.18.0.0/16")
)

// leaseDir holds the lease file and its lock; a variable for tests.
var leaseDir = "/run/trellis"

// Namespace is one workload's network namespace.
type Namespace struct {
	Name     string     // as `ip netns` names it
	Path     string     // /run/netns/NAME
	IP       netip.Addr // the workload's address on the bridge
	hostVeth string
}

type lease struct {
	IP   netip.Addr `json:"ip"`
	Name string     `json:"name"`
	Veth string     `json:"veth"`
	PID  int        `json:"pid"`
}

// Create makes a namespace for the calling process, which holds its lease
// until Close. label (the workload's name) only helps people read `ip netns`.
func Create(label string) (*Namespace, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces need root: run as root, or drop --isolation netns")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("network namespaces need iproute2's ip: apt-get install iproute2")
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	n := &Namespace{Name: "trellis-" + sanitize(label) + "-" + id, hostVeth: "tv" + id}
	n.Path = filepath.Join("/run/netns", n.Name)

	err := withLeases(func(ls []lease) ([]lease, error) {
		if err := ensureBridge(); err != nil {
			return ls, err
		}
		taken := map[netip.Addr]bool{Gateway: true}
		for _, l := range ls {
			taken[l.IP] = true
		}
		for a := Gateway.Next(); Subnet.Contains(a); a = a.Next() {
			if !taken[a] && a != netip.MustParseAddr("198.19.255.255") {
				n.IP = a
				break
			}
		}
		if !n.IP.IsValid() {
			return ls, errors.New("no free address left in " + Subnet.String())
		}
		return append(ls, lease{IP: n.IP, Name: n.Name, Veth: n.hostVeth, PID: os.Getpid()}), nil
	})
	if err != nil {
		return nil, err
	}
	if err := n.setup(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Namespace) setup() error {
	bits := fmt.Sprint(Subnet.Bits())
	for _, c := range [][]string{
		{"netns", "add", n.Name},
		{"link", "add", n.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", n.Name},
		{"link", "set", n.hostVeth, "master", BridgeName, "up"},
		{"-n", n.Name, "link", "set", "lo", "up"},
		{"-n", n.Name, "addr", "add", n.IP.String() + "/" + bits, "dev", "eth0"},
		{"-n", n.Name, "link", "set", "eth0", "up"},
		{"-n", n.Name, "route", "add", ServiceRange.String(), "via", Gateway.String()},
	} {
		if err := ip(c...); err != nil {
			return err
		}
	}
	return n.WriteHosts(nil)
}

// Close deletes the namespace (its veth goes with it), its hosts file and its
// lease; the last lease out takes the bridge with it.
func (n *Namespace) Close() error {
	err := release(lease{Name: n.Name, Veth: n.hostVeth})
	os.RemoveAll(filepath.Join("/etc/netns", n.Name))
	return err
}

// HostEntry is one line of the namespace's /etc/hosts.
type HostEntry struct {
	Addr  netip.Addr
	Names []string
}

// WriteHosts replaces the namespace's /etc/hosts (which `ip netns exec` puts
// in place of the host's for the programs it runs) with localhost and
// entries. It writes the file in place, so programs already running see the
// change.
func (n *Namespace) WriteHosts(entries []HostEntry) error {
	dir := filepath.Join("/etc/netns", n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# written by trellis run --isolation netns: the mesh's services\n127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "%s\t%s\n", e.Addr, strings.Join(e.Names, " "))
	}
	path := filepath.Join(dir, "hosts")
	if old, err := os.ReadFile(path); err == nil && string(old) == b.String() {
		return nil
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// Command runs name with args inside the namespace, with its /etc/hosts.
func (n *Namespace) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

func ensureBridge() error {
	if _, err := os.Stat(filepath.Join("/sys/class/net", BridgeName)); err != nil {
		if err := ip("link", "add", BridgeName, "type", "bridge"); err != nil {
			return err
		}
	}
	if err := ip("addr", "replace", Gateway.String()+"/"+fmt.Sprint(Subnet.Bits()), "dev", BridgeName); err != nil {
		return err
	}
	return ip("link", "set", BridgeName, "up")
}

// release drops the lease named l.Name, and every lease whose process is gone,
// deleting what each left; the bridge goes when none is left.
func release(l lease) error {
	return withLeases(func(ls []lease) ([]lease, error) {
		out := ls[:0]
		for _, x := range ls {
			if x.Name != l.Name {
				out = append(out, x)
			}
		}
		teardown(l)
		if len(out) == 0 {
			ip("link", "del", BridgeName)
		}
		return out, nil
	})
}

func teardown(l lease) {
	if _, err := os.Stat(filepath.Join("/run/netns", l.Name)); err == nil {
		ip("netns", "del", l.Name)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", l.Veth)); err == nil && l.Veth != "" {
		ip("link", "del", l.Veth)
	}
	os.RemoveAll(filepath.Join("/etc/netns", l.Name))
}

// withLeases runs f on the lease list under an exclusive lock and stores what
// it returns. Leases of processes that are gone are reclaimed first.
func withLeases(f func([]lease) ([]lease, error)) error {
	if err := os.MkdirAll(leaseDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(leaseDir, "netns.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock the network namespace leases: %w", err)
	}
	path := filepath.Join(leaseDir, "netns-leases.json")
	var ls []lease
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &ls); err != nil {
			return fmt.Errorf("%s: %w (remove it once no trellis run is left)", path, err)
		}
	}
	live := ls[:0]
	for _, l := range ls {
		if alive(l.PID) {
			live = append(live, l)
		} else {
			teardown(l)
		}
	}
	out, ferr := f(live)
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	b, _ := json.MarshalIndent(out, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return ferr
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sanitize keeps a label to what a namespace name may hold, and short.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
		if b.Len() == 20 {
			break
		}
	}
	if b.Len() == 0 {
		return "workload"
	}
	return b.String()
}
