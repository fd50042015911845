package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// caStatus is the part of `trellis ca status -o json` the test reads.
type caStatus struct {
	Phase string `json:"phase"`
	Roots []struct {
		Role        string `json:"role"`
		Fingerprint string `json:"fingerprint"`
	} `json:"roots"`
	Sidecars []struct {
		Workload   string `json:"workload"`
		Connected  bool   `json:"connected"`
		IssuerRole string `json:"issuer_role"`
		Current    bool   `json:"current"`
	} `json:"sidecars"`
}

func getCAStatus(t *testing.T, state string) caStatus {
	t.Helper()
	out, errOut, err := trellis(t, state, "ca", "status", "-o", "json")
	if err != nil {
		t.Fatalf("ca status: %v %s", err, errOut)
	}
	var st caStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("ca status: %v in %s", err, out)
	}
	return st
}

// pemRoots reads the certificates of a PEM file.
func pemRoots(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// servedChain returns the certificate chain a sidecar presents on its inbound
// listener.
func servedChain(t *testing.T, addr string) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return nil
		}}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, conf)
	if err == nil {
		c.Close()
	}
	if len(chain) == 0 {
		t.Fatalf("%s presented no certificate (dial: %v)", addr, err)
	}
	return chain
}

func chainsTo(chain []*x509.Certificate, roots ...*x509.Certificate) error {
	pool, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// TestRootRotationUnderLoad rotates the CA's root with `trellis ca rotate`
// while bookbuyer calls both bookstores through their sidecars: not one
// request may fail, and afterwards every sidecar's certificate chains to the
// new root and not to the old one, and ca.pem holds the new root only.
func TestRootRotationUnderLoad(t *testing.T) {
	m := startBookstoreMesh(t)
	caPEM := filepath.Join(m.state, "ca.pem")
	oldRoots := pemRoots(t, caPEM)
	if len(oldRoots) != 1 {
		t.Fatalf("ca.pem holds %d roots before the rotation, want 1", len(oldRoots))
	}
	if st := getCAStatus(t, m.state); st.Phase != "" {
		t.Fatalf("phase before the rotation = %q, want none", st.Phase)
	}

	before := getStats(t, m.buyer)
	out, errOut, err := trellis(t, m.state, "ca", "rotate", "--timeout", "90s")
	if err != nil {
		t.Fatalf("ca rotate: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	t.Logf("ca rotate:\n%s%s", errOut, out)
	for _, step := range []string{"prepare:", "activate:", "finish:"} {
		if !strings.Contains(errOut, step) {
			t.Errorf("ca rotate progress has no %q line:\n%s", step, errOut)
		}
	}
	time.Sleep(time.Second) // requests after the last step
	after := getStats(t, m.buyer)
	if served := after.OK - before.OK; served < 20 || after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("during the rotation: %d served, failed %d→%d, denied %d→%d; want many served and none failed",
			served, before.Failed, after.Failed, before.Denied, after.Denied)
	}

	newRoots := pemRoots(t, caPEM)
	if len(newRoots) != 1 || newRoots[0].Equal(oldRoots[0]) {
		t.Fatalf("ca.pem after the rotation holds %d roots (the old one: %v), want the new root only",
			len(newRoots), len(newRoots) > 0 && newRoots[0].Equal(oldRoots[0]))
	}
	st := getCAStatus(t, m.state)
	if st.Phase != "finished" || len(st.Roots) != 1 {
		t.Errorf("ca status after the rotation: phase %q with %d roots, want finished with 1", st.Phase, len(st.Roots))
	}
	for _, s := range st.Sidecars {
		if !s.Connected || !s.Current || s.IssuerRole != "current" {
			t.Errorf("ca status: sidecar %s connected %v, current %v, issuer %q; want connected, current, issued by the current intermediate",
				s.Workload, s.Connected, s.Current, s.IssuerRole)
		}
	}
	if len(st.Sidecars) != 3 {
		t.Errorf("ca status lists %d sidecars, want 3", len(st.Sidecars))
	}
	for name, w := range workloads(t, m.state) {
		chain := servedChain(t, w.Address)
		if err := chainsTo(chain, newRoots[0]); err != nil {
			t.Errorf("%s: certificate does not chain to the new root: %v", name, err)
		}
		if err := chainsTo(chain, oldRoots[0]); err == nil {
			t.Errorf("%s: certificate still chains to the old root", name)
		}
	}
	// Traffic still flows after the rotation.
	later := after
	waitFor(t, 10*time.Second, "requests after the rotation", func() bool {
		later = getStats(t, m.buyer)
		return later.OK > after.OK+5
	})
	if later.Failed != before.Failed {
		t.Errorf("after the rotation: failed %d→%d, want none", before.Failed, later.Failed)
	}
}

// TestRootRotationResumesAfterRestart stops `trellis ca rotate` part way (a
// timeout too short for the sidecars to catch up), restarts the control plane
// on the same addresses, and runs the command again: it continues from the
// phase the CA kept and finishes, with no failed request throughout.
func TestRootRotationResumesAfterRestart(t *testing.T) {
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	m := startBookstoreMesh(t, "--grpc-listen", grpcAddr, "--admin-listen", adminAddr)
	oldRoot := pemRoots(t, filepath.Join(m.state, "ca.pem"))[0]
	before := getStats(t, m.buyer)

	_, errOut, err := trellis(t, m.state, "ca", "rotate", "--timeout", "300ms")
	if err == nil || !strings.Contains(errOut, "timed out") {
		t.Fatalf("ca rotate --timeout 300ms: err %v, stderr %s; want a timeout while sidecars catch up", err, errOut)
	}
	phase := getCAStatus(t, m.state).Phase
	if phase != "prepared" && phase != "activated" {
		t.Fatalf("phase after the interrupted rotation = %q, want prepared or activated", phase)
	}
	if !strings.Contains(errOut, "phase "+phase) {
		t.Errorf("the timeout message does not name phase %s:\n%s", phase, errOut)
	}

	m.cp.stop(t)
	m.cp = controlPlane(t, m.state, "--grpc-listen", grpcAddr, "--admin-listen", adminAddr)
	if got := getCAStatus(t, m.state).Phase; got != phase {
		t.Fatalf("phase after the control plane restarted = %q, want %q kept", got, phase)
	}
	out, errOut, err := trellis(t, m.state, "ca", "rotate", "--timeout", "90s")
	if err != nil {
		t.Fatalf("ca rotate after the restart: %v\n%s%s", err, errOut, out)
	}
	if !strings.Contains(errOut, "continuing the rotation "+phase) {
		t.Errorf("ca rotate after the restart did not say it continues the %s rotation:\n%s", phase, errOut)
	}
	time.Sleep(time.Second)
	after := getStats(t, m.buyer)
	if served := after.OK - before.OK; served < 20 || after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("during the rotation and restart: %d served, failed %d→%d, denied %d→%d; want many served and none failed",
			served, before.Failed, after.Failed, before.Denied, after.Denied)
	}
	newRoots := pemRoots(t, filepath.Join(m.state, "ca.pem"))
	for name, w := range workloads(t, m.state) {
		chain := servedChain(t, w.Address)
		if err := chainsTo(chain, newRoots[0]); err != nil {
			t.Errorf("%s: certificate does not chain to the new root: %v", name, err)
		}
		if err := chainsTo(chain, oldRoot); err == nil {
			t.Errorf("%s: certificate still chains to the old root", name)
		}
	}
}
