package kube

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"

	"github.com/trellis-mesh/trellis/internal/model"
)

// Status conditions Trellis writes on the custom resources it reads. Every
// object gets Accepted: True when it is in force, False (reason Invalid) when
// it is left out; an object in force with warnings (fields accepted but not
// used, how it combines with others) also gets Warning: True. The messages are
// the same as `trellis apply` prints in local mode: object, field and fix.
const (
	ConditionAccepted = "Accepted"
	ConditionWarning  = "Warning"

	ReasonAccepted = "Accepted"
	ReasonInvalid  = "Invalid"
	ReasonWarnings = "Warnings"

	// Gateway API routes carry their conditions per parent, under this
	// controller name; a route accepted with warnings gets PartiallyInvalid.
	ControllerName            = "trellis.io/mesh"
	conditionPartiallyInvalid = "PartiallyInvalid"
	reasonUnsupportedValue    = "UnsupportedValue"

	maxMessage = 4096 // characters of a condition's message
)

// statusTarget is one custom object and the problems that name it.
type statusTarget struct {
	kind, namespace, name string
	problems              []model.Problem
}

// statusWriter keeps status.conditions of the custom resources in step with
// the latest snapshot's problems. It runs on its own goroutine and takes only
// the latest set of targets, so the source never waits for the API server; it
// writes an object only when its status would change, so its own writes,
// which the informers see, settle at once.
type statusWriter struct {
	src    *Source
	dyn    dynamic.Interface
	log    *slog.Logger
	now    func() time.Time
	signal chan struct{}

	mu     sync.Mutex
	latest []statusTarget

	// running is held while run runs: at most one run at a time, and one
	// can wait for a stopped run's last write (leader.go).
	running sync.Mutex

	forbidden atomic.Bool
}

func newStatusWriter(s *Source) *statusWriter {
	return &statusWriter{src: s, dyn: s.o.Dynamic, log: s.o.Logger.With("part", "status"), now: time.Now, signal: make(chan struct{}, 1)}
}

// offer replaces the pending targets; it never blocks.
func (w *statusWriter) offer(ts []statusTarget) {
	w.mu.Lock()
	w.latest = ts
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// run writes the latest targets at each offer until ctx ends. It starts with a
// pass over the latest targets, offered or not: a replica that wins the Lease
// back may have stopped in the middle of a pass, or have had writes fail, and
// each object is compared with the status it has now (the informer's copy, in
// which the other replica's writes have arrived), so that only what differs is
// written.
func (w *statusWriter) run(ctx context.Context) {
	w.running.Lock()
	defer w.running.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.signal:
		}
		w.mu.Lock()
		ts := w.latest
		w.mu.Unlock()
		for _, t := range ts {
			if ctx.Err() != nil {
				return
			}
			w.write(ctx, t)
		}
	}
}

