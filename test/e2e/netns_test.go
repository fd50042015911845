package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/capture"
	"github.com/trellis-mesh/trellis/internal/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// needNetns skips a test that makes network namespaces where it cannot.
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// noNamespacesLeft checks that the workloads' namespaces and the bridge are gone.
func noNamespacesLeft(t *testing.T) {
	t.Helper()
	waitFor(t, 15*time.Second, "every trellis network namespace and the bridge to go", func() bool {
		out, _ := exec.Command("ip", "netns", "list").Output()
		_, err := os.Stat("/sys/class/net/" + netns.BridgeName)
		return !strings.Contains(string(out), "trellis-") && os.IsNotExist(err)
	})
}

// TestDemoNetns runs the demo with every app in a network namespace of its
// own: the apps call services by name with no proxy setting, and transparent
// capture alone brings their traffic to the sidecars. The outcomes are the
// demo's, in strict mode.
func TestDemoNetns(t *testing.T) {
	needNetns(t)
	state := t.TempDir()
	p := start(t, state, "demo", "--isolation", "netns", "--duration", "20s", "-o", "json")
	dumpLogsOnFailure(t, state)
	p.wait(t, 2*time.Minute)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("trellis demo --isolation netns exit code %d, want 0; stderr:\n%s\nstdout:\n%s", code, p.errb.String(), p.out.String())
	}
	s := parseSummary(t, p.out.String())
	b, th := s.Clients["bookbuyer"], s.Clients["bookthief"]
	if b.Total < 100 || b.OK != b.Total {
		t.Errorf("bookbuyer: %d of %d answered 2xx, want all of at least 100; reasons %v", b.OK, b.Total, b.Reasons)
	}
	if th.Total < 100 || th.Denied != th.Total || th.Reasons["denied"] != th.Total {
		t.Errorf("bookthief: %d of %d denied (reasons %v), want all denied with reason denied", th.Denied, th.Total, th.Reasons)
	}
	for _, v := range []string{"bookstore-v1", "bookstore-v2"} {
		if sh := s.BookstoreShare[v]; sh < 0.35 || sh > 0.65 {
			t.Errorf("share of %s = %.2f, want between 0.35 and 0.65", v, sh)
		}
	}
	for _, sc := range s.Sidecars {
		t.Logf("sidecar %s: RSS %.1f MiB", sc.Workload, float64(sc.RSSBytes)/(1<<20))
	}
	noLeftovers(t)
	noNamespacesLeft(t)
}

// TestSplitMovesNetns moves the split while the demo runs in namespaces: the
// captured connections follow the TrafficSplit as the proxied ones do.
func TestSplitMovesNetns(t *testing.T) {
	needNetns(t)
	state := t.TempDir()
	_, clients := runningDemo(t, state, "--isolation", "netns")
	buyer := clients["bookbuyer"]
	before := getStats(t, buyer)
	applied := time.Now()
	if out, errOut, err := trellis(t, state, "apply", "-f", filepath.Join("..", "..", "examples", "bookstore", "traffic-split-v2.yaml")); err != nil {
		t.Fatalf("apply: %v\n%s%s", err, out, errOut)
	}
	time.Sleep(time.Until(applied.Add(2 * time.Second)))
	from := getStats(t, buyer)
	time.Sleep(3 * time.Second)
	to := getStats(t, buyer)
	if sh, n := share(from, to, "bookstore-v2"); n < 20 || sh < 0.99 {
		t.Errorf("bookstore-v2 served %.1f%% of %d requests from 2 s to 5 s after the v2-only split, want >= 99%%", 100*sh, n)
	}
	if to.Failed != before.Failed {
		t.Errorf("requests failed while the split moved: %d → %d", before.Failed, to.Failed)
	}
}

