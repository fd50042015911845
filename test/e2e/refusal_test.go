package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

type workload struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Address      string `json:"address"`
	AdminAddress string `json:"adminAddress"`
}

func workloads(t *testing.T, state string) map[string]workload {
	t.Helper()
	out, errOut, err := trellis(t, state, "get", "workloads", "-o", "json")
	if err != nil {
		t.Fatalf("get workloads: %v %s", err, errOut)
	}
	var ws []workload
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatal(err)
	}
	m := map[string]workload{}
	for _, w := range ws {
		m[w.Name] = w
	}
	return m
}

// foreignClientCert makes a client certificate with a SPIFFE ID from a CA the
// mesh does not trust.
func foreignClientCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Other CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse("spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer")
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}
}

// refusedCounts returns a sidecar's inbound refusals by reason.
func refusedCounts(t *testing.T, admin string) map[string]int {
	t.Helper()
	m := map[string]int{}
	for k, n := range refusals(t, admin) {
		if reason, ok := strings.CutPrefix(k, "inbound/"); ok {
			m[reason] = n
		}
	}
	return m
}

// TestInboundRefusesStrangers checks that a plaintext client and a TLS client with
// a certificate from another CA are refused by a sidecar's inbound port, and
// counted with their reason.
func TestInboundRefusesStrangers(t *testing.T) {
	state := t.TempDir()
	runningDemo(t, state)
	w := workloads(t, state)["bookstore-v1"]
	before := refusedCounts(t, w.AdminAddress)

	// Plaintext HTTP.
	c, err := net.DialTimeout("tcp", w.Address, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /books-bought HTTP/1.1\r\nHost: bookstore\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode == http.StatusOK {
		t.Errorf("plaintext request got %s, want the connection refused", resp.Status)
	}
	c.Close()

	// TLS with a certificate from a CA the mesh does not trust.
	conf := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{foreignClientCert(t)}, MinVersion: tls.VersionTLS13}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", w.Address, conf)
	if err == nil {
		// TLS 1.3 reports a refused client certificate on the first read.
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(tc, "GET /books-bought HTTP/1.1\r\nHost: bookstore\r\n\r\n")
		if resp, rerr := http.ReadResponse(bufio.NewReader(tc), nil); rerr == nil {
			t.Errorf("request with a foreign certificate got %s, want the connection refused", resp.Status)
		}
		tc.Close()
	}

	waitFor(t, 5*time.Second, "both refusals to be counted", func() bool {
		after := refusedCounts(t, w.AdminAddress)
		return after["plaintext"] > before["plaintext"] && after["untrusted_certificate"] > before["untrusted_certificate"]
	})
}