// write brings one object's status up to date, from the informer's copy.
func (w *statusWriter) write(ctx context.Context, t statusTarget) {
	lister := w.src.custom[t.kind]
	gvr, ok := w.src.gvrs[t.kind]
	if lister == nil || !ok {
		return
	}
	obj, err := lister.ByNamespace(t.namespace).Get(t.name)
	if err != nil {
		return // deleted since
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	status, changed := desiredStatus(u, t.problems, w.now())
	if !changed {
		return
	}
	u = u.DeepCopy()
	u.Object["status"] = status
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = w.dyn.Resource(gvr).Namespace(t.namespace).UpdateStatus(cctx, u, metav1.UpdateOptions{FieldManager: "trellis"})
	switch {
	case err == nil:
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		// Changed or gone since the informer saw it: its event brings a
		// rebuild, and this object comes round again.
	case apierrors.IsForbidden(err):
		if w.forbidden.CompareAndSwap(false, true) { // once: every object would say it
			w.log.Warn("status conditions not written: the control plane may not update custom resources' status; apply the ClusterRole of this version (trellis install)", "object", t.kind+" "+t.namespace+"/"+t.name, "err", err)
		}
	default:
		w.log.Warn("status not written", "object", t.kind+" "+t.namespace+"/"+t.name, "err", err)
	}
}

// targets lists every custom object the source holds with the problems that
// name it ("Kind namespace/name").
func (s *Source) targets(problems []model.Problem) []statusTarget {
	by := map[string][]model.Problem{}
	for _, p := range problems {
		by[p.Object] = append(by[p.Object], p)
	}
	var out []statusTarget
	for _, kind := range sortedKeys(s.custom) {
		objs, err := s.custom[kind].List(labels.Everything())
		if err != nil {
			continue
		}
		for _, o := range objs {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			ref := kind + " " + u.GetNamespace() + "/" + u.GetName()
			out = append(out, statusTarget{kind: kind, namespace: u.GetNamespace(), name: u.GetName(), problems: by[ref]})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.kind != b.kind {
			return a.kind < b.kind
		}
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		return a.name < b.name
	})
	return out
}

// desiredStatus returns the status u should have given its problems, and
// whether it differs from the status it has. Conditions whose status stays
// keep their lastTransitionTime. Gateway API routes get one entry per Service
// parent under status.parents (other controllers' entries are kept); every
// other kind gets status.conditions.
func desiredStatus(u *unstructured.Unstructured, problems []model.Problem, now time.Time) (map[string]any, bool) {
	cur, _ := u.Object["status"].(map[string]any)
	want := map[string]any{}
	for k, v := range cur {
		want[k] = v
	}
	gen := u.GetGeneration()
	if isRoute(u.GetKind()) {
		parents := routeParents(u, problems, gen, now)
		if _, had := cur["parents"]; had || len(parents) > 0 {
			want["parents"] = parents
		}
	} else {
		old, _ := want["conditions"].([]any)
		want["conditions"] = conditions(problems, gen, old, now)
	}
	return want, !sameJSON(cur, want)
}

func isRoute(kind string) bool {
	return kind == string(model.RouteKindHTTP) || kind == string(model.RouteKindGRPC)
}

// conditions are the Accepted (and Warning) conditions for problems.
func conditions(problems []model.Problem, gen int64, old []any, now time.Time) []any {
	errs, warns := split(problems)
	var out []any
	if len(errs) > 0 {
		out = append(out, condition(ConditionAccepted, "False", ReasonInvalid, "left out: "+join(errs), gen, old, now))
	} else {
		out = append(out, condition(ConditionAccepted, "True", ReasonAccepted, "in force", gen, old, now))
		if len(warns) > 0 {
			out = append(out, condition(ConditionWarning, "True", ReasonWarnings, join(warns), gen, old, now))
		}
	}
	return out
}

// routeParents keeps other controllers' parent statuses and sets Trellis's for
// each Service parentRef of the route's spec.
func routeParents(u *unstructured.Unstructured, problems []model.Problem, gen int64, now time.Time) []any {
	var out []any
	oldByRef := map[string][]any{}
	if st, ok := u.Object["status"].(map[string]any); ok {
		ps, _ := st["parents"].([]any)
		for _, p := range ps {
			m, ok := p.(map[string]any)
			if !ok {
				continue
			}
			if m["controllerName"] != ControllerName {
				out = append(out, p)
				continue
			}
			ref, _ := m["parentRef"].(map[string]any)
			old, _ := m["conditions"].([]any)
			oldByRef[refKey(ref)] = old
		}
	}
	errs, warns := split(problems)
	refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
	for _, r := range refs {
		ref, ok := r.(map[string]any)
		if !ok {
			continue
		}
		if k, _ := ref["kind"].(string); k != "Service" {
			continue // a Gateway's parent status is its controller's to write
		}
		if g, _ := ref["group"].(string); g != "" && g != "core" {
			continue
		}
		old := oldByRef[refKey(ref)]
		var conds []any
		if len(errs) > 0 {
			conds = append(conds, condition(ConditionAccepted, "False", reasonUnsupportedValue, "left out: "+join(errs), gen, old, now))
		} else {
			conds = append(conds, condition(ConditionAccepted, "True", ReasonAccepted, "in force for mesh traffic to this Service", gen, old, now))
			if len(warns) > 0 {
				conds = append(conds, condition(conditionPartiallyInvalid, "True", reasonUnsupportedValue, join(warns), gen, old, now))
			}
		}
		out = append(out, map[string]any{"parentRef": ref, "controllerName": ControllerName, "conditions": conds})
	}
	if out == nil {
		out = []any{}
	}
	return out
}

func refKey(ref map[string]any) string {
	b, _ := json.Marshal(ref)
	return string(b)
}

// condition makes one condition, keeping the lastTransitionTime of the old
// condition of its type when its status did not change.
func condition(typ, status, reason, msg string, gen int64, old []any, now time.Time) map[string]any {
	since := now.UTC().Format(time.RFC3339)
	for _, o := range old {
		m, ok := o.(map[string]any)
		if ok && m["type"] == typ && m["status"] == status {
			if t, ok := m["lastTransitionTime"].(string); ok && t != "" {
				since = t
			}
		}
	}
	return map[string]any{
		"type": typ, "status": status, "reason": reason, "message": msg,
		"observedGeneration": gen, "lastTransitionTime": since,
	}
}

func split(problems []model.Problem) (errs, warns []model.Problem) {
	// In a fixed order, so that the same problems always give the same
	// message and an unchanged object is never written again.
	problems = append([]model.Problem(nil), problems...)
	sort.SliceStable(problems, func(i, j int) bool {
		if problems[i].Field != problems[j].Field {
			return problems[i].Field < problems[j].Field
		}
		return problems[i].Message < problems[j].Message
	})
	for _, p := range problems {
		if p.Warning {
			warns = append(warns, p)
		} else {
			errs = append(errs, p)
		}
	}
	return errs, warns
}

// join writes problems as one message: each names the object, the field and
// the fix, as `trellis apply` prints them.
func join(ps []model.Problem) string {
	var b strings.Builder
	for i, p := range ps {
		line := p.Error()
		if i > 0 {
			line = "; " + line
		}
		if b.Len()+len(line) > maxMessage {
			b.WriteString("; and " + strconv.Itoa(len(ps)-i) + " more (trellis check lists them all)")
			break
		}
		b.WriteString(line)
	}
	return b.String()
}

// sameJSON compares two values as the API server would store them.
func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
