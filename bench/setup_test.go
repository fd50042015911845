package bench

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseStartToReady(t *testing.T) {
	out := []byte(`{"time":"2026-11-22T04:40:34.856Z","level":"INFO","msg":"certified","identity":"spiffe://cluster.local/ns/bench/sa/server"}
{"time":"2026-11-22T04:40:34.873Z","level":"INFO","msg":"ready","inbound":"127.0.0.1:28323","start_to_ready":"52.900958ms"}
{"ts":1795322434.93,"level":"info","msg":"Fortio 1.68.2 http-echo server listening on tcp 127.0.0.1:18999"}
not JSON at all
{"time":"2026-11-22T04:40:35Z","level":"INFO","msg":"ready","start_to_ready":"1.2s"}
{"time":"2026-11-22T04:40:36Z","level":"INFO","msg":"draining","timeout":"10s"}
`)
	got, err := parseStartToReady(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{52900958 * time.Nanosecond, 1200 * time.Millisecond}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseStartToReady (-want +got):\n%s", diff)
	}
	_, err = parseStartToReady([]byte(`{"msg":"ready","start_to_ready":"soon"}`))
	if err == nil || !strings.Contains(err.Error(), "start_to_ready") {
		t.Errorf("parseStartToReady of a bad duration: error = %v, want one naming start_to_ready", err)
	}
}

// TestPKIMutualTLS checks that the reference proxies' files make a TLS 1.3
// connection with a verified client certificate, ECDSA P-256 on both sides, and
// that a client without a certificate is refused.
func TestPKIMutualTLS(t *testing.T) {
	f, err := writePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	server, err := tls.LoadX509KeyPair(f.ServerPEM, f.ServerPEM) // the haproxy form: both in one file
	if err != nil {
		t.Fatal(err)
	}
	client, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey) // the nginx form
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []tls.Certificate{server, client} {
		pub, ok := c.Leaf.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("certificate %s: key %T, want ECDSA P-256", c.Leaf.Subject.CommonName, c.Leaf.PublicKey)
		}
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				peers <- "refused"
			} else {
				peers <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
				io.WriteString(tc, "ok")
			}
			tc.Close()
		}
	}()

	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{client}, RootCAs: pool, ServerName: serverName,
	})
	if err != nil {
		t.Fatalf("mutual TLS with the generated files: %v", err)
	}
	if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", v)
	}
	b, _ := io.ReadAll(conn)
	conn.Close()
	if string(b) != "ok" {
		t.Errorf("read %q through the connection, want ok", b)
	}
	if got := <-peers; got != "hop1.bench.test" {
		t.Errorf("server saw client %q, want hop1.bench.test", got)
	}

	anon, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: serverName})
	if err == nil {
		_, err = io.ReadAll(anon)
		anon.Close()
	}
	if got := <-peers; got != "refused" || err == nil {
		t.Errorf("a client without a certificate: server %q, client error %v; want refused and an error", got, err)
	}
}

// TestReferenceConfigsAreValid has nginx and haproxy check the files the
// harness writes for them, when they are installed (bench/setup.sh).
func TestReferenceConfigsAreValid(t *testing.T) {
	dir := t.TempDir()
	pki, err := writePKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	hops := map[string]hopConfig{
		"hop1": {Listen: "127.0.0.1:1", Upstream: "127.0.0.1:2", TLSOut: true, PKI: pki},
		"hop2": {Listen: "127.0.0.1:2", Upstream: "127.0.0.1:3", TLSIn: true, PKI: pki},
	}
	for _, tool := range []string{"nginx", "haproxy"} {
		bin, err := exec.LookPath(tool)
		if err != nil {
			bin = "/usr/sbin/" + tool
		}
		for name, h := range hops {
			t.Run(tool+" "+name, func(t *testing.T) {
				if _, err := os.Stat(bin); err != nil {
					t.Skipf("%s is not installed; bench/setup.sh installs it", tool)
				}
				h.Dir = filepath.Join(dir, tool, name)
				if err := os.MkdirAll(h.Dir, 0o755); err != nil {
					t.Fatal(err)
				}
				var cmd *exec.Cmd
				if tool == "nginx" {
					conf := filepath.Join(h.Dir, "nginx.conf")
					os.WriteFile(conf, []byte(nginxConfig(h)), 0o644)
					cmd = exec.Command(bin, "-t", "-q", "-p", h.Dir, "-c", conf, "-e", filepath.Join(h.Dir, "error.log"))
				} else {
					conf := filepath.Join(h.Dir, "haproxy.cfg")
					os.WriteFile(conf, []byte(haproxyConfig(h)), 0o644)
					cmd = exec.Command(bin, "-c", "-q", "-f", conf)
				}
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Run(); err != nil {
					t.Errorf("%s refuses the harness's configuration: %v\n%s", tool, err, out.String())
				}
			})
		}
	}
}

func TestFreePortIsBelowTheEphemeralRange(t *testing.T) {
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	if p < 10000 {
		t.Errorf("freePort = %d, want at least 10000", p)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d from freePort cannot be bound: %v", p, err)
	}
	ln.Close()
}
