//go:build linux

package capture

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/trellis-mesh/trellis/internal/capture/sock"
)

// ip runs iproute2, failing the test on error.
func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// pair makes two network namespaces joined by a veth pair: the workload
// ("w", 198.19.77.2 and fd00:77::2) and a peer ("p", 198.19.77.3 and
// fd00:77::3), the IPv6 addresses unique local ones. It returns their paths.
func pair(t *testing.T) (w, p string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	tag := fmt.Sprintf("tcap%d", os.Getpid()%100000)
	wn, pn := tag+"w", tag+"p"
	ip(t, "netns", "add", wn)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", wn).Run() })
	ip(t, "netns", "add", pn)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", pn).Run() })
	ip(t, "link", "add", tag+"a", "netns", wn, "type", "veth", "peer", "name", tag+"b", "netns", pn)
	for _, c := range [][]string{
		{"-n", wn, "link", "set", "lo", "up"},
		{"-n", pn, "link", "set", "lo", "up"},
		{"-n", wn, "addr", "add", "198.19.77.2/24", "dev", tag + "a"},
		{"-n", pn, "addr", "add", "198.19.77.3/24", "dev", tag + "b"},
		// nodad: usable at once, not after duplicate address detection
		{"-n", wn, "addr", "add", "fd00:77::2/64", "dev", tag + "a", "nodad"},
		{"-n", pn, "addr", "add", "fd00:77::3/64", "dev", tag + "b", "nodad"},
		{"-n", wn, "link", "set", tag + "a", "up"},
		{"-n", pn, "link", "set", tag + "b", "up"},
		// routes for virtual service addresses, as a mesh gives them
		{"-n", wn, "route", "add", "198.18.0.0/16", "via", "198.19.77.3"},
		{"-n", wn, "route", "add", "fd00:18::/64", "via", "fd00:77::3"},
	} {
		ip(t, c...)
	}
	return filepath.Join("/run/netns", wn), filepath.Join("/run/netns", pn)
}

// listenIn opens a TCP listener inside a namespace and records, for each
// connection, its original destination and the first line it was sent.
func listenIn(t *testing.T, ns, addr string) (<-chan string, net.Addr) {
	t.Helper()
	var ln net.Listener
	if err := InNamespace(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				od, err := sock.OriginalDst(c)
				b := make([]byte, 64)
				n, _ := c.Read(b)
				got <- fmt.Sprintf("%v %v %s", od, err, strings.TrimSpace(string(b[:n])))
				io.WriteString(c, "ok\n")
			}()
		}
	}()
	return got, ln.Addr()
}

// dialIn connects from inside a namespace and sends msg.
func dialIn(t *testing.T, ns, addr, msg string, d *net.Dialer) error {
	t.Helper()
	var c net.Conn
	err := InNamespace(ns, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	io.WriteString(c, msg+"\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = io.ReadAll(c)
	return err
}

func expect(t *testing.T, ch <-chan string, want, what string) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("%s: nothing arrived, want %q", what, want)
	}
}

