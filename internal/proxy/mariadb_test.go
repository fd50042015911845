package proxy_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/trellis-mesh/trellis/internal/freeport"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/proxy"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// The database user the test's mariadbd is started with, as bookwarehouse
// uses it in OSM's demo.
const (
	mariaDBUser     = "bookwarehouse"
	mariaDBPassword = "warehouse-secret"
	mariaDBName     = "booksdemo"
)

// greetingBudget bounds the time from connecting to the client sidecar's
// forward port to the server's greeting. Through two sidecars on loopback it
// takes milliseconds; a listener that waited for the client's first bytes
// (sniffing) would hold the greeting for its whole detection wait, or forever.
const greetingBudget = time.Second

// mariaDB is a mariadbd the test started, on 127.0.0.1.
type mariaDB struct {
	addr string // host:port
	port int
}

// startMariaDB initialises a data directory in a temporary directory, starts
// Debian's mariadbd on it, on 127.0.0.1 and a port below the ephemeral range,
// with the user and database of OSM's demo, waits until it greets, and stops
// it by PID at cleanup. Without the binaries it fails when run as root (make
// test-deps installs them; `make test` runs it) and skips otherwise.
func startMariaDB(t *testing.T) *mariaDB {
	t.Helper()
	mariadbd, install := findBinary("mariadbd"), findBinary("mariadb-install-db")
	if mariadbd == "" || install == "" {
		if os.Geteuid() == 0 {
			t.Fatal("mariadbd or mariadb-install-db not found: run `make test-deps` (make test-unit runs it) to install Debian's mariadb-server")
		}
		t.Skip("skipped: mariadbd is not installed and the test does not run as root, so it cannot be installed; run `make test-deps` as root, or apt-get install mariadb-server")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	var asRoot []string
	if os.Geteuid() == 0 {
		asRoot = []string{"--user=root"} // mariadbd refuses root unless told
	}
	args := append([]string{"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal", "--skip-test-db"}, asRoot...)
	if out, err := exec.Command(install, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", install, err, out)
	}
	initSQL := filepath.Join(dir, "init.sql")
	if err := os.WriteFile(initSQL, []byte(fmt.Sprintf("CREATE DATABASE IF NOT EXISTS %s;\nCREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s';\nGRANT ALL ON %[1]s.* TO '%[2]s'@'%%';\n",
		mariaDBName, mariaDBUser, mariaDBPassword)), 0o600); err != nil {
		t.Fatal(err)
	}
	errLog := filepath.Join(dir, "error.log")
	// A port that is free now can be taken before mariadbd binds it: then it
	// exits at once, and another port is tried.
	for attempt := 1; ; attempt++ {
		port, err := freeport.Pick()
		if err != nil {
			t.Fatal(err)
		}
		db, log, err := runMariaDB(t, mariadbd, append([]string{"--no-defaults", "--datadir=" + data,
			"--bind-address=127.0.0.1", "--port=" + strconv.Itoa(port), "--socket=" + filepath.Join(dir, "mariadbd.sock"),
			"--pid-file=" + filepath.Join(dir, "mariadbd.pid"), "--log-error=" + errLog, "--init-file=" + initSQL,
			"--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--max-connections=20"}, asRoot...), port, errLog)
		if err == nil {
			return db
		}
		if !bytes.Contains(log, []byte("Address already in use")) || attempt == 5 {
			t.Fatalf("%v\n%s", err, log)
		}
		os.Remove(errLog)
	}
}

// runMariaDB starts mariadbd with args and waits until it greets on port; it
// stops it by PID at cleanup. When mariadbd exits or never serves, it returns
// the error and mariadbd's log.
func runMariaDB(t *testing.T, mariadbd string, args []string, port int, errLog string) (*mariaDB, []byte, error) {
	t.Helper()
	cmd := exec.Command(mariadbd, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", mariadbd, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		// Stopped by its PID: SIGTERM is mariadbd's clean shutdown.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("mariadbd (pid %d) did not stop within 20s of SIGTERM; killed", cmd.Process.Pid)
		}
	}
	db := &mariaDB{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := readGreeting(db.addr); err == nil {
			t.Cleanup(stop)
			return db, nil, nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(errLog)
			return nil, log, fmt.Errorf("mariadbd exited before it served on %s: %v", db.addr, err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(errLog)
			return nil, log, fmt.Errorf("mariadbd not serving on %s after 60s", db.addr)
		}
	}
}

// findBinary looks a program up in $PATH and in the sbin directories, where
// Debian puts mariadbd and which a non-root $PATH may lack.
func findBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// greeting is what a MySQL server says first (the Initial Handshake packet,
// protocol version 10), before the client has sent a byte.
type greeting struct {
	protocol      byte
	serverVersion string
}

// readGreeting connects to addr, sends nothing, and reads the server's first
// packet.
func readGreeting(addr string) (greeting, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return greeting{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return parseGreeting(c)
}

func parseGreeting(r io.Reader) (greeting, error) {
	var head [4]byte // 3 bytes of length, little endian, and the sequence number
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return greeting{}, fmt.Errorf("greeting header: %w", err)
	}
	n := int(binary.LittleEndian.Uint32(append(head[:3:3], 0)))
	if head[3] != 0 || n < 2 || n > 1<<12 {
		return greeting{}, fmt.Errorf("not a MySQL greeting: header % x", head)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return greeting{}, fmt.Errorf("greeting body: %w", err)
	}
	version, _, ok := bytes.Cut(body[1:], []byte{0})
	if !ok {
		return greeting{}, fmt.Errorf("greeting without a server version: % x", body)
	}
	return greeting{protocol: body[0], serverVersion: string(version)}, nil
}

// countingConn counts the bytes an app's connection sends and receives.
type countingConn struct {
	net.Conn
	read, written *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// tcpTotals are one side's trellis_tcp_* counters over some labels.
type tcpTotals struct{ opened, closed, sent, received float64 }

func (s *sidecar) tcpTotals(t *testing.T, labels map[string]string) tcpTotals {
	t.Helper()
	return tcpTotals{
		opened:   s.tcpCounter(t, "trellis_tcp_connections_opened_total", labels),
		closed:   s.tcpCounter(t, "trellis_tcp_connections_closed_total", labels),
		sent:     s.tcpCounter(t, "trellis_tcp_sent_bytes_total", labels),
		received: s.tcpCounter(t, "trellis_tcp_received_bytes_total", labels),
	}
}

// settledTCP waits until every connection counted as opened under labels is
// also counted as closed (with its bytes), and returns the counters.
func (s *sidecar) settledTCP(t *testing.T, labels map[string]string, opened float64) tcpTotals {
	t.Helper()
	var got tcpTotals
	eventually(t, 10*time.Second, func() error {
		got = s.tcpTotals(t, labels)
		if got.opened != opened || got.closed != opened {
			return fmt.Errorf("%s: %v connections opened, %v closed; want %v and %v", labels["direction"], got.opened, got.closed, opened, opened)
		}
		return nil
	})
	return got
}

const mysqlAccess = `apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata:
  name: mysql
  namespace: bookwarehouse
spec:
  matches:
    ports: [%d]
---
kind: TrafficTarget
apiVersion: access.smi-spec.io/v1alpha3
metadata:
  name: mysql
  namespace: bookwarehouse
spec:
  destination:
    kind: ServiceAccount
    name: mysql
    namespace: bookwarehouse
  rules:
  - kind: TCPRoute
    name: mysql
  sources:
  - kind: ServiceAccount
    name: bookwarehouse
    namespace: bookwarehouse
`

// TestMariaDBBehindTheMesh puts a real MariaDB server behind the mesh as
// bookwarehouse's database is in OSM's demo: Service mysql, port 3306 declared
// tcp-server-first, strict mode with the demo's TrafficTarget and TCPRoute.
// bookwarehouse reaches it through its sidecar's --tcp-forward port with a
// real MySQL client (go-sql-driver/mysql), creates a table, inserts and reads
// rows; the server greets first, and the greeting comes through both sidecars
// within greetingBudget. Both sidecars count exactly the bytes the client sent
// and received; bookbuyer, not allowed, is refused before a byte reaches the
// database.
func TestMariaDBBehindTheMesh(t *testing.T) {
	t.Parallel()
	db := startMariaDB(t)
	direct, err := readGreeting(db.addr)
	if err != nil {
		t.Fatalf("greeting from mariadbd directly: %v", err)
	}

	// The port's protocol as a user declares it: the Service port's
	// appProtocol or name prefix on Kubernetes, --service mysql:3306/tcp-server-first
	// with trellis run.
	proto, err := model.ParseProtocol("tcp-server-first")
	if err != nil {
		t.Fatal(err)
	}
	m := newMesh(t, strictMesh, fmt.Sprintf(mysqlAccess, db.port))
	server := m.sidecar(sidecarSpec{
		reg: local.Registration{Name: "mysql-0", Namespace: "bookwarehouse", Account: "mysql",
			Services: []model.ServiceMembership{{Service: "mysql", ServicePort: 3306, Protocol: proto}}},
		app: db.addr, ready: true,
	})
	forward := []proxy.TCPForward{{Listen: "127.0.0.1:0", Authority: "mysql.bookwarehouse:3306"}}
	client := m.sidecar(sidecarSpec{reg: local.Registration{Name: "bookwarehouse", Namespace: "bookwarehouse", Account: "bookwarehouse"}, tcpForwards: forward})
	thief := m.sidecar(sidecarSpec{reg: bookbuyerReg(), tcpForwards: forward})
	addr := client.p.TCPForwards[0].String()

	// The first connection waits for the destination's config; then every
	// connection greets at once.
	eventually(t, 15*time.Second, func() error {
		g, err := readGreeting(addr)
		if err != nil {
			return fmt.Errorf("greeting through the sidecars: %w", err)
		}
		if g != direct {
			return fmt.Errorf("greeting through the sidecars = %+v, want mariadbd's own %+v", g, direct)
		}
		return nil
	})
	if direct.protocol != 10 || !strings.Contains(direct.serverVersion, "MariaDB") {
		t.Errorf("mariadbd greets with protocol %d, version %q; want 10 and a MariaDB version", direct.protocol, direct.serverVersion)
	}
	for i := range 3 {
		start := time.Now()
		if _, err := readGreeting(addr); err != nil {
			t.Fatalf("greeting %d through the sidecars: %v", i, err)
		}
		if d := time.Since(start); d > greetingBudget {
			t.Errorf("greeting %d through the sidecars came %s after connecting, want within %s: something on the way waits for the client to speak first", i, d, greetingBudget)
		} else {
			t.Logf("greeting %d through both sidecars %s after connecting", i, d.Round(10*time.Microsecond))
		}
	}

	// The client sidecar holds the destination as declared.
	if _, cfg := client.admin(t, "/config"); !bytes.Contains(cfg, []byte(`"protocol": "tcp-server-first"`)) {
		t.Errorf("client sidecar's /config does not show mysql.bookwarehouse:3306 as tcp-server-first:\n%s", cfg)
	}

	outLabels := map[string]string{"direction": "outbound", "source_workload": "bookwarehouse", "destination_service": "mysql.bookwarehouse", "destination_workload": "mysql-0", "tls": "true"}
	inLabels := map[string]string{"direction": "inbound", "source_workload": "bookwarehouse", "source_namespace": "bookwarehouse", "destination_workload": "mysql-0", "tls": "true"}
	// The greeting-only connections, to subtract.
	outBefore := client.settledTCP(t, outLabels, client.tcpTotals(t, outLabels).opened)
	inBefore := server.settledTCP(t, inLabels, outBefore.opened)

	// A real MySQL client through the forward port, counting its bytes.
	var read, written, dials atomic.Int64
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.DBName = mariaDBUser, mariaDBPassword, mariaDBName
	cfg.Net, cfg.Addr = "tcp-counted-"+t.Name(), addr
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = 5*time.Second, 10*time.Second, 10*time.Second
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	mysql.RegisterDialContext("tcp-counted-"+t.Name(), func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		dials.Add(1)
		return countingConn{Conn: c, read: &read, written: &written}, nil
	})
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sqlDB := sql.OpenDB(connector)
	sqlDB.SetMaxOpenConns(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	if err := sqlDB.PingContext(ctx); err != nil {
		t.Fatalf("connect and authenticate as %s through the sidecars: %v", mariaDBUser, err)
	}
	if d := time.Since(start); d > greetingBudget {
		t.Errorf("connect and authenticate took %s, want within %s", d, greetingBudget)
	} else {
		t.Logf("mysql connect and authenticate through both sidecars: %s", d.Round(10*time.Microsecond))
	}
	if _, err := sqlDB.ExecContext(ctx, "CREATE TABLE books (title VARCHAR(200) PRIMARY KEY, copies INT NOT NULL, notes MEDIUMTEXT NOT NULL)"); err != nil {
		t.Fatalf("CREATE TABLE: %v", err)
	}
	// A long value spans many TCP segments and more than one buffer on the way.
	long := strings.Repeat("A note kept on the shelf. ", 8000)
	want := map[string]int{"Hitchhiker's Guide": 42, "Brave New World": 7, "Dune": 12}
	for title, copies := range want {
		notes := "-"
		if title == "Dune" {
			notes = long
		}
		if _, err := sqlDB.ExecContext(ctx, "INSERT INTO books (title, copies, notes) VALUES (?, ?, ?)", title, copies, notes); err != nil {
			t.Fatalf("INSERT %q: %v", title, err)
		}
	}
	if _, err := sqlDB.ExecContext(ctx, "UPDATE books SET copies = copies + 1 WHERE title = ?", "Dune"); err != nil {
		t.Fatalf("UPDATE: %v", err)
	}
	want["Dune"]++
	rows, err := sqlDB.QueryContext(ctx, "SELECT title, copies, notes FROM books ORDER BY title")
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	got := map[string]int{}
	for rows.Next() {
		var title, notes string
		var copies int
		if err := rows.Scan(&title, &copies, &notes); err != nil {
			t.Fatal(err)
		}
		got[title] = copies
		if title == "Dune" && notes != long {
			t.Errorf("notes of Dune: %d bytes back, want the %d written", len(notes), len(long))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("reading rows: %v", err)
	}
	rows.Close()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows read back = %v, want %v", got, want)
	}
	// Closing sends COM_QUIT; the server closes, and so do both sidecars.
	if err := sqlDB.Close(); err != nil {
		t.Fatal(err)
	}
	n := float64(dials.Load())
	if n == 0 {
		t.Fatal("the MySQL client never dialed the forward port")
	}

	// Sent is towards the side that opened the connection, received from it;
	// the tunnel carries the bytes unchanged, so both sidecars count what the
	// client itself sent and read.
	outAfter := client.settledTCP(t, outLabels, outBefore.opened+n)
	inAfter := server.settledTCP(t, inLabels, inBefore.opened+n)
	for _, c := range []struct {
		side          string
		before, after tcpTotals
	}{{"client sidecar (outbound)", outBefore, outAfter}, {"server sidecar (inbound)", inBefore, inAfter}} {
		if sent, want := c.after.sent-c.before.sent, float64(read.Load()); sent != want {
			t.Errorf("%s: trellis_tcp_sent_bytes_total grew by %v, want %v, the bytes the MySQL client read", c.side, sent, want)
		}
		if recv, want := c.after.received-c.before.received, float64(written.Load()); recv != want {
			t.Errorf("%s: trellis_tcp_received_bytes_total grew by %v, want %v, the bytes the MySQL client wrote", c.side, recv, want)
		}
	}
	if written.Load() < int64(len(long)) || read.Load() < int64(len(long)) {
		t.Errorf("the client wrote %d and read %d bytes; want each at least the %d-byte note", written.Load(), read.Load(), len(long))
	}
	t.Logf("%v MySQL connections through the mesh: %d bytes from the client, %d to it, counted alike by both sidecars", n, written.Load(), read.Load())

	t.Run("a client the TrafficTarget does not name is refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", thief.p.TCPForwards[0].String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("bookbuyer through its forward port read %q, %v; want the connection closed with nothing from the database", b, err)
		}
		var refused float64
		for _, mm := range thief.metricFamily(t, "trellis_connections_refused_total").GetMetric() {
			if hasLabels(mm, map[string]string{"direction": "outbound", "reason": proxy.ReasonDenied}) {
				refused += mm.GetCounter().GetValue()
			}
		}
		if refused != 1 {
			t.Errorf("bookbuyer's trellis_connections_refused_total{direction=outbound,reason=denied} = %v, want 1", refused)
		}
		if in := server.tcpTotals(t, map[string]string{"direction": "inbound", "source_workload": "bookbuyer"}); in.opened != 0 {
			t.Errorf("the database's sidecar opened %v connections for bookbuyer, want none", in.opened)
		}
	})
}
