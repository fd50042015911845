package kube

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/trellis-mesh/trellis/internal/model"
)

func obj(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON([]byte(doc)); err != nil { // as client-go decodes
		t.Fatal(err)
	}
	return u
}

// roundTrip stores a status as the API server does (JSON), so that a second
// desiredStatus sees what a real read returns.
func roundTrip(t *testing.T, u *unstructured.Unstructured, status map[string]any) *unstructured.Unstructured {
	t.Helper()
	u = u.DeepCopy()
	u.Object["status"] = status
	b, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	return obj(t, string(b))
}

// TestDesiredStatusSettles: a status written is the status wanted, so the
// writer writes each object once per change, never in a loop; a condition whose
// status stays keeps its transition time, and one that flips gets a new one.
func TestDesiredStatusSettles(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	u := obj(t, `{"apiVersion":"split.smi-spec.io/v1alpha2","kind":"TrafficSplit","metadata":{"name":"s","namespace":"shop","generation":3},"spec":{}}`)
	bad := []model.Problem{{Object: "TrafficSplit shop/s", Field: "spec.backends", Message: "at least one backend is required: list the services that share the traffic"}}

	st, changed := desiredStatus(u, bad, t0)
	if !changed {
		t.Fatal("no status yet, and desiredStatus says nothing changes")
	}
	want := map[string]any{"conditions": []any{map[string]any{
		"type": "Accepted", "status": "False", "reason": "Invalid", "observedGeneration": int64(3), "lastTransitionTime": "2026-12-01T10:00:00Z",
		"message": "left out: TrafficSplit shop/s: spec.backends: at least one backend is required: list the services that share the traffic",
	}}}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
	u = roundTrip(t, u, st)
	if _, changed := desiredStatus(u, bad, t0.Add(time.Hour)); changed {
		t.Error("the same problems, an hour later: desiredStatus wants another write")
	}

	// Fixed, with a warning: Accepted flips (new time), Warning appears.
	warn := []model.Problem{{Object: "TrafficSplit shop/s", Field: "spec.x", Message: "accepted and stored; not used by Trellis yet", Warning: true}}
	st, changed = desiredStatus(u, warn, t0.Add(2*time.Hour))
	if !changed {
		t.Fatal("problems fixed, and desiredStatus says nothing changes")
	}
	conds := st["conditions"].([]any)
	if len(conds) != 2 {
		t.Fatalf("conditions %v, want Accepted and Warning", conds)
	}
	acc, w := conds[0].(map[string]any), conds[1].(map[string]any)
	if acc["status"] != "True" || acc["lastTransitionTime"] != "2026-12-01T12:00:00Z" {
		t.Errorf("Accepted = %v, want True since 12:00", acc)
	}
	if w["type"] != "Warning" || w["status"] != "True" || w["message"] != "TrafficSplit shop/s: spec.x: accepted and stored; not used by Trellis yet" {
		t.Errorf("Warning = %v", w)
	}
	u = roundTrip(t, u, st)
	if _, changed := desiredStatus(u, warn, t0.Add(3*time.Hour)); changed {
		t.Error("after the write, desiredStatus wants another")
	}
}

// TestRouteParentStatus: a Gateway API route gets Trellis's status under each
// Service parent, keeps another controller's entry, and writes none for a
// Gateway parent.
func TestRouteParentStatus(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	u := obj(t, `{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"r","namespace":"shop","generation":1},
		"spec":{"parentRefs":[{"group":"","kind":"Service","name":"web","port":8080},{"name":"gw"}]},
		"status":{"parents":[{"controllerName":"example.com/gateway","parentRef":{"name":"gw"},"conditions":[{"type":"Accepted","status":"True"}]}]}}`)
	st, changed := desiredStatus(u, nil, t0)
	if !changed {
		t.Fatal("no Trellis status yet, and desiredStatus says nothing changes")
	}
	parents := st["parents"].([]any)
	if len(parents) != 2 {
		t.Fatalf("parents %v, want the gateway's and one for Service web", parents)
	}
	if p := parents[0].(map[string]any); p["controllerName"] != "example.com/gateway" {
		t.Errorf("the other controller's entry is gone: %v", parents[0])
	}
	p := parents[1].(map[string]any)
	if p["controllerName"] != ControllerName || p["parentRef"].(map[string]any)["name"] != "web" {
		t.Errorf("Trellis's entry = %v", p)
	}
	if c := p["conditions"].([]any)[0].(map[string]any); c["type"] != "Accepted" || c["status"] != "True" {
		t.Errorf("condition = %v, want Accepted True", c)
	}
	u = roundTrip(t, u, st)
	if _, changed := desiredStatus(u, nil, t0.Add(time.Minute)); changed {
		t.Error("after the write, desiredStatus wants another")
	}
}

// TestJoinCaps: a condition message stays bounded however many problems an
// object has, and says how many were left out.
func TestJoinCaps(t *testing.T) {
	var ps []model.Problem
	for range 500 {
		ps = append(ps, model.Problem{Object: "TrafficSplit shop/s", Field: "spec.backends[0].service", Message: "backend \"x\" is not a service in namespace shop; create it or remove the backend"})
	}
	got := join(ps)
	if len(got) > maxMessage+80 {
		t.Errorf("message is %d characters, want about %d at most", len(got), maxMessage)
	}
	if !cmp.Equal(got[len(got)-len("(trellis check lists them all)"):], "(trellis check lists them all)") {
		t.Errorf("message does not say more were left out: ...%s", got[len(got)-60:])
	}
}
