package identity

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// RotationFile holds the state of a root rotation in the CA's directory, mode
// 0600: the phase and, until the rotation finishes, the new root and
// intermediate with their keys. It is written atomically, and each step of a
// rotation is one write of it, so a control plane stopped at any moment
// resumes in the phase it last reached.
const RotationFile = "rotation.json"

// Phase is where a root rotation stands.
type Phase string

// The phases of a root rotation, in order. A CA that has never rotated is in
// PhaseNone; a finished rotation may be followed by another.
const (
	PhaseNone Phase = ""
	// PhasePrepared: a new root and intermediate exist; the trust bundle holds
	// both roots; the old intermediate still signs.
	PhasePrepared Phase = "prepared"
	// PhaseActivated: the new intermediate signs; the bundle still holds both
	// roots, so leaves of the old one stay trusted.
	PhaseActivated Phase = "activated"
	// PhaseFinished: the old root is dropped; the bundle holds the new root only.
	PhaseFinished Phase = "finished"
)

func (p Phase) String() string {
	if p == PhaseNone {
		return "none"
	}
	return string(p)
}

// StepError refuses a rotation step taken out of order.
type StepError struct {
	Step  string // prepare, activate or finish
	Phase Phase  // the phase the CA is in
}

func (e *StepError) Error() string {
	switch {
	case e.Step == "prepare":
		return fmt.Sprintf("prepare root rotation: a rotation is already in progress (phase %s); complete it first (trellis ca rotate continues it)", e.Phase)
	case e.Phase == PhasePrepared:
		return fmt.Sprintf("%s root rotation: the rotation is prepared, not activated; activate it first", e.Step)
	case e.Phase == PhaseActivated:
		return fmt.Sprintf("%s root rotation: the rotation is already activated; finish it", e.Step)
	default:
		return fmt.Sprintf("%s root rotation: no rotation is in progress (phase %s); prepare one first", e.Step, e.Phase)
	}
}

// generation is a root and the intermediate it signed.
type generation struct {
	root     *x509.Certificate
	rootKey  *ecdsa.PrivateKey
	inter    *x509.Certificate
	interKey *ecdsa.PrivateKey
}

type rotationFile struct {
	Phase Phase `json:"phase"`
	// Next is the new generation, PEM encoded, while prepared or activated, and
	// while finished until InstallPending is cleared.
	Next *generationPEM `json:"next,omitempty"`
	// InstallPending is set by Finish until the new generation has replaced
	// root.* and intermediate.*; LoadOrCreate completes an interrupted install.
	InstallPending bool      `json:"install_pending,omitempty"`
	Updated        time.Time `json:"updated"`
}

type generationPEM struct {
	RootCert         string `json:"root_cert"`
	RootKey          string `json:"root_key"`
	IntermediateCert string `json:"intermediate_cert"`
	IntermediateKey  string `json:"intermediate_key"`
}

// Prepare starts a root rotation: it makes a new root and an intermediate
// signed by it, and adds the new root to the trust bundle. The old
// intermediate keeps signing. It refuses while a rotation is in progress.
func (ca *CA) Prepare() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.phase == PhasePrepared || ca.phase == PhaseActivated {
		return &StepError{Step: "prepare", Phase: ca.phase}
	}
	now := ca.now()
	root, rootKey, err := ca.newRoot(now)
	if err != nil {
		return fmt.Errorf("prepare root rotation: new root: %w", err)
	}
	inter, interKey, err := ca.newIntermediate(root, rootKey, now)
	if err != nil {
		return fmt.Errorf("prepare root rotation: new intermediate: %w", err)
	}
	next := &generation{root: root, rootKey: rootKey, inter: inter, interKey: interKey}
	if err := ca.writeRotation(PhasePrepared, next, false); err != nil {
		return fmt.Errorf("prepare root rotation: %w", err)
	}
	ca.phase, ca.next = PhasePrepared, next
	ca.setVersionLocked()
	return nil
}

// Activate makes the new intermediate sign every leaf from now on; the trust
// bundle keeps both roots. It refuses unless the rotation is prepared.
func (ca *CA) Activate() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.phase != PhasePrepared {
		return &StepError{Step: "activate", Phase: ca.phase}
	}
	if err := ca.writeRotation(PhaseActivated, ca.next, false); err != nil {
		return fmt.Errorf("activate root rotation: %w", err)
	}
	ca.phase = PhaseActivated
	ca.setVersionLocked()
	return nil
}

// Finish drops the old root: the new root and intermediate replace the old ones
// in the directory and the trust bundle holds the new root only. It refuses
// unless the rotation is activated.
func (ca *CA) Finish() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.phase != PhaseActivated {
		return &StepError{Step: "finish", Phase: ca.phase}
	}
	if err := ca.writeRotation(PhaseFinished, ca.next, true); err != nil {
		return fmt.Errorf("finish root rotation: %w", err)
	}
	if err := ca.install(ca.next); err != nil {
		// The rotation file says finished with the install pending: the next
		// LoadOrCreate completes it, and so does Finish again now.
		return fmt.Errorf("finish root rotation: %w", err)
	}
	ca.root, ca.inter, ca.interKey = ca.next.root, ca.next.inter, ca.next.interKey
	ca.phase, ca.next = PhaseFinished, nil
	ca.setVersionLocked()
	return nil
}

// install writes g over root.* and intermediate.*, then records that the
// install is done.
func (ca *CA) install(g *generation) error {
	if err := writePair(ca.dir, RootCertFile, RootKeyFile, g.root, g.rootKey); err != nil {
		return err
	}
	if err := writePair(ca.dir, IntermediateCertFile, IntermediateKeyFile, g.inter, g.interKey); err != nil {
		return err
	}
	return ca.writeRotation(PhaseFinished, nil, false)
}