// nsOf returns the path of the network namespace that holds addr, from the
// leases trellis run keeps.
func nsOf(t *testing.T, addr string) string {
	t.Helper()
	host, _, _ := net.SplitHostPort(addr)
	b, err := os.ReadFile("/run/trellis/netns-leases.json")
	if err != nil {
		t.Fatal(err)
	}
	var ls []struct {
		IP   string `json:"ip"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &ls); err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.IP == host {
			return filepath.Join("/run/netns", l.Name)
		}
	}
	t.Fatalf("no namespace holds %s; leases %s", host, b)
	return ""
}

// serviceAddr returns a service's virtual address from the control plane.
func serviceAddr(t *testing.T, state, name string) netip.Addr {
	t.Helper()
	out, errOut, err := trellis(t, state, "get", "services", "-o", "json")
	if err != nil {
		t.Fatalf("get services: %v %s", err, errOut)
	}
	var svcs []struct {
		Key       struct{ Namespace, Name string } `json:"key"`
		Addresses []netip.Addr                     `json:"addresses"`
	}
	if err := json.Unmarshal([]byte(out), &svcs); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, s := range svcs {
		if s.Key.Namespace+"/"+s.Key.Name == name && len(s.Addresses) > 0 {
			return s.Addresses[0]
		}
	}
	t.Fatalf("service %s has no address: %s", name, out)
	return netip.Addr{}
}

// registered waits until the workload named name is registered with its
// namespace's address and, when ready is set, its sidecar answers /ready.
func registered(t *testing.T, state, name string, ready bool) workload {
	t.Helper()
	var w workload
	waitFor(t, 30*time.Second, name+"'s sidecar", func() bool {
		w = workloads(t, state)[name]
		if w.AdminAddress == "" {
			return false
		}
		if !ready {
			return true
		}
		resp, err := http.Get("http://" + w.AdminAddress + "/ready")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	return w
}

// readUntilClosed reads what c says until the peer closes it or d passes,
// then closes it: a refused connection says nothing.
func readUntilClosed(c net.Conn, d time.Duration) []byte {
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	b, _ := io.ReadAll(c)
	return b
}

// greeter serves a server-first protocol in the namespace at path: it says
// hello before reading anything, then echoes one line.
func greeter(t *testing.T, path, addr string) {
	t.Helper()
	serveInNamespace(t, path, addr, func(c net.Conn) {
		io.WriteString(c, "hello from the greeter\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
}

// serveInNamespace listens on addr in the namespace at path and runs handle
// on each connection, closing it after; the listener closes at cleanup.
func serveInNamespace(t *testing.T, path, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := capture.InNamespace(path, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// converse dials addr from the namespace at path, reads the greeting, sends a
// line and reads its echo, all within d.
func converse(path, addr string, d time.Duration) (string, error) {
	var c net.Conn
	if err := capture.InNamespace(path, func() (err error) { c, err = net.DialTimeout("tcp", addr, d); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	r := bufio.NewReader(c)
	hello, err := r.ReadString('\n')
	if err != nil {
		return hello, fmt.Errorf("greeting: %w", err)
	}
	io.WriteString(c, "ping\n")
	echo, err := r.ReadString('\n')
	return hello + echo, err
}

var capturedRefusedRe = regexp.MustCompile(`trellis_connections_refused_total\{direction="(inbound|outbound)",reason="([a-z_]+)"\} (\d+)`)

func refusals(t *testing.T, admin string) map[string]int {
	t.Helper()
	b := sidecarMetrics(t, admin)
	m := map[string]int{}
	for _, g := range capturedRefusedRe.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(g[3])
		m[g[1]+"/"+g[2]] = n
	}
	return m
}

// linkLocal returns the IPv6 link-local address of dev in the network
// namespace named netnsName (the host's for ""), once past duplicate address
// detection, zoned by dev's index there (a zone's name would be looked up in
// the host's namespace); the test is skipped where there is none (IPv6 off).
func linkLocal(t *testing.T, netnsName, dev string) netip.Addr {
	t.Helper()
	args := []string{"-6", "-o", "addr", "show", "dev", dev, "scope", "link"}
	if netnsName != "" {
		args = append([]string{"-n", netnsName}, args...)
	}
	var a netip.Addr
	waitFor(t, 10*time.Second, "a link-local address on "+dev+" past duplicate address detection", func() bool {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			t.Skipf("no IPv6 on %s (namespace %q): %v", dev, netnsName, err)
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			t.Skipf("%s (namespace %q) has no IPv6 link-local address", dev, netnsName)
		}
		fs := strings.Fields(string(out))
		for _, f := range fs {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().IsLinkLocalUnicast() {
				a = p.Addr().WithZone(strings.TrimSuffix(fs[0], ":"))
			}
		}
		return a.IsValid() && !strings.Contains(string(out), "tentative")
	})
	return a
}

// TestCaptureTCPAndRefusals covers what transparent capture does beyond HTTP:
// a server-first TCP service (declared tcp-server-first) reached at its
// virtual address with no sniffing delay; a plaintext caller from outside the
// mesh refused at the app's port under strict mTLS; and a destination outside
// the mesh refused while egress is off, then reached once it is on. The
// refusals are checked over IPv6 too, at link-local addresses.
func TestCaptureTCPAndRefusals(t *testing.T) {
	needNetns(t)
	state := t.TempDir()
	controlPlane(t, state)
	dumpLogsOnFailure(t, state)
	strict := writeFile(t, state, "strict.yaml", meshConfig(false))
	if _, errOut, err := trellis(t, state, "apply", "-f", strict); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	access := writeFile(t, state, "access.yaml", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: greeter, namespace: db}
spec:
  destination: {kind: ServiceAccount, name: greeter, namespace: db}
  sources:
  - {kind: ServiceAccount, name: client, namespace: shop}
  rules:
  - {kind: TCPRoute, name: greeter}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: greeter, namespace: db}
spec: {}
`)
	if out, errOut, err := trellis(t, state, "apply", "-f", access); err != nil {
		t.Fatalf("apply: %v %s %s", err, out, errOut)
	}
	start(t, state, "run", "--isolation", "netns", "-n", "db", "--account", "greeter",
		"--service", "greeter:7000/tcp-server-first", "--port", "7000", "--", "sleep", "600")
	server := registered(t, state, "greeter", false)
	serverNS := nsOf(t, server.AdminAddress)
	greeter(t, serverNS, "127.0.0.1:7000")

	start(t, state, "run", "--isolation", "netns", "-n", "shop", "--account", "client", "--", "sleep", "600")
	client := registered(t, state, "client", true)
	clientNS := nsOf(t, client.AdminAddress)
	vip := serviceAddr(t, state, "db/greeter")

	// Server-first through both sidecars, by virtual address.
	target := netip.AddrPortFrom(vip, 7000).String()
	var got string
	waitFor(t, 30*time.Second, "the greeter to answer through the mesh", func() bool {
		s, err := converse(clientNS, target, 2*time.Second)
		got = s
		return err == nil
	})
	began := time.Now()
	got, err := converse(clientNS, target, 2*time.Second)
	if err != nil || got != "hello from the greeter\necho ping\n" {
		t.Fatalf("conversation through the mesh: %q, %v", got, err)
	}
	// Declared server-first, the port is never sniffed: the greeting does
	// not wait out the detection window.
	if el := time.Since(began); el > 250*time.Millisecond {
		t.Errorf("a server-first conversation took %s, want well under the 300 ms detection wait", el)
	}

	// A plaintext caller from outside the mesh (this test, on the host) at
	// the app's port: captured inbound and refused under strict mTLS.
	host, _, _ := net.SplitHostPort(server.AdminAddress)
	before := refusals(t, server.AdminAddress)["inbound/plaintext"]
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(host, "7000"), 2*time.Second); err == nil {
		if b := readUntilClosed(c, 2*time.Second); len(b) > 0 {
			t.Errorf("a plaintext caller at the app's port read %q, want nothing under strict mTLS", b)
		}
	}
	waitFor(t, 5*time.Second, "the plaintext refusal to be counted", func() bool {
		return refusals(t, server.AdminAddress)["inbound/plaintext"] > before
	})
	// The same over IPv6, at the namespace's link-local address across the
	// bridge: capture's ip6 table sends it to the sidecar's IPv6 listener,
	// which refuses it in the same words.
	t.Run("plaintext over IPv6", func(t *testing.T) {
		ll := linkLocal(t, filepath.Base(serverNS), "eth0")
		from := linkLocal(t, "", netns.BridgeName)
		before := refusals(t, server.AdminAddress)["inbound/plaintext"]
		addr := net.JoinHostPort(ll.WithZone(from.Zone()).String(), "7000")
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v (capture sends it to the sidecar, which accepts before it refuses)", addr, err)
		}
		if b := readUntilClosed(c, 2*time.Second); len(b) > 0 {
			t.Errorf("a plaintext caller at [%s]:7000 read %q, want nothing under strict mTLS", ll, b)
		}
		waitFor(t, 5*time.Second, "the IPv6 plaintext refusal to be counted", func() bool {
			return refusals(t, server.AdminAddress)["inbound/plaintext"] > before
		})
	})

	// A destination outside the mesh: a server in a namespace of this test's.
	outside, err := netns.Create("outside")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outside.Close() })
	greeter(t, outside.Path, net.JoinHostPort(outside.IP.String(), "8025"))
	ext := net.JoinHostPort(outside.IP.String(), "8025")
	if s, err := converse(clientNS, ext, 2*time.Second); err == nil {
		t.Errorf("egress off, yet the app reached %s: %q", ext, s)
	}
	waitFor(t, 5*time.Second, "the egress refusal to be counted", func() bool {
		return refusals(t, client.AdminAddress)["outbound/egress_denied"] > 0
	})
	// The same over IPv6: capture's ip6 table sends it to the sidecar on
	// [::1], which reads where it was going (IP6T_SO_ORIGINAL_DST) and refuses
	// it as egress, not as a loop. The workload's namespace gets a unique
	// local address of its own for it (gone with the namespace): with a
	// link-local source, the answer from ::1 would leave by eth0.
	t.Run("egress over IPv6", func(t *testing.T) {
		linkLocal(t, filepath.Base(clientNS), "eth0") // IPv6 is on there
		if out, err := exec.Command("ip", "-n", filepath.Base(clientNS), "addr", "add", "fd00:19::2/64", "dev", "eth0", "nodad").CombinedOutput(); err != nil {
			t.Fatalf("add an IPv6 address to the workload's namespace: %v: %s", err, out)
		}
		addr := "[fd00:19::9]:8025" // on that address's link; nothing is there
		before := refusals(t, client.AdminAddress)
		var c net.Conn
		if err := capture.InNamespace(clientNS, func() (err error) { c, err = net.DialTimeout("tcp", addr, 2*time.Second); return err }); err != nil {
			t.Fatalf("dial %s: %v (capture sends it to the sidecar, which accepts before it refuses)", addr, err)
		}
		if b := readUntilClosed(c, 5*time.Second); len(b) > 0 {
			t.Errorf("egress off, yet the app read %q from %s", b, addr)
		}
		waitFor(t, 5*time.Second, "the IPv6 egress refusal to be counted", func() bool {
			return refusals(t, client.AdminAddress)["outbound/egress_denied"] > before["outbound/egress_denied"]
		})
		if after := refusals(t, client.AdminAddress); after["outbound/capture_loop"] != before["outbound/capture_loop"] {
			t.Errorf("an IPv6 connection counted as a capture loop: %v → %v", before, after)
		}
	})
	open := writeFile(t, state, "egress.yaml", meshConfig(true))
	if _, errOut, err := trellis(t, state, "apply", "-f", open); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	waitFor(t, 10*time.Second, "egress to pass once enabled", func() bool {
		s, err := converse(clientNS, ext, 2*time.Second)
		return err == nil && s == "hello from the greeter\necho ping\n"
	})
}

