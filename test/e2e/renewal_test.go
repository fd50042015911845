package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/freeport"
	"github.com/trellis-mesh/trellis/internal/proxy/procenv"
)

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func certExpiry(t *testing.T, admin string) time.Time {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg struct {
		CertExpires time.Time `json:"certificate_expires"`
		Process     struct {
			GODEBUG    bool `json:"godebug_schedtrace"`
			GOMAXPROCS int  `json:"gomaxprocs"`
		} `json:"process"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if !cfg.Process.GODEBUG {
		t.Errorf("the sidecar at %s runs without the runtime setting trellis run gives it (internal/proxy/procenv)", admin)
	}
	// One thread by default (--concurrency); $GOMAXPROCS of the test's own
	// environment, passed on by trellis run, would win.
	if os.Getenv("GOMAXPROCS") == "" && cfg.Process.GOMAXPROCS != procenv.DefaultConcurrency {
		t.Errorf("the sidecar at %s runs with GOMAXPROCS %d, want the default %d", admin, cfg.Process.GOMAXPROCS, procenv.DefaultConcurrency)
	}
	return cfg.CertExpires
}

// TestCertificateRenewalUnderLoad runs a mesh whose certificates live 4 s: the
// sidecars renew at two thirds of that, several times, while bookbuyer calls
// bookstore without a single failed request.
func TestCertificateRenewalUnderLoad(t *testing.T) {
	m := startBookstoreMesh(t, "--cert-validity", "4s")
	state, buyer := m.state, m.buyer
	ws := workloads(t, state)
	first := map[string]time.Time{}
	for _, n := range []string{"bookstore-v1", "bookstore-v2", "bookbuyer"} {
		first[n] = certExpiry(t, ws[n].AdminAddress)
	}
	before := getStats(t, buyer)
	time.Sleep(10 * time.Second) // about four renewals at 2/3 of 4 s
	after := getStats(t, buyer)

	for n, exp := range first {
		now := certExpiry(t, ws[n].AdminAddress)
		if !now.After(exp.Add(4 * time.Second)) {
			t.Errorf("%s: certificate expiry moved from %s to %s in 10 s; want several renewals", n, exp.Format(time.RFC3339Nano), now.Format(time.RFC3339Nano))
		}
	}
	b := sidecarMetrics(t, ws["bookbuyer"].AdminAddress)
	exp := regexp.MustCompile(`(?m)^trellis_certificate_expiry_timestamp_seconds (\d+)$`).FindSubmatch(b)
	if exp == nil {
		t.Error("sidecar metrics have no trellis_certificate_expiry_timestamp_seconds")
	} else if ts, _ := strconv.ParseInt(string(exp[1]), 10, 64); time.Unix(ts, 0).Before(time.Now()) {
		t.Errorf("certificate expiry metric %s is in the past", time.Unix(ts, 0))
	}
	if served := after.OK - before.OK; served < 50 || after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("during renewals: %d served, failed %d→%d, denied %d→%d; want many served and none failed", served, before.Failed, after.Failed, before.Denied, after.Denied)
	}
}