// openNS opens the namespace at path for Apply and Remove; closed at cleanup.
func openNS(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// dialStep is one connection a capture test makes, from the namespace at
// from to addr, and where it must arrive: at, reading want.
type dialStep struct {
	from, addr, msg string
	d               *net.Dialer
	at              <-chan string
	want            string
	what            string // for failures; default msg
}

func (s dialStep) run(t *testing.T) {
	t.Helper()
	what := s.what
	if what == "" {
		what = s.msg
	}
	if err := dialIn(t, s.from, s.addr, s.msg, s.d); err != nil {
		t.Fatalf("%s: dial %s: %v", what, s.addr, err)
	}
	expect(t, s.at, s.want, what)
}

func TestCaptureInNamespace(t *testing.T) {
	w, p := pair(t)
	fd := openNS(t, w)
	const mark = 0x7e11
	rules := Rules{
		OutboundPort: DefaultOutboundPort, InboundPort: DefaultInboundPort, ProxyMark: mark,
		ExcludeOutboundPorts: []int{5432},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("198.19.77.3/32")},
		ExcludeInboundPorts:  []int{15003, 15000},
	}
	// The CIDR exclusion covers the peer, so the first checks use the port.
	rules.ExcludeOutboundCIDRs = nil
	if err := Apply(fd, rules); err != nil {
		t.Fatal(err)
	}
	if ok, err := Programmed(fd); err != nil || !ok {
		t.Fatalf("Programmed = %v, %v after Apply", ok, err)
	}
	// Applying again replaces the table rather than adding a second set.
	if err := Apply(fd, rules); err != nil {
		t.Fatalf("second Apply: %v", err)
	}

	captured, _ := listenIn(t, w, fmt.Sprintf("127.0.0.1:%d", DefaultOutboundPort))
	inbound, _ := listenIn(t, w, fmt.Sprintf("0.0.0.0:%d", DefaultInboundPort))
	mtls, _ := listenIn(t, w, "0.0.0.0:15003")
	peer80, _ := listenIn(t, p, "198.19.77.3:80")
	peer5432, _ := listenIn(t, p, "198.19.77.3:5432")

	plain := &net.Dialer{}
	marked := &net.Dialer{Control: sock.MarkDialer(mark)}

	for _, s := range []dialStep{
		{w, "198.18.0.9:8080", "to-vip", plain, captured, "198.18.0.9:8080 <nil> to-vip", "app to a virtual address"},
		{w, "198.19.77.3:80", "to-peer", plain, captured, "198.19.77.3:80 <nil> to-peer", "app to the peer's address"},
		{w, "198.19.77.3:80", "marked", marked, peer80, "198.19.77.3:80 <nil> marked", "the sidecar's own (marked) dial"},
		{w, "198.19.77.3:5432", "excluded-port", plain, peer5432, "198.19.77.3:5432 <nil> excluded-port", "excluded outbound port"},
		{p, "198.19.77.2:8080", "to-app", plain, inbound, "198.19.77.2:8080 <nil> to-app", "inbound to an app port"},
		{p, "198.19.77.2:15003", "to-sidecar", plain, mtls, "198.19.77.2:15003 <nil> to-sidecar", "inbound to the sidecar's excluded port"},
	} {
		s.run(t)
	}

	// A CIDR exclusion lets the app reach the peer directly.
	rules.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("198.19.77.0/24")}
	if err := Apply(fd, rules); err != nil {
		t.Fatal(err)
	}
	dialStep{w, "198.19.77.3:80", "excluded-cidr", plain, peer80, "198.19.77.3:80 <nil> excluded-cidr", "excluded outbound CIDR"}.run(t)

	if err := Remove(fd); err != nil {
		t.Fatal(err)
	}
	if ok, err := Programmed(fd); err != nil || ok {
		t.Fatalf("Programmed = %v, %v after Remove", ok, err)
	}
	if err := Remove(fd); err != nil {
		t.Fatalf("Remove with no table: %v", err)
	}
}