// meshConfig is a strict MeshConfig with egress on or off.
func meshConfig(egress bool) string {
	return fmt.Sprintf(`apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  traffic:
    enablePermissiveTrafficPolicyMode: false
    enableEgress: %v
`, egress)
}

// TestCaptureGRPC: a grpc-go client in a namespace of its own dials a
// service's virtual address with no proxy setting; capture takes the h2c
// connection, detection sees the HTTP/2 preface, and the call (unary, then a
// server stream) crosses both sidecars to a grpc-go server, with grpc_status
// in the client sidecar's metrics.
func TestCaptureGRPC(t *testing.T) {
	needNetns(t)
	state := t.TempDir()
	controlPlane(t, state)
	dumpLogsOnFailure(t, state)
	start(t, state, "run", "--isolation", "netns", "-n", "shop", "--account", "checkout",
		"--service", "checkout:9000/grpc", "--port", "9000", "--", "sleep", "600")
	server := registered(t, state, "checkout", false)
	var ln net.Listener
	if err := capture.InNamespace(nsOf(t, server.AdminAddress), func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	start(t, state, "run", "--isolation", "netns", "-n", "shop", "--account", "web", "--", "sleep", "600")
	client := registered(t, state, "web", true)
	clientNS := nsOf(t, client.AdminAddress)
	target := netip.AddrPortFrom(serviceAddr(t, state, "shop/checkout"), 9000).String()
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = capture.InNamespace(clientNS, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				return err
			})
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	var last error
	waitFor(t, 30*time.Second, "a gRPC call through capture", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		last = err
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	if last != nil {
		t.Fatal(last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("server stream through capture: %v, %v", r, err)
	}
	cancel()
	b := sidecarMetrics(t, client.AdminAddress)
	if !regexp.MustCompile(`trellis_requests_total\{direction="outbound"[^}]*destination_service="checkout.shop"[^}]*response_code="200",grpc_status="0"`).Match(b) {
		t.Errorf("the client sidecar counted no gRPC OK to checkout.shop:\n%s", b)
	}
}

// handWrittenHTTP serves HTTP/1.1 in the namespace at path, writing each
// response by hand, with a reason phrase of its own and a lower-case field
// name: the sidecars' relay passes both on as they are, where net/http writes
// "200 OK" and canonical names. The body is the request's method, target and
// Host, as the app received them.
func handWrittenHTTP(t *testing.T, path, addr string) {
	t.Helper()
	serveInNamespace(t, path, addr, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, r.Body)
			body := r.Method + " " + r.RequestURI + " " + r.Host
			if _, err := fmt.Fprintf(c, "HTTP/1.1 200 Relayed As Is\r\nx-app-note: lower case\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
				return
			}
		}
	})
}

