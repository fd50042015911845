package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
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
				io.Copy(io.Discard, c)
				c.Write(reply)
			}()
		}
	}()
	return ln.Addr().String()
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
