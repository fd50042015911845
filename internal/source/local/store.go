// Package local is the source of local (single-machine) mode: a store in a state
// directory holding the resources applied with `trellis apply` and the workloads
// that `trellis run` registers, with their join tokens. It validates every change
// against the whole mesh before keeping it, persists atomically, and builds model
// snapshots. Only the control plane imports it.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/translate"
)

// storeFile is the store's file inside the state directory.
const storeFile = "store.json"

// Options configure a Store.
type Options struct {
	// Dir is the state directory; created with mode 0700 if missing.
	Dir string
	// Grace is how long after start a registered, ready workload counts as alive
	// before its sidecar has reconnected; default 15s.
	Grace time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// ObserveBuild, if set, is told how long each snapshot build took
	// (translation and model.Build), under the store's lock: keep it cheap.
	ObserveBuild func(time.Duration)
}

// Store keeps resources and registrations. It is safe for concurrent use.
type Store struct {
	opts    Options
	started time.Time
	changes chan struct{}

	mu        sync.Mutex
	resources map[string]translate.Resource // by Ref
	workloads map[string]*record            // by ID
	connected map[string]int                // open inbound streams by workload ID
	seen      map[string]bool               // workloads whose sidecar connected since Open
	snap      *model.Snapshot
	found     []model.Problem // what translation found in the stored resources
}

// record is a registration as persisted.
type record struct {
	Workload  model.Workload `json:"workload"`
	TokenHash string         `json:"tokenHash"`
	Created   time.Time      `json:"created"`
}

type fileFormat struct {
	Resources []translate.Resource `json:"resources"`
	Workloads []*record            `json:"workloads"`
}

// Open loads the store in opts.Dir, or starts an empty one.
func Open(opts Options) (*Store, error) {
	if opts.Grace == 0 {
		opts.Grace = 15 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	s := &Store{
		opts:      opts,
		started:   opts.Now(),
		changes:   make(chan struct{}, 1),
		resources: map[string]translate.Resource{},
		workloads: map[string]*record{},
		connected: map[string]int{},
		seen:      map[string]bool{},
	}
	b, err := os.ReadFile(filepath.Join(opts.Dir, storeFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read store: %w", err)
	default:
		var f fileFormat
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("store %s is corrupt: %w; move it aside to start empty", filepath.Join(opts.Dir, storeFile), err)
		}
		for _, r := range f.Resources {
			s.resources[r.Ref()] = r
		}
		for _, w := range f.Workloads {
			s.workloads[w.Workload.ID] = w
		}
	}
	s.rebuildLocked()
	return s, nil
}

// Changes signals (coalesced) whenever the snapshot may have changed.
func (s *Store) Changes() <-chan struct{} { return s.changes }

// Snapshot returns the current snapshot.
func (s *Store) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Action says what applying did to one object.
type Action string

// Actions of Apply and Delete.
const (
	Created    Action = "created"
	Configured Action = "configured"
	Unchanged  Action = "unchanged"
	Deleted    Action = "deleted"
)

// Change is the outcome for one object.
type Change struct {
	Object string `json:"object"`
	Action Action `json:"action"`
}

// Result is the outcome of Apply or Delete.
type Result struct {
	Changes  []Change        `json:"changes"`
	Warnings []model.Problem `json:"warnings,omitempty"`
}

// InvalidError rejects a change; nothing was stored.
type InvalidError struct{ Problems []model.Problem }

func (e *InvalidError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "\n")
}

// Apply validates rs together with everything stored and keeps them, all or
// nothing. Applying the same objects twice changes nothing.
func (s *Store) Apply(rs []translate.Resource) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]translate.Resource, len(s.resources)+len(rs))
	for k, v := range s.resources {
		next[k] = v
	}
	applied := map[string]bool{}
	var res Result
	for _, r := range rs {
		ref := r.Ref()
		if applied[ref] {
			return Result{}, &InvalidError{[]model.Problem{{Object: ref, Message: "appears twice in the input; keep one"}}}
		}
		applied[ref] = true
		act := Created
		if old, ok := s.resources[ref]; ok {
			act = Configured
			if string(old.Raw) == string(r.Raw) {
				act = Unchanged
			}
		}
		next[ref] = r
		res.Changes = append(res.Changes, Change{Object: ref, Action: act})
	}
	// A problem is the change's fault if it names an applied object, or if it
	// is new: a stored object that the change would push aside (a second
	// TrafficSplit of one service, a second MeshConfig) is named by a problem
	// that was not there before.
	known := map[model.Problem]bool{}
	_, oldErrs, _ := translate.Translate(values(s.resources))
	for _, p := range append(oldErrs, s.snap.Problems()...) {
		known[p] = true
	}
	objs, errs, warns := translate.Translate(values(next))
	var bad []model.Problem
	for _, p := range errs {
		if applied[p.Object] || !known[p] {
			bad = append(bad, p)
		}
	}
	if len(bad) == 0 {
		snap := model.Build(s.inputsLocked(objs))
		for _, p := range snap.Problems() {
			switch {
			case !applied[p.Object] && known[p]:
			case p.Warning:
				warns = append(warns, p) // reported, accepted
			default:
				bad = append(bad, p)
			}
		}
	}
	if len(bad) > 0 {
		return Result{}, &InvalidError{bad}
	}
	for _, p := range warns {
		if applied[p.Object] || p.Warning {
			res.Warnings = append(res.Warnings, p)
		}
	}
	old := s.resources
	s.resources = next
	if err := s.saveLocked(); err != nil {
		s.resources = old
		return Result{}, err
	}
	s.rebuildLocked()
	return res, nil
}

