package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/proxy"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// startReplier runs a TCP server that reads until the client half-closes, then
// answers with reply and closes.
func startReplier(t *testing.T, reply []byte) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn) {
		io.Copy(io.Discard, c)
		c.Write(reply)
	})
}

// tcpCounter sums one trellis_tcp_* family over the series whose labels include want.
func (s *sidecar) tcpCounter(t *testing.T, family string, want map[string]string) float64 {
	t.Helper()
	var n float64
	for _, m := range s.metricFamily(t, family).GetMetric() {
		if hasLabels(m, want) {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

func TestTCPTunnelByteCounters(t *testing.T) {
	t.Parallel()
	reply := bytes.Repeat([]byte("shelved "), 256) // 2 KiB back
	app := startReplier(t, reply)
	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{
		reg: local.Registration{Name: "ledger-v1", Namespace: "bookstore", Account: "ledger",
			Services: []model.ServiceMembership{{Service: "ledger", ServicePort: 7000, Protocol: model.ProtocolTCP}}},
		app: app, ready: true,
	})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	var c *net.TCPConn
	eventually(t, 15*time.Second, func() error {
		conn, _, resp := connect(t, client, "ledger.bookstore:7000", "")
		if resp.StatusCode != http.StatusOK {
			conn.Close()
			return fmt.Errorf("CONNECT = %d %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader))
		}
		c = conn
		return nil
	})
	// The first tunnel that answered 200 carries the bytes: early ones
	// buffered with the CONNECT are not part of it, so that the counts are exact.
	sentByApp := bytes.Repeat([]byte("x"), 1000)
	if _, err := c.Write(sentByApp); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, reply) {
		t.Fatalf("reply: %d bytes, %v; want the app's %d", len(got), err, len(reply))
	}

	for _, s := range []struct {
		sc     *sidecar
		labels map[string]string
	}{
		{client, map[string]string{"direction": "outbound", "source_workload": "bookbuyer", "destination_service": "ledger.bookstore", "destination_workload": "ledger-v1", "tls": "true"}},
		{server, map[string]string{"direction": "inbound", "source_workload": "bookbuyer", "destination_workload": "ledger-v1", "tls": "true"}},
	} {
		// Counted when the sidecar has closed both sides, a moment after
		// this end saw EOF.
		eventually(t, 5*time.Second, func() error {
			closed := s.sc.tcpCounter(t, "trellis_tcp_connections_closed_total", s.labels)
			opened := s.sc.tcpCounter(t, "trellis_tcp_connections_opened_total", s.labels)
			if closed != 1 || opened != 1 {
				return fmt.Errorf("%s: %v tunnels opened, %v closed; want 1 and 1", s.labels["direction"], opened, closed)
			}
			return nil
		})
		// Sent is towards the side that opened the connection, received from it.
		for family, want := range map[string]float64{
			"trellis_tcp_sent_bytes_total":     float64(len(reply)),
			"trellis_tcp_received_bytes_total": float64(len(sentByApp)),
		} {
			if n := s.sc.tcpCounter(t, family, s.labels); n != want {
				t.Errorf("%s sidecar: %s%v = %v, want %v", s.labels["direction"], family, s.labels, n, want)
			}
		}
	}
}

func TestTCPForwardPort(t *testing.T) {
	t.Parallel()
	reply := bytes.Repeat([]byte("ledger "), 300)
	app := startReplier(t, reply)
	m := newMesh(t, permissiveMesh)
	m.sidecar(sidecarSpec{
		reg: local.Registration{Name: "ledger-v1", Namespace: "bookstore", Account: "ledger",
			Services: []model.ServiceMembership{{Service: "ledger", ServicePort: 7000, Protocol: model.ProtocolTCP}}},
		app: app, ready: true,
	})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg(), tcpForwards: []proxy.TCPForward{
		{Listen: "127.0.0.1:0", Authority: "ledger.bookstore:7000"},
		{Listen: "127.0.0.1:0", Authority: "nowhere.bookstore:7000"},
	}})
	if len(client.p.TCPForwards) != 2 {
		t.Fatalf("bound %d forward ports, want 2", len(client.p.TCPForwards))
	}
	ledger, nowhere := client.p.TCPForwards[0].String(), client.p.TCPForwards[1].String()

	// exchange sends body on a fresh connection to addr, half-closes and
	// reads until EOF.
	exchange := func(addr string, body []byte) ([]byte, error) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(body); err != nil {
			return nil, err
		}
		c.(*net.TCPConn).CloseWrite()
		return io.ReadAll(c)
	}
	sent := []byte("an opaque request, no HTTP in sight\n")
	eventually(t, 15*time.Second, func() error {
		got, err := exchange(ledger, sent)
		if err != nil || !bytes.Equal(got, reply) {
			return fmt.Errorf("through the forward port: %d bytes, %v; want the app's %d", len(got), err, len(reply))
		}
		return nil
	})
	labels := map[string]string{"direction": "outbound", "source_workload": "bookbuyer", "destination_service": "ledger.bookstore", "destination_workload": "ledger-v1"}
	eventually(t, 5*time.Second, func() error {
		if n := client.tcpCounter(t, "trellis_tcp_connections_closed_total", labels); n < 1 {
			return fmt.Errorf("trellis_tcp_connections_closed_total%v = %v, want at least 1", labels, n)
		}
		return nil
	})
	closed := client.tcpCounter(t, "trellis_tcp_connections_closed_total", labels)
	for family, per := range map[string]int{"trellis_tcp_sent_bytes_total": len(reply), "trellis_tcp_received_bytes_total": len(sent)} {
		if n, want := client.tcpCounter(t, family, labels), closed*float64(per); n != want {
			t.Errorf("%s%v = %v, want %v for %v connections", family, labels, n, want, closed)
		}
	}

	t.Run("unknown destination is refused", func(t *testing.T) {
		got, err := exchange(nowhere, sent)
		if len(got) != 0 {
			t.Errorf("read %q, %v from a forward to an unknown service; want the connection closed", got, err)
		}
		var refused float64
		for _, mm := range client.metricFamily(t, "trellis_connections_refused_total").GetMetric() {
			if hasLabels(mm, map[string]string{"direction": "outbound", "reason": proxy.ReasonEgressDenied}) {
				refused += mm.GetCounter().GetValue()
			}
		}
		if refused != 1 {
			t.Errorf("trellis_connections_refused_total{direction=outbound,reason=egress_denied} = %v, want 1", refused)
		}
	})
}

