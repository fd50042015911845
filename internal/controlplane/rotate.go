package controlplane

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// Rotation steps, as the admin API names them: POST /v1/ca/{step}.
const (
	StepPrepare  = "prepare"
	StepActivate = "activate"
	StepFinish   = "finish"
)

// CAStatus answers GET /v1/ca: the CA's phase, roots and intermediates, and
// what each registered workload's sidecar holds.
type CAStatus struct {
	identity.Status
	Sidecars []SidecarTrust `json:"sidecars"`
}

// SidecarTrust is what one workload's sidecar holds, as it last told the
// control plane (at certification or when its inbound stream opened).
type SidecarTrust struct {
	Workload  string `json:"workload"`
	Connected bool   `json:"connected"`
	// TrustVersion is the version the sidecar holds; empty if it has not
	// said since the control plane started.
	TrustVersion string `json:"trust_version,omitempty"`
	// Issuer is the fingerprint of the intermediate that issued its leaf, and
	// IssuerRole that intermediate's role in the CA's status ("current", "old",
	// "new"), empty when it is none of them or unknown.
	Issuer     string `json:"issuer,omitempty"`
	IssuerRole string `json:"issuer_role,omitempty"`
	// Current is true when TrustVersion is the CA's: the sidecar holds the
	// current bundle and a leaf from the intermediate that signs now.
	Current bool      `json:"current"`
	Updated time.Time `json:"updated,omitzero"`
}

// trustTracker records, per workload, what its sidecar said it holds.
type trustTracker struct {
	mu   sync.Mutex
	held map[string]SidecarTrust
}

var _ serve.TrustObserver = (*trustTracker)(nil)

func newTrustTracker() *trustTracker { return &trustTracker{held: map[string]SidecarTrust{}} }

// Holds implements serve.TrustObserver.
func (t *trustTracker) Holds(workloadID, version string, issuer []byte) {
	st := SidecarTrust{Workload: workloadID, TrustVersion: version, Updated: time.Now().UTC()}
	if issuer != nil {
		sum := sha256.Sum256(issuer)
		st.Issuer = hex.EncodeToString(sum[:])
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.Issuer == "" {
		st.Issuer = t.held[workloadID].Issuer
	}
	t.held[workloadID] = st
}

func (t *trustTracker) get(workloadID string) (SidecarTrust, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.held[workloadID]
	return st, ok
}

// rotator serves the CA's rotation steps and status on the admin API.
type rotator struct {
	ca     *identity.CA
	srv    *serve.Server
	store  *local.Store
	trust  *trustTracker
	caFile string // ca.pem, rewritten with the bundle at each step
	log    *slog.Logger
	mu     sync.Mutex // one step at a time
}

func (r *rotator) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/ca", r.status)
	mux.HandleFunc("POST /v1/ca/{step}", r.step)
}

func (r *rotator) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, r.current())
}

func (r *rotator) current() CAStatus {
	st := CAStatus{Status: r.ca.Status(), Sidecars: []SidecarTrust{}}
	roles := map[string]string{}
	for _, in := range st.Intermediates {
		roles[in.Fingerprint] = in.Role
	}
	for _, wl := range r.store.Workloads() {
		s, _ := r.trust.get(wl.ID)
		s.Workload, s.Connected = wl.ID, wl.Connected
		s.IssuerRole = roles[s.Issuer]
		s.Current = s.TrustVersion == st.TrustVersion
		st.Sidecars = append(st.Sidecars, s)
	}
	return st
}

func (r *rotator) step(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	switch step := req.PathValue("step"); step {
	case StepPrepare:
		err = r.ca.Prepare()
	case StepActivate:
		err = r.ca.Activate()
	case StepFinish:
		err = r.ca.Finish()
	default:
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: fmt.Sprintf("no rotation step %q; want %s, %s or %s", step, StepPrepare, StepActivate, StepFinish)})
		return
	}
	var se *identity.StepError
	switch {
	case errors.As(err, &se):
		writeJSON(w, http.StatusConflict, ErrorBody{Error: err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: err.Error()})
		return
	}
	// New sidecars read ca.pem; running ones learn of the step on their inbound
	// stream.
	if err := local.WriteFileAtomic(r.caFile, r.ca.BundlePEM(), 0o644); err != nil {
		writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: fmt.Sprintf("rotation step %s done, but %v; rewrite it from the CA's bundle", req.PathValue("step"), err)})
		return
	}
	r.srv.TrustChanged()
	st := r.current()
	r.log.Info("root rotation step", "step", req.PathValue("step"), "phase", st.Phase.String(), "trust_version", st.TrustVersion)
	writeJSON(w, http.StatusOK, st)
}

// trustedRoots is a pool of the CA's bundle, rebuilt when its trust version
// changes, for verifying sidecars' client certificates.
type trustedRoots struct {
	ca      *identity.CA
	mu      sync.Mutex
	version string
	pool    *x509.CertPool
}

func (t *trustedRoots) get() (*x509.CertPool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.ca.TrustVersion()
	if t.pool != nil && v == t.version {
		return t.pool, nil
	}
	pool := x509.NewCertPool()
	for _, der := range t.ca.Bundle() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		pool.AddCert(c)
	}
	t.pool, t.version = pool, v
	return pool, nil
}