// Delete removes the named objects ("Kind namespace/name"); missing ones are an
// error and nothing is removed.
func (s *Store) Delete(refs []string) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []model.Problem
	for _, ref := range refs {
		if _, ok := s.resources[ref]; !ok {
			missing = append(missing, model.Problem{Object: ref, Message: "not found; `trellis get` lists what is stored"})
		}
	}
	if len(missing) > 0 {
		return Result{}, &InvalidError{missing}
	}
	old := make(map[string]translate.Resource, len(s.resources))
	var res Result
	for k, v := range s.resources {
		old[k] = v
	}
	for _, ref := range refs {
		delete(s.resources, ref)
		res.Changes = append(res.Changes, Change{Object: ref, Action: Deleted})
	}
	if err := s.saveLocked(); err != nil {
		s.resources = old
		return Result{}, err
	}
	s.rebuildLocked()
	return res, nil
}

// Resources returns what is stored, sorted by reference.
func (s *Store) Resources() []translate.Resource {
	s.mu.Lock()
	defer s.mu.Unlock()
	return values(s.resources)
}

// Registration asks to add a workload.
type Registration struct {
	Name         string                    `json:"name"`
	Namespace    string                    `json:"namespace"`
	Account      string                    `json:"account"`
	Services     []model.ServiceMembership `json:"services"`
	Address      string                    `json:"address"`
	AdminAddress string                    `json:"adminAddress"`
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func (r Registration) validate() error {
	var errs []string
	check := func(field, v string) {
		if !dnsLabel.MatchString(v) {
			errs = append(errs, fmt.Sprintf("%s %q must be a DNS label (lower-case letters, digits and '-')", field, v))
		}
	}
	check("namespace", r.Namespace)
	check("account", r.Account)
	check("name", r.Name)
	for _, m := range r.Services {
		check("service", m.Service)
		if m.ServicePort < 1 || m.ServicePort > 65535 {
			errs = append(errs, fmt.Sprintf("service %s: port %d is not from 1 to 65535", m.Service, m.ServicePort))
		}
		if _, err := model.ParseProtocol(string(m.Protocol)); err != nil {
			errs = append(errs, fmt.Sprintf("service %s: %v", m.Service, err))
		}
	}
	if r.Address == "" {
		errs = append(errs, "address (the sidecar's inbound host:port) is required")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// Register adds a workload and returns its ID and a join token that can obtain
// its identity, and only its identity. The workload takes no traffic until
// SetReady.
func (s *Store) Register(r Registration) (id, token string, err error) {
	if err := r.validate(); err != nil {
		return "", "", fmt.Errorf("registration of %s/%s refused: %w", r.Namespace, r.Name, err)
	}
	token, hash, err := identity.NewToken()
	if err != nil {
		return "", "", err
	}
	// The protocol is matched in any case; keep the one spelling the model
	// and the sidecars use.
	services := make([]model.ServiceMembership, len(r.Services))
	for i, m := range r.Services {
		if m.Protocol != "" {
			m.Protocol, _ = model.ParseProtocol(string(m.Protocol)) // validated above
		}
		services[i] = m
	}
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", "", err
	}
	id = r.Namespace + "/" + r.Name + "-" + hex.EncodeToString(suffix[:])
	rec := &record{
		Workload: model.Workload{
			ID: id, Name: r.Name,
			Identity:     model.Identity{Namespace: r.Namespace, Account: r.Account},
			Services:     services,
			Address:      r.Address,
			AdminAddress: r.AdminAddress,
		},
		TokenHash: hash,
		Created:   s.opts.Now(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.workloads[id] = rec
	if err := s.saveLocked(); err != nil {
		delete(s.workloads, id)
		return "", "", err
	}
	s.rebuildLocked()
	return id, token, nil
}

// ErrNoWorkload is returned for an unknown workload ID.
var ErrNoWorkload = errors.New("no such workload")

// SetReady marks a workload ready (taking traffic) or not.
func (s *Store) SetReady(id string, ready bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.workloads[id]
	if !ok {
		return fmt.Errorf("workload %q: %w", id, ErrNoWorkload)
	}
	if rec.Workload.Ready == ready {
		return nil
	}
	rec.Workload.Ready = ready
	if err := s.saveLocked(); err != nil {
		rec.Workload.Ready = !ready
		return err
	}
	s.rebuildLocked()
	return nil
}

// Deregister removes a workload; its token stops working.
func (s *Store) Deregister(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.workloads[id]
	if !ok {
		return fmt.Errorf("workload %q: %w", id, ErrNoWorkload)
	}
	delete(s.workloads, id)
	if err := s.saveLocked(); err != nil {
		s.workloads[id] = rec
		return err
	}
	s.rebuildLocked()
	return nil
}

// WorkloadStatus is a registration as listed.
type WorkloadStatus struct {
	model.Workload
	Connected bool      `json:"connected"`
	Created   time.Time `json:"created"`
}

// Workloads lists registrations, sorted by ID.
func (s *Store) Workloads() []WorkloadStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WorkloadStatus, 0, len(s.workloads))
	for _, r := range s.workloads {
		out = append(out, WorkloadStatus{Workload: r.Workload, Connected: s.connected[r.Workload.ID] > 0, Created: r.Created})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Authenticate maps a join token to the identity it was minted for.
func (s *Store) Authenticate(_ context.Context, token string) (model.Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.workloads {
		if identity.TokenMatches(token, r.TokenHash) {
			return r.Workload.Identity, nil
		}
	}
	return model.Identity{}, errors.New("unknown or revoked join token")
}

// Connected records that a workload's sidecar opened its inbound stream.
func (s *Store) Connected(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected[id]++
	s.seen[id] = true
	if s.connected[id] == 1 {
		s.rebuildLocked()
	}
}

// Disconnected records that a workload's sidecar closed its inbound stream.
func (s *Store) Disconnected(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected[id]--
	if s.connected[id] <= 0 {
		delete(s.connected, id)
		s.rebuildLocked()
	}
}

// GraceOver rebuilds the snapshot once the start-up grace has passed, so that
// workloads whose sidecars never came back stop receiving traffic.
func (s *Store) GraceOver() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rebuildLocked()
}

// Grace returns the start-up grace period.
func (s *Store) Grace() time.Duration { return s.opts.Grace }

func (s *Store) inputsLocked(objs translate.Objects) model.Inputs {
	in := model.Inputs{
		// Services get virtual addresses, which workloads under transparent
		// capture (trellis run --isolation netns) resolve their names to.
		VirtualAddresses: model.LocalVirtualAddresses,
		Mesh:             objs.Mesh,
		Splits:           objs.Splits,
		Targets:          objs.Targets,
		RouteGroups:      objs.RouteGroups,
		TCPRoutes:        objs.TCPRoutes,
		Routes:           objs.Routes,
	}
	inGrace := s.opts.Now().Sub(s.started) < s.opts.Grace
	for _, r := range s.workloads {
		w := r.Workload
		// The grace is for sidecars to reconnect: one that connected since
		// Open and went away again is gone.
		w.Ready = w.Ready && (s.connected[w.ID] > 0 || inGrace && !s.seen[w.ID])
		in.Workloads = append(in.Workloads, w)
	}
	return in
}

// Problems returns what translation found in the stored resources (warnings
// about fields accepted but not used, say) and the snapshot's own problems.
func (s *Store) Problems() []model.Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(append([]model.Problem{}, s.found...), s.snap.Problems()...)
}

func (s *Store) rebuildLocked() {
	start := time.Now()
	objs, errs, warns := translate.Translate(values(s.resources))
	s.found = s.found[:0]
	s.found = append(s.found, errs...)
	for _, w := range warns {
		w.Warning = true
		s.found = append(s.found, w)
	}
	snap := model.Build(s.inputsLocked(objs))
	if s.opts.ObserveBuild != nil {
		s.opts.ObserveBuild(time.Since(start))
	}
	if s.snap != nil && s.snap.Hash() == snap.Hash() {
		return
	}
	s.snap = snap
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

func (s *Store) saveLocked() error {
	f := fileFormat{Resources: values(s.resources)}
	for _, r := range s.workloads {
		f.Workloads = append(f.Workloads, r)
	}
	sort.Slice(f.Workloads, func(i, j int) bool { return f.Workloads[i].Workload.ID < f.Workloads[j].Workload.ID })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(s.opts.Dir, storeFile), b, 0o600)
}

// WriteFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path, so a crash leaves either the old or the new content.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func values(m map[string]translate.Resource) []translate.Resource {
	out := make([]translate.Resource, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref() < out[j].Ref() })
	return out
}