// rawResponse is a response as it came on the wire.
type rawResponse struct {
	statusLine string
	fields     []string // "name: value", as written
	body       string
}

// exchangeRaw writes req on c and reads the final response from br: interim
// responses are skipped, the body is read by its Content-Length.
func exchangeRaw(c net.Conn, br *bufio.Reader, req string) (rawResponse, error) {
	var r rawResponse
	if _, err := io.WriteString(c, req); err != nil {
		return r, err
	}
	for {
		r = rawResponse{}
		line, err := br.ReadString('\n')
		if err != nil {
			return r, err
		}
		r.statusLine = strings.TrimRight(line, "\r\n")
		length := 0
		for {
			f, err := br.ReadString('\n')
			if err != nil {
				return r, err
			}
			if f = strings.TrimRight(f, "\r\n"); f == "" {
				break
			}
			r.fields = append(r.fields, f)
			if name, v, _ := strings.Cut(f, ":"); strings.EqualFold(name, "content-length") {
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if strings.HasPrefix(r.statusLine, "HTTP/1.1 1") {
			continue
		}
		b := make([]byte, length)
		_, err = io.ReadFull(br, b)
		r.body = string(b)
		return r, err
	}
}

// TestCaptureHTTP1OnTheRelay: an app's HTTP/1.1 connection to a service's
// virtual address, taken by capture, is served by the sidecar's HTTP/1.1
// relay, as the explicit proxy's are (the relay passes the app's reason
// phrase and field names on as they are, net/http does not), and a request
// the relay does not take goes to net/http on the same connection, which keeps
// it. Both are sent where the original destination says, counted in one
// series and logged alike. A captured connection to a destination whose
// config never comes (the control plane stopped) is closed once the sidecar's
// first-config bound has passed, and counted as no_config.
func TestCaptureHTTP1OnTheRelay(t *testing.T) {
	needNetns(t)
	state := t.TempDir()
	cp := controlPlane(t, state)
	dumpLogsOnFailure(t, state)
	start(t, state, "run", "--isolation", "netns", "-n", "shop", "--account", "web",
		"--service", "web:8080/http", "--port", "8080", "--", "sleep", "600")
	server := registered(t, state, "web", false)
	handWrittenHTTP(t, nsOf(t, server.AdminAddress), "127.0.0.1:8080")

	clientProc := start(t, state, "run", "--isolation", "netns", "-n", "shop", "--account", "client", "--", "sleep", "600")
	client := registered(t, state, "client", true)
	clientNS := nsOf(t, client.AdminAddress)
	vip := serviceAddr(t, state, "shop/web")
	target := netip.AddrPortFrom(vip, 8080).String()
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		var c net.Conn
		if err := capture.InNamespace(clientNS, func() (err error) { c, err = net.DialTimeout("tcp", target, 2*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c, bufio.NewReader(c)
	}
	const host = "web.shop:8080"
	get := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	waitFor(t, 30*time.Second, "a request through capture", func() bool {
		c, br := dial()
		defer c.Close()
		r, err := exchangeRaw(c, br, get("/warm-up"))
		return err == nil && strings.HasPrefix(r.statusLine, "HTTP/1.1 200 ")
	})

	countsBefore := requestSeries(t, client.AdminAddress, "web.shop")
	relayed := rawResponse{statusLine: "HTTP/1.1 200 Relayed As Is", fields: []string{"x-app-note: lower case"}}
	byNetHTTP := rawResponse{statusLine: "HTTP/1.1 200 OK", fields: []string{"X-App-Note: lower case"}}
	c, br := dial()
	steps := []struct {
		req, body string
		want      rawResponse
	}{
		{get("/one"), "GET /one " + host, relayed},
		{"POST /two HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 3\r\n\r\nabc", "POST /two " + host, relayed},
		// An escaped path: the relay hands the connection to net/http.
		{get("/three%20x"), "GET /three%20x " + host, byNetHTTP},
		// net/http keeps the connection it was handed.
		{get("/four"), "GET /four " + host, byNetHTTP},
	}
	for i, s := range steps {
		got, err := exchangeRaw(c, br, s.req)
		if err != nil {
			t.Fatalf("request %d (%q): %v", i, s.req, err)
		}
		if got.statusLine != s.want.statusLine || got.body != s.body {
			t.Errorf("request %d (%q): %q %q; want %q %q", i, s.req, got.statusLine, got.body, s.want.statusLine, s.body)
		}
		for _, f := range s.want.fields {
			if !slices.Contains(got.fields, f) {
				t.Errorf("request %d (%q): fields %q, want %q among them", i, s.req, got.fields, f)
			}
		}
	}
	// A new connection starts on the relay again.
	c2, br2 := dial()
	if got, err := exchangeRaw(c2, br2, get("/five")); err != nil || got.statusLine != relayed.statusLine {
		t.Errorf("first request on a new connection: %q, %v; want %q", got.statusLine, err, relayed.statusLine)
	}
	c2.Close()

	// The relay and net/http count their answers under the same labels: one
	// series of 200s.
	var counts map[string]int
	waitFor(t, 5*time.Second, "the client sidecar to count the requests", func() bool {
		counts = requestSeries(t, client.AdminAddress, "web.shop")
		n := 0
		for labels, v := range counts {
			n += v - countsBefore[labels]
		}
		return n >= len(steps)+1
	})
	if len(counts) != 1 {
		t.Errorf("trellis_requests_total series to web.shop: %v; want one, the same for relayed requests and net/http's", counts)
	}
	for labels := range counts {
		for _, want := range []string{`direction="outbound"`, `destination_namespace="shop"`, `tls="true"`, `reason=""`} {
			if !strings.Contains(labels, want) {
				t.Errorf("series {%s} lacks %s", labels, want)
			}
		}
		if strings.Contains(labels, `destination_workload=""`) {
			t.Errorf("series {%s} names no destination workload", labels)
		}
	}

	// The control plane stopped (not ended: it continues at cleanup), a
	// destination the sidecar has not asked for yet never gets a config.
	if err := cp.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.cmd.Process.Signal(syscall.SIGCONT) })
	before := refusals(t, client.AdminAddress)["outbound/no_config"]
	unknown := netip.AddrPortFrom(vip, 8081).String()
	var nc net.Conn
	began := time.Now()
	if err := capture.InNamespace(clientNS, func() (err error) { nc, err = net.DialTimeout("tcp", unknown, 2*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(nc, "GET / HTTP/1.1\r\nHost: web.shop:8081\r\n\r\n")
	rest, err := io.ReadAll(nc)
	took := time.Since(began)
	nc.Close()
	// Closed with the request unread, the connection may end in a reset.
	if (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(rest) > 0 {
		t.Errorf("captured connection to %s with no config: read %q, %v; want it closed with nothing", unknown, rest, err)
	}
	// The bound is trellis-proxy's default first-config timeout, 3 s.
	if took < 3*time.Second || took > 4*time.Second {
		t.Errorf("captured connection to %s with no config closed after %v, want 3s (at most 1s later)", unknown, took.Round(time.Millisecond))
	}
	t.Logf("captured connection with no config closed after %v", took.Round(time.Millisecond))
	waitFor(t, 5*time.Second, "the no_config refusal to be counted", func() bool {
		return refusals(t, client.AdminAddress)["outbound/no_config"] == before+1
	})
	cp.cmd.Process.Signal(syscall.SIGCONT)

	// The access log: every request the same but for its path and method.
	clientProc.stop(t)
	var lines []map[string]any
	for _, l := range strings.Split(clientProc.out.String(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) == nil && e["direction"] == "outbound" && e["destination_service"] == "web.shop" && e["status"] == float64(200) {
			lines = append(lines, e)
		}
	}
	if len(lines) < len(steps)+1 {
		t.Fatalf("%d access log lines to web.shop, want at least %d:\n%s", len(lines), len(steps)+1, clientProc.out.String())
	}
	for _, e := range lines {
		for _, k := range []string{"time", "method", "path", "duration_ms", "bytes_sent", "bytes_received"} {
			delete(e, k)
		}
		if e["authority"] != target || e["protocol"] != "HTTP/1.1" {
			t.Errorf("access log line %v: want authority %s, protocol HTTP/1.1", e, target)
		}
		if fmt.Sprint(e) != fmt.Sprint(lines[0]) {
			t.Errorf("access log lines differ beyond method and path:\n%v\n%v", e, lines[0])
		}
	}
}

var requestSeriesRe = regexp.MustCompile(`(?m)^trellis_requests_total\{([^}]*)\} (\d+)$`)

// requestSeries returns a sidecar's trellis_requests_total series of 200s
// whose destination_service is service, by label text.
func requestSeries(t *testing.T, admin, service string) map[string]int {
	t.Helper()
	b := sidecarMetrics(t, admin)
	m := map[string]int{}
	for _, g := range requestSeriesRe.FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(g[1], `destination_service="`+service+`"`) && strings.Contains(g[1], `response_code="200"`) {
			n, _ := strconv.Atoi(g[2])
			m[g[1]] = n
		}
	}
	return m
}