func (ca *CA) writeRotation(phase Phase, next *generation, pending bool) error {
	rf := rotationFile{Phase: phase, InstallPending: pending, Updated: ca.now().UTC()}
	if next != nil {
		rk, err := x509.MarshalPKCS8PrivateKey(next.rootKey)
		if err != nil {
			return err
		}
		ik, err := x509.MarshalPKCS8PrivateKey(next.interKey)
		if err != nil {
			return err
		}
		rf.Next = &generationPEM{
			RootCert:         certPEM(next.root),
			RootKey:          string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rk})),
			IntermediateCert: certPEM(next.inter),
			IntermediateKey:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ik})),
		}
	}
	b, err := json.MarshalIndent(rf, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(ca.dir, RotationFile, append(b, '\n'), 0o600)
}

// loadRotation reads the rotation file, nil if there is none. A finish that was
// interrupted is completed here, before the root is loaded.
func (ca *CA) loadRotation() (*rotationFile, error) {
	where := filepath.Join(ca.dir, RotationFile)
	b, err := os.ReadFile(where)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	var rf rotationFile
	if err := json.Unmarshal(b, &rf); err != nil {
		return nil, fmt.Errorf("certificate authority: %s does not parse (%v); restore it, or delete it to abandon the rotation", where, err)
	}
	switch rf.Phase {
	case PhasePrepared, PhaseActivated, PhaseFinished:
	default:
		return nil, fmt.Errorf("certificate authority: %s has phase %q, want prepared, activated or finished; restore it, or delete it to abandon the rotation", where, rf.Phase)
	}
	if rf.Phase == PhaseFinished && !rf.InstallPending {
		return &rf, nil
	}
	g, err := parseGeneration(rf.Next)
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %s: new generation: %w; restore it, or delete it to abandon the rotation", where, err)
	}
	if rf.Phase == PhaseFinished {
		if err := ca.install(g); err != nil {
			return nil, fmt.Errorf("certificate authority: complete the finished rotation: %w", err)
		}
		return &rotationFile{Phase: PhaseFinished}, nil
	}
	ca.next = g
	return &rf, nil
}

// resumeRotation sets the phase read by loadRotation, once the current root
// and intermediate are loaded.
func (ca *CA) resumeRotation(rf *rotationFile) error {
	if rf == nil {
		return nil
	}
	if ca.next != nil && ca.next.root.Equal(ca.root) {
		return fmt.Errorf("certificate authority: %s names the current root as the new one; delete it to abandon the rotation",
			filepath.Join(ca.dir, RotationFile))
	}
	ca.phase = rf.Phase
	return nil
}

func parseGeneration(p *generationPEM) (*generation, error) {
	if p == nil {
		return nil, errors.New("missing")
	}
	var g generation
	var err error
	if g.root, err = parseCertPEM([]byte(p.RootCert)); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if g.rootKey, err = parseKeyPEM([]byte(p.RootKey)); err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	if g.inter, err = parseCertPEM([]byte(p.IntermediateCert)); err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	if g.interKey, err = parseKeyPEM([]byte(p.IntermediateKey)); err != nil {
		return nil, fmt.Errorf("intermediate key: %w", err)
	}
	if pub, ok := g.root.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(g.rootKey.Public()) {
		return nil, errors.New("root key does not match the root")
	}
	if pub, ok := g.inter.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(g.interKey.Public()) {
		return nil, errors.New("intermediate key does not match the intermediate")
	}
	if !g.root.IsCA || !g.inter.IsCA {
		return nil, errors.New("not CA certificates")
	}
	if err := g.inter.CheckSignatureFrom(g.root); err != nil {
		return nil, fmt.Errorf("intermediate not signed by the root: %w", err)
	}
	return &g, nil
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// CertInfo describes a CA certificate for display.
type CertInfo struct {
	// Role is "current" outside a rotation; during one, "old" or "new".
	Role string `json:"role"`
	// Fingerprint is the SHA-256 of the DER certificate, hex.
	Fingerprint string    `json:"fingerprint"`
	Subject     string    `json:"subject"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
}

// Status is the CA's state, for `trellis ca status`.
type Status struct {
	Phase Phase `json:"phase"`
	// TrustVersion is what sidecars compare theirs with (see TrustVersion).
	TrustVersion string `json:"trust_version"`
	// Roots are the trust bundle, in order.
	Roots []CertInfo `json:"roots"`
	// Intermediates are the current one and, during a rotation, the new one.
	Intermediates []CertInfo `json:"intermediates"`
	// Signing is the fingerprint of the intermediate that signs now.
	Signing string `json:"signing"`
}

// Status returns the CA's state.
func (ca *CA) Status() Status {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	signer, _ := ca.signerLocked()
	st := Status{
		Phase:        ca.phase,
		TrustVersion: ca.trustVersionLocked(),
		Signing:      Fingerprint(signer),
	}
	if ca.next == nil {
		st.Roots = []CertInfo{info("current", ca.root)}
		st.Intermediates = []CertInfo{info("current", ca.inter)}
		return st
	}
	st.Roots = []CertInfo{info("old", ca.root), info("new", ca.next.root)}
	st.Intermediates = []CertInfo{info("old", ca.inter), info("new", ca.next.inter)}
	return st
}

// Fingerprint returns the SHA-256 of c's DER encoding, hex.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

func info(role string, c *x509.Certificate) CertInfo {
	return CertInfo{Role: role, Fingerprint: Fingerprint(c), Subject: c.Subject.String(), NotBefore: c.NotBefore, NotAfter: c.NotAfter}
}
