package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy"
)

// A destination whose config never comes (here the control plane is gone
// before the app first calls it) is refused with no_config once the
// sidecar's FirstConfigTimeout has passed, and no later, on every path a
// request or a connection can take: a request the HTTP/1.1 relay waits for
// and then hands to net/http is not waited for a second time there.
func TestNoConfigRefusedWithinTheBound(t *testing.T) {
	t.Parallel()
	m := newMesh(t, permissiveMesh)
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg(), firstConfigTimeout: -1,
		tcpForwards: []proxy.TCPForward{{Listen: "127.0.0.1:0", Authority: "ledger.bookstore:7000"}}})

	// The bound is the sidecar's default, as trellis-proxy runs it.
	_, b := client.admin(t, "/config")
	var cfg struct {
		Defaults struct {
			FirstConfigTimeout string `json:"first_config_timeout"`
		} `json:"defaults"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("/config: %v\n%s", err, b)
	}
	bound, err := time.ParseDuration(cfg.Defaults.FirstConfigTimeout)
	if err != nil || bound <= 0 || bound > 3*time.Second {
		t.Fatalf("/config first_config_timeout = %q (%v), want a duration of at most 3s", cfg.Defaults.FirstConfigTimeout, err)
	}
	// What the refusal may take beyond the bound: scheduling on a loaded
	// machine, well short of a second wait.
	const slack = time.Second

	m.stopControlPlane()

	h2c := h2cClient(t, client.p.Outbound.String())
	requests := []struct {
		name string
		do   func(t *testing.T) (*http.Response, error)
	}{
		{"HTTP/1.1, which the relay waits for and hands to net/http", func(t *testing.T) (*http.Response, error) {
			return client.client.Get("http://ledger.bookstore:14001/")
		}},
		{"HTTP/1.1 that net/http serves from the start (an escaped path)", func(t *testing.T) (*http.Response, error) {
			return client.client.Get("http://ledger.bookstore:14002/a%20b")
		}},
		{"h2c", func(t *testing.T) (*http.Response, error) {
			return h2c.Get("http://ledger.bookstore:14003/")
		}},
		{"CONNECT", func(t *testing.T) (*http.Response, error) {
			_, _, resp := connect(t, client, "ledger.bookstore:14004", "")
			return resp, nil
		}},
	}
	// The subtests run in parallel, each for a destination of its own; the
	// counts are read once they have all finished.
	t.Run("refusals", func(t *testing.T) {
		for _, tt := range requests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				began := time.Now()
				resp, err := tt.do(t)
				took := time.Since(began)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(proxy.ReasonHeader) != proxy.ReasonNoConfig {
					t.Errorf("answer %d %q, want 503 %s", resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), proxy.ReasonNoConfig)
				}
				if took < bound || took > bound+slack {
					t.Errorf("refused after %v, want the first-config bound %v (at most %v later)", took.Round(time.Millisecond), bound, slack)
				}
			})
		}
		t.Run("TCP forward", func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			c, err := net.DialTimeout("tcp", client.p.TCPForwards[0].String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * bound))
			got, err := io.ReadAll(c)
			took := time.Since(began)
			if err != nil || len(got) > 0 {
				t.Errorf("read %q, %v; want the connection closed with nothing sent", got, err)
			}
			if took < bound || took > bound+slack {
				t.Errorf("closed after %v, want the first-config bound %v (at most %v later)", took.Round(time.Millisecond), bound, slack)
			}
		})
	})

	// net/http counts a request once its handler has returned, which may be
	// a moment after the app has the answer.
	want := map[string]string{"direction": "outbound", "response_code": "503", "reason": proxy.ReasonNoConfig}
	eventually(t, 5*time.Second, func() error {
		if n := client.requestCount(t, want); n != float64(len(requests)) {
			return fmt.Errorf("trellis_requests_total%v = %v, want %d", want, n, len(requests))
		}
		return nil
	})
	var refused float64
	for _, mm := range client.metricFamily(t, "trellis_connections_refused_total").GetMetric() {
		if hasLabels(mm, map[string]string{"direction": "outbound", "reason": proxy.ReasonNoConfig}) {
			refused += mm.GetCounter().GetValue()
		}
	}
	if refused != 1 {
		t.Errorf("trellis_connections_refused_total{direction=outbound,reason=%s} = %v, want 1 (the TCP forward)", proxy.ReasonNoConfig, refused)
	}
}