func TestParseTCPForward(t *testing.T) {
	tests := []struct {
		in      string
		want    proxy.TCPForward
		wantErr bool
	}{
		{in: "127.0.0.1:13306=mysql.db:3306", want: proxy.TCPForward{Listen: "127.0.0.1:13306", Authority: "mysql.db:3306"}},
		{in: "fd:5=ledger.bookstore:7000", want: proxy.TCPForward{Listen: "fd:5", Authority: "ledger.bookstore:7000"}},
		{in: "127.0.0.1:13306=mysql.db", wantErr: true},
		{in: "127.0.0.1:13306", wantErr: true},
		{in: "=mysql.db:3306", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := proxy.ParseTCPForward(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseTCPForward(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestRunRejectsBadTCPForward(t *testing.T) {
	var stderr bytes.Buffer
	err := proxy.Run(t.Context(), []string{"--tcp-forward", "127.0.0.1:13306"}, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "want LISTEN=AUTHORITY") {
		t.Errorf("Run(--tcp-forward without authority) = %v; want an error that shows the form", err)
	}
}

func TestTCPForwardServerFirst(t *testing.T) {
	t.Parallel()
	// A server-first protocol (MySQL, SMTP): the server greets before the
	// client sends a byte, so nothing on the way may wait for the client.
	ledger := serveTCP(t, func(c net.Conn) {
		io.WriteString(c, "220 ledger ready\n")
		io.Copy(c, c)
	})
	m := newMesh(t, permissiveMesh)
	m.sidecar(sidecarSpec{
		reg: local.Registration{Name: "ledger-v1", Namespace: "bookstore", Account: "ledger",
			Services: []model.ServiceMembership{{Service: "ledger", ServicePort: 3306, Protocol: model.ProtocolTCPServerFirst}}},
		app: ledger, ready: true,
	})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg(), tcpForwards: []proxy.TCPForward{{Listen: "127.0.0.1:0", Authority: "ledger.bookstore:3306"}}})
	eventually(t, 15*time.Second, func() error {
		c, err := net.DialTimeout("tcp", client.p.TCPForwards[0].String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		greeting := make([]byte, len("220 ledger ready\n"))
		if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "220 ledger ready\n" {
			return fmt.Errorf("greeting before sending anything = %q, %v; want %q", greeting, err, "220 ledger ready\n")
		}
		io.WriteString(c, "QUIT\n")
		echo := make([]byte, len("QUIT\n"))
		if _, err := io.ReadFull(c, echo); err != nil || string(echo) != "QUIT\n" {
			t.Fatalf("echo = %q, %v; want %q", echo, err, "QUIT\n")
		}
		return nil
	})
}