// TestCaptureIPv6InNamespace: the ip6 table captures as the ip table does,
// with the original destination read by IP6T_SO_ORIGINAL_DST; ::1 passes,
// and the CIDRs of each family are honoured in that family's table alone.
func TestCaptureIPv6InNamespace(t *testing.T) {
	if !kernelHasIPv6() {
		t.Skip("the kernel runs no IPv6")
	}
	w, p := pair(t)
	fd := openNS(t, w)
	const mark = 0x7e11
	rules := Rules{
		OutboundPort: DefaultOutboundPort, InboundPort: DefaultInboundPort, ProxyMark: mark,
		ExcludeOutboundPorts: []int{5432},
		ExcludeInboundPorts:  []int{15003, 15000},
	}
	if err := Apply(fd, rules); err != nil {
		t.Fatal(err)
	}
	c, err := conn(fd)
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil || !slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == TableName }) {
			t.Fatalf("after Apply, no table %s of family %v (%v)", TableName, fam, err)
		}
	}

	// The sidecar's listeners: outbound redirects go to ::1, inbound ones to
	// the address the connection came to.
	captured, _ := listenIn(t, w, fmt.Sprintf("[::1]:%d", DefaultOutboundPort))
	captured4, _ := listenIn(t, w, fmt.Sprintf("127.0.0.1:%d", DefaultOutboundPort))
	inbound, _ := listenIn(t, w, fmt.Sprintf("[::]:%d", DefaultInboundPort))
	mtls, _ := listenIn(t, w, "[::]:15003")
	self, _ := listenIn(t, w, "[::1]:9000")
	peer80, _ := listenIn(t, p, "[fd00:77::3]:80")
	peer80v4, _ := listenIn(t, p, "198.19.77.3:80")
	peer5432, _ := listenIn(t, p, "[fd00:77::3]:5432")

	plain := &net.Dialer{}
	marked := &net.Dialer{Control: sock.MarkDialer(mark)}
	for _, s := range []dialStep{
		{w, "[fd00:18::9]:8080", "to-vip", plain, captured, "[fd00:18::9]:8080 <nil> to-vip", ""},
		{w, "[fd00:77::3]:80", "to-peer", plain, captured, "[fd00:77::3]:80 <nil> to-peer", ""},
		{w, "[fd00:77::3]:80", "marked", marked, peer80, "[fd00:77::3]:80 <nil> marked", ""},
		{w, "[fd00:77::3]:5432", "excluded-port", plain, peer5432, "[fd00:77::3]:5432 <nil> excluded-port", ""},
		// The app calling itself on ::1 is not captured: the listener there
		// reads its own address as the original destination.
		{w, "[::1]:9000", "loopback", plain, self, "[::1]:9000 <nil> loopback", ""},
		{p, "[fd00:77::2]:8080", "to-app", plain, inbound, "[fd00:77::2]:8080 <nil> to-app", ""},
		{p, "[fd00:77::2]:15003", "to-sidecar", plain, mtls, "[fd00:77::2]:15003 <nil> to-sidecar", ""},
	} {
		s.run(t)
	}

	// Excluded CIDRs: each family's only in its own table.
	for _, tt := range []struct {
		name     string
		exclude  string
		v6, v4   <-chan string // where the app's connections to the peer arrive
		v6w, v4w string
	}{
		{"an IPv6 CIDR", "fd00:77::/64", peer80, captured4, "[fd00:77::3]:80 <nil> ", "198.19.77.3:80 <nil> "},
		{"an IPv4 CIDR", "198.19.77.0/24", captured, peer80v4, "[fd00:77::3]:80 <nil> ", "198.19.77.3:80 <nil> "},
		{"one of each", "198.19.77.0/24,fd00:77::/64", peer80, peer80v4, "[fd00:77::3]:80 <nil> ", "198.19.77.3:80 <nil> "},
	} {
		r := rules
		if r.ExcludeOutboundCIDRs, err = ParseCIDRs(tt.exclude); err != nil {
			t.Fatal(err)
		}
		if err := Apply(fd, r); err != nil {
			t.Fatal(err)
		}
		msg := strings.ReplaceAll(tt.name, " ", "-")
		dialStep{w, "[fd00:77::3]:80", msg, plain, tt.v6, tt.v6w + msg, tt.name + " excluded, IPv6 to the peer"}.run(t)
		dialStep{w, "198.19.77.3:80", msg, plain, tt.v4, tt.v4w + msg, tt.name + " excluded, IPv4 to the peer"}.run(t)
	}

	// Included CIDRs of one family leave the other family uncaptured.
	r := rules
	r.IncludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:18::/64")}
	if err := Apply(fd, r); err != nil {
		t.Fatal(err)
	}
	for _, s := range []dialStep{
		{w, "[fd00:18::9]:8080", "included", plain, captured, "[fd00:18::9]:8080 <nil> included", "an included IPv6 virtual address"},
		{w, "[fd00:77::3]:80", "not-included", plain, peer80, "[fd00:77::3]:80 <nil> not-included", "IPv6 outside the included CIDR"},
		{w, "198.19.77.3:80", "not-included-v4", plain, peer80v4, "198.19.77.3:80 <nil> not-included-v4", "IPv4 with only IPv6 CIDRs included"},
	} {
		s.run(t)
	}

	if err := Remove(fd); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil || slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == TableName }) {
			t.Errorf("after Remove, table %s of family %v is still there (%v)", TableName, fam, err)
		}
	}
}
