package local_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/source/translate"
)

// examples is where the bookstore demo's manifests live.
var examples = filepath.Join("..", "..", "..", "examples", "bookstore")

// exampleFile decodes one of the bookstore demo's manifests.
func exampleFile(t *testing.T, name string) []translate.Resource {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examples, name))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := translate.Decode(b, name)
	if err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	return rs
}

// decode decodes inline YAML.
func decode(t *testing.T, yaml string) []translate.Resource {
	t.Helper()
	rs, err := translate.Decode([]byte(yaml), "test")
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return rs
}

func refs(rs []translate.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Ref()
	}
	return out
}

// clock is a controllable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func open(t *testing.T, opts local.Options) *local.Store {
	t.Helper()
	s, err := local.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// The bookstore demo's workloads.
var (
	bookstoreV1 = local.Registration{Name: "bookstore-v1", Namespace: "bookstore", Account: "bookstore",
		Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v1", ServicePort: 14001}},
		Address:  "127.0.0.1:20001", AdminAddress: "127.0.0.1:21001"}
	bookstoreV2 = local.Registration{Name: "bookstore-v2", Namespace: "bookstore", Account: "bookstore-v2",
		Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v2", ServicePort: 14001}},
		Address:  "127.0.0.1:20002", AdminAddress: "127.0.0.1:21002"}
	bookwarehouse = local.Registration{Name: "bookwarehouse", Namespace: "bookwarehouse", Account: "bookwarehouse",
		Services: []model.ServiceMembership{{Service: "bookwarehouse", ServicePort: 14001}},
		Address:  "127.0.0.1:20003", AdminAddress: "127.0.0.1:21003"}
	bookbuyer = local.Registration{Name: "bookbuyer", Namespace: "bookbuyer", Account: "bookbuyer",
		Address: "127.0.0.1:20004", AdminAddress: "127.0.0.1:21004"}
)

// registered is a workload the test registered, with its token.
type registered struct{ id, token string }

func register(t *testing.T, s *local.Store, regs ...local.Registration) []registered {
	t.Helper()
	var out []registered
	for _, r := range regs {
		id, token, err := s.Register(r)
		if err != nil {
			t.Fatalf("Register(%s/%s): %v", r.Namespace, r.Name, err)
		}
		out = append(out, registered{id, token})
	}
	return out
}

// bookstoreStore is a store with the demo's workloads registered, so that the
// TrafficSplit's services exist.
func bookstoreStore(t *testing.T, opts local.Options) (*local.Store, []registered) {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s := open(t, opts)
	return s, register(t, s, bookstoreV1, bookstoreV2, bookwarehouse, bookbuyer)
}

func changes(rs []translate.Resource, a local.Action) []local.Change {
	out := make([]local.Change, len(rs))
	for i, r := range rs {
		out[i] = local.Change{Object: r.Ref(), Action: a}
	}
	return out
}

func splitWeights(t *testing.T, snap *model.Snapshot) []model.WeightedBackend {
	t.Helper()
	sp, ok := snap.Split(model.Key{Namespace: "bookstore", Name: "bookstore"})
	if !ok {
		t.Fatal("snapshot has no split of bookstore/bookstore")
	}
	return sp.Backends
}

func TestApply(t *testing.T) {
	s, _ := bookstoreStore(t, local.Options{})
	access := exampleFile(t, "traffic-access.yaml")
	split50 := exampleFile(t, "traffic-split-50-50.yaml")
	permissive := exampleFile(t, "mesh-config-permissive.yaml")
	all := append(append(append([]translate.Resource(nil), access...), split50...), permissive...)

	steps := []struct {
		name  string
		apply []translate.Resource
		want  []local.Change
		check func(t *testing.T, snap *model.Snapshot)
	}{
		{
			name:  "creates",
			apply: all,
			want:  changes(all, local.Created),
			check: func(t *testing.T, snap *model.Snapshot) {
				want := []model.WeightedBackend{{Service: "bookstore-v1", Weight: 50}, {Service: "bookstore-v2", Weight: 50}}
				if d := cmp.Diff(want, splitWeights(t, snap)); d != "" {
					t.Errorf("split backends (-want +got):\n%s", d)
				}
				if got := len(snap.TargetsFor(model.Identity{Namespace: "bookstore", Account: "bookstore"})); got != 1 {
					t.Errorf("got %d TrafficTargets for bookstore/bookstore, want 1", got)
				}
				if _, ok := snap.RouteGroup(model.Key{Namespace: "bookwarehouse", Name: "bookwarehouse-service-routes"}); !ok {
					t.Error("HTTPRouteGroup bookwarehouse/bookwarehouse-service-routes is not in the snapshot")
				}
				if m := snap.Mesh(); !m.Permissive || m.Egress {
					t.Errorf("mesh settings = %+v, want permissive without egress", m)
				}
			},
		},
		{name: "the same again is unchanged", apply: all, want: changes(all, local.Unchanged)},
		{
			name:  "a modified split is configured",
			apply: exampleFile(t, "traffic-split-v1.yaml"),
			want:  []local.Change{{Object: "TrafficSplit bookstore/bookstore-split", Action: local.Configured}},
			check: func(t *testing.T, snap *model.Snapshot) {
				want := []model.WeightedBackend{{Service: "bookstore-v1", Weight: 100}, {Service: "bookstore-v2", Weight: 0}}
				if d := cmp.Diff(want, splitWeights(t, snap)); d != "" {
					t.Errorf("split backends (-want +got):\n%s", d)
				}
			},
		},
		{
			name:  "a modified mesh config is configured, the rest unchanged",
			apply: append(exampleFile(t, "mesh-config-strict.yaml"), access...),
			want: append([]local.Change{{Object: "MeshConfig osm-system/osm-mesh-config", Action: local.Configured}},
				changes(access, local.Unchanged)...),
			check: func(t *testing.T, snap *model.Snapshot) {
				if snap.Mesh().Permissive {
					t.Error("mesh is still permissive after applying the strict MeshConfig")
				}
			},
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			res, err := s.Apply(st.apply)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if d := cmp.Diff(st.want, res.Changes); d != "" {
				t.Errorf("changes (-want +got):\n%s", d)
			}
			want := refs(all)
			sort.Strings(want)
			if d := cmp.Diff(want, refs(s.Resources())); d != "" {
				t.Errorf("stored resources (-want +got):\n%s", d)
			}
			if p := s.Snapshot().Problems(); len(p) > 0 {
				t.Errorf("snapshot problems: %v", p)
			}
			if st.check != nil {
				st.check(t, s.Snapshot())
			}
		})
	}
}

func TestApplyAllOrNothing(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// wantObject is the object the error must name, wantMessage a part of
		// what it says.
		wantObject, wantMessage string
	}{
		{
			name: "invalid field",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: bad-weights, namespace: bookwarehouse}
spec:
  service: bookwarehouse
  backends:
  - {service: bookwarehouse, weight: -1}
`,
			wantObject: "TrafficSplit bookwarehouse/bad-weights", wantMessage: "negative",
		},
		{
			name: "backend no workload registered for",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: v3, namespace: bookwarehouse}
spec:
  service: bookwarehouse
  backends:
  - {service: bookwarehouse, weight: 50}
  - {service: bookwarehouse-v3, weight: 50}
`,
			wantObject: "TrafficSplit bookwarehouse/v3", wantMessage: `backend "bookwarehouse-v3" is not a service`,
		},
		{
			name: "root service no workload registered for",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: nothing, namespace: bookwarehouse}
spec:
  service: nothing
  backends:
  - {service: bookwarehouse, weight: 1}
`,
			wantObject: "TrafficSplit bookwarehouse/nothing", wantMessage: `root service "nothing"`,
		},
		{
			name: "rule naming a missing route group",
			yaml: `
kind: TrafficTarget
apiVersion: access.smi-spec.io/v1alpha3
metadata: {name: dangling, namespace: bookwarehouse}
spec:
  destination: {kind: ServiceAccount, name: bookwarehouse, namespace: bookwarehouse}
  rules:
  - {kind: HTTPRouteGroup, name: no-such-routes}
  sources:
  - {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
`,
			wantObject: "TrafficTarget bookwarehouse/dangling", wantMessage: "no-such-routes",
		},
		{
			name: "the same object twice",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: twice, namespace: bookwarehouse}
spec:
  service: bookwarehouse
  backends:
  - {service: bookwarehouse, weight: 1}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: twice, namespace: bookwarehouse}
spec:
  service: bookwarehouse
  backends:
  - {service: bookwarehouse, weight: 2}
`,
			wantObject: "TrafficSplit bookwarehouse/twice", wantMessage: "appears twice in the input",
		},
		{
			// Sorted first, the new split would win and silently disable the
			// stored one.
			name: "a second split of a split service",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: a-split, namespace: bookstore}
spec:
  service: bookstore
  backends:
  - {service: bookstore-v2, weight: 1}
`,
			wantObject: "TrafficSplit bookstore/a-split", wantMessage: "already splits service",
		},
		{
			name: "a second split of a split service, sorted last",
			yaml: `
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: z-split, namespace: bookstore}
spec:
  service: bookstore
  backends:
  - {service: bookstore-v2, weight: 1}
`,
			wantObject: "TrafficSplit bookstore/z-split", wantMessage: "already splits service",
		},
		{
			name: "a second mesh config",
			yaml: `
apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: another, namespace: osm-system}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: false}
`,
			wantObject: "MeshConfig osm-system/another", wantMessage: "a mesh has one MeshConfig",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := bookstoreStore(t, local.Options{Dir: dir})
			stored := append(exampleFile(t, "traffic-split-50-50.yaml"), exampleFile(t, "mesh-config-permissive.yaml")...)
			if _, err := s.Apply(stored); err != nil {
				t.Fatal(err)
			}
			before := s.Resources()
			snapBefore := s.Snapshot()
			fileBefore, err := os.ReadFile(filepath.Join(dir, "store.json"))
			if err != nil {
				t.Fatal(err)
			}
			<-s.Changes()

			// A valid object in the same batch is not kept either.
			batch := append(exampleFile(t, "traffic-access.yaml"), decode(t, tt.yaml)...)
			res, err := s.Apply(batch)
			var inv *local.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Apply = %+v, %v; want an *InvalidError", res, err)
			}
			t.Logf("error: %v", err)
			named := false
			for _, p := range inv.Problems {
				if p.Object == tt.wantObject || strings.Contains(p.Message, tt.wantObject[strings.IndexByte(tt.wantObject, ' ')+1:]) {
					named = true
				}
			}
			if !named {
				t.Errorf("problems %v do not name %s", inv.Problems, tt.wantObject)
			}
			if !strings.Contains(err.Error(), tt.wantMessage) {
				t.Errorf("error %q does not say %q", err, tt.wantMessage)
			}
			if d := cmp.Diff(before, s.Resources()); d != "" {
				t.Errorf("stored resources changed (-before +after):\n%s", d)
			}
			if s.Snapshot() != snapBefore {
				t.Error("snapshot changed")
			}
			select {
			case <-s.Changes():
				t.Error("Changes signalled after a rejected Apply")
			default:
			}
			fileAfter, err := os.ReadFile(filepath.Join(dir, "store.json"))
			if err != nil {
				t.Fatal(err)
			}
			if string(fileAfter) != string(fileBefore) {
				t.Error("store.json changed after a rejected Apply")
			}
		})
	}
}

func TestApplySplitNeedsRegisteredBackends(t *testing.T) {
	s := open(t, local.Options{Dir: t.TempDir()})
	register(t, s, bookstoreV1) // bookstore and bookstore-v1, but no bookstore-v2
	_, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml"))
	var inv *local.InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("Apply = %v, want an *InvalidError", err)
	}
	want := []model.Problem{{
		Object:  "TrafficSplit bookstore/bookstore-split",
		Field:   "spec.backends[1].service",
		Message: `backend "bookstore-v2" is not a service in namespace bookstore (no workload is registered for it); its share goes to the other backends until it has one: start its workloads or remove the backend`,
	}}
	if d := cmp.Diff(want, inv.Problems); d != "" {
		t.Errorf("problems (-want +got):\n%s", d)
	}
	if got := s.Resources(); len(got) != 0 {
		t.Errorf("stored %v, want nothing", refs(got))
	}

	// Once the backend's workload registers, the same file applies.
	register(t, s, bookstoreV2)
	res, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml"))
	if err != nil {
		t.Fatalf("Apply after registering bookstore-v2: %v", err)
	}
	if d := cmp.Diff([]local.Change{{Object: "TrafficSplit bookstore/bookstore-split", Action: local.Created}}, res.Changes); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
}

func TestDelete(t *testing.T) {
	s, _ := bookstoreStore(t, local.Options{})
	if _, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err := s.Delete([]string{"TrafficSplit bookstore/bookstore-split", "TrafficSplit bookstore/nothing"})
	var inv *local.InvalidError
	if !errors.As(err, &inv) || len(inv.Problems) != 1 || inv.Problems[0].Object != "TrafficSplit bookstore/nothing" {
		t.Fatalf("Delete with a missing object = %v, want an *InvalidError naming it", err)
	}
	if got := len(s.Resources()); got != 1 {
		t.Fatalf("a failed Delete removed objects: %d left, want 1", got)
	}
	res, err := s.Delete([]string{"TrafficSplit bookstore/bookstore-split"})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]local.Change{{Object: "TrafficSplit bookstore/bookstore-split", Action: local.Deleted}}, res.Changes); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
	if _, ok := s.Snapshot().Split(model.Key{Namespace: "bookstore", Name: "bookstore"}); ok {
		t.Error("the deleted split is still in the snapshot")
	}
}

func TestPersistence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // Open creates it
	clk := newClock()
	s, regs := bookstoreStore(t, local.Options{Dir: dir, Now: clk.Now})
	if err := s.SetReady(regs[0].id, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(append(exampleFile(t, "traffic-access.yaml"), exampleFile(t, "traffic-split-50-50.yaml")...)); err != nil {
		t.Fatal(err)
	}

	again := open(t, local.Options{Dir: dir, Now: clk.Now})
	if d := cmp.Diff(s.Resources(), again.Resources()); d != "" {
		t.Errorf("resources after reopening (-before +after):\n%s", d)
	}
	if d := cmp.Diff(s.Workloads(), again.Workloads()); d != "" {
		t.Errorf("workloads after reopening (-before +after):\n%s", d)
	}
	if got, want := again.Snapshot().Hash(), s.Snapshot().Hash(); got != want {
		t.Errorf("snapshot hash after reopening = %s, want %s", got, want)
	}
	if id, err := again.Authenticate(context.Background(), regs[0].token); err != nil || id != (model.Identity{Namespace: "bookstore", Account: "bookstore"}) {
		t.Errorf("Authenticate after reopening = %v, %v; want bookstore/bookstore", id, err)
	}

	for _, c := range []struct {
		name string
		want os.FileMode
	}{{"", 0o700}, {"store.json", 0o600}} {
		fi, err := os.Stat(filepath.Join(dir, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("mode of %q = %v, want %v", filepath.Join(dir, c.name), got, c.want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("state directory holds %v, want store.json only (no temporary files)", names)
	}
	b, err := os.ReadFile(filepath.Join(dir, "store.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		if strings.Contains(string(b), r.token) {
			t.Errorf("store.json holds the join token of %s in clear", r.id)
		}
	}
}

func TestOpenCorrupt(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"garbage", "not json at all"},
		{"truncated", `{"resources": [`},
		{"wrong shape", `{"resources": {"a": 1}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "store.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := local.Open(local.Options{Dir: dir})
			if err == nil {
				t.Fatal("Open of a corrupt store succeeded")
			}
			for _, want := range []string{path, "corrupt", "move it aside"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			// Following the advice works.
			if err := os.Rename(path, path+".bad"); err != nil {
				t.Fatal(err)
			}
			if _, err := local.Open(local.Options{Dir: dir}); err != nil {
				t.Errorf("Open after moving the corrupt store aside: %v", err)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	s, regs := bookstoreStore(t, local.Options{})
	ctx := context.Background()
	v1, v2 := regs[0], regs[1]

	tests := []struct {
		name    string
		token   string
		want    model.Identity
		wantErr bool
	}{
		{name: "bookstore-v1's token", token: v1.token, want: model.Identity{Namespace: "bookstore", Account: "bookstore"}},
		{name: "bookstore-v2's token", token: v2.token, want: model.Identity{Namespace: "bookstore", Account: "bookstore-v2"}},
		{name: "wrong token", token: v1.token + "x", wantErr: true},
		{name: "empty token", token: "", wantErr: true},
		{name: "a workload ID is no token", token: v1.id, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Authenticate(ctx, tt.token)
			if tt.wantErr {
				if err == nil {
					t.Errorf("Authenticate = %v, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Authenticate = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if v1.token == v2.token {
		t.Error("two registrations got the same token")
	}

	if err := s.Deregister(v1.id); err != nil {
		t.Fatal(err)
	}
	if id, err := s.Authenticate(ctx, v1.token); err == nil {
		t.Errorf("after Deregister, the token still gives %v", id)
	}
	if _, err := s.Authenticate(ctx, v2.token); err != nil {
		t.Errorf("after deregistering another workload: %v", err)
	}
	if _, ok := s.Snapshot().Workload(v1.id); ok {
		t.Error("the deregistered workload is still in the snapshot")
	}
	for name, err := range map[string]error{
		"Deregister again":       s.Deregister(v1.id),
		"SetReady of a gone one": s.SetReady(v1.id, true),
		"SetReady of an unknown": s.SetReady("bookstore/nobody-000000", true),
		"Deregister of unknown":  s.Deregister("bookstore/nobody-000000"),
	} {
		if !errors.Is(err, local.ErrNoWorkload) {
			t.Errorf("%s = %v, want ErrNoWorkload", name, err)
		}
	}
}

// endpoint reports whether workload id is an endpoint of bookstore-v1:14001.
func endpoint(s *local.Store, id string) bool {
	for _, w := range s.Snapshot().Endpoints(model.Key{Namespace: "bookstore", Name: "bookstore-v1"}, 14001) {
		if w.ID == id {
			return true
		}
	}
	return false
}

func TestReadiness(t *testing.T) {
	const grace = 10 * time.Second
	clk := newClock()
	dir := t.TempDir()
	s := open(t, local.Options{Dir: dir, Grace: grace, Now: clk.Now})
	if s.Grace() != grace {
		t.Errorf("Grace() = %v, want %v", s.Grace(), grace)
	}
	id := register(t, s, bookstoreV1)[0].id

	steps := []struct {
		name string
		do   func(t *testing.T)
		want bool
	}{
		{"registered, not ready", func(*testing.T) {}, false},
		{"ready, in grace, never connected", func(t *testing.T) {
			if err := s.SetReady(id, true); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"grace still running", func(*testing.T) {
			clk.Advance(grace - time.Second)
			s.GraceOver() // called early: changes nothing
		}, true},
		{"grace over, not connected", func(*testing.T) {
			clk.Advance(2 * time.Second)
			s.GraceOver()
		}, false},
		{"connected", func(*testing.T) { s.Connected(id) }, true},
		{"a second stream", func(*testing.T) { s.Connected(id) }, true},
		{"one of two streams closed", func(*testing.T) { s.Disconnected(id) }, true},
		{"disconnected", func(*testing.T) { s.Disconnected(id) }, false},
		{"reconnected", func(*testing.T) { s.Connected(id) }, true},
		{"not ready while connected", func(t *testing.T) {
			if err := s.SetReady(id, false); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"ready again", func(t *testing.T) {
			if err := s.SetReady(id, true); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do(t)
			if got := endpoint(s, id); got != st.want {
				t.Errorf("endpoint = %v, want %v", got, st.want)
			}
			if _, ok := s.Snapshot().Workload(id); !ok {
				t.Error("the workload is not in the snapshot at all")
			}
		})
	}

	t.Run("restart", func(t *testing.T) {
		// A new store on the same state: the ready workload counts during the
		// grace, so its sidecar has time to reconnect; then only if it did.
		again := open(t, local.Options{Dir: dir, Grace: grace, Now: clk.Now})
		if !endpoint(again, id) {
			t.Error("after restart, in grace: not an endpoint")
		}
		clk.Advance(grace)
		again.GraceOver()
		if endpoint(again, id) {
			t.Error("after restart, grace over, not reconnected: still an endpoint")
		}
		again.Connected(id)
		if !endpoint(again, id) {
			t.Error("after restart, reconnected: not an endpoint")
		}
	})
}

// TestGraceEndsAtDisconnect: the grace is for sidecars to reconnect; a sidecar
// that did connect and then went away is gone, grace or not.
func TestGraceEndsAtDisconnect(t *testing.T) {
	clk := newClock()
	s := open(t, local.Options{Dir: t.TempDir(), Grace: time.Minute, Now: clk.Now})
	id := register(t, s, bookstoreV1)[0].id
	if err := s.SetReady(id, true); err != nil {
		t.Fatal(err)
	}
	s.Connected(id)
	s.Disconnected(id)
	if endpoint(s, id) {
		t.Error("a workload whose sidecar disconnected during the grace is still an endpoint")
	}
}

func TestRegisterValidation(t *testing.T) {
	good := bookstoreV1
	tests := []struct {
		name   string
		change func(r *local.Registration)
		want   []string // parts of the error; none: valid
	}{
		{name: "valid", change: func(*local.Registration) {}},
		{name: "every protocol", change: func(r *local.Registration) {
			r.Services = []model.ServiceMembership{{Service: "a", ServicePort: 1, Protocol: "http"}, {Service: "b", ServicePort: 65535, Protocol: "tcp"},
				{Service: "c", ServicePort: 80, Protocol: "grpc"}, {Service: "d", ServicePort: 81, Protocol: "tcp-server-first"}, {Service: "e", ServicePort: 82}}
		}},
		{name: "no services", change: func(r *local.Registration) { r.Services = nil }},
		{name: "upper-case namespace", change: func(r *local.Registration) { r.Namespace = "Bookstore" },
			want: []string{"registration of Bookstore/bookstore-v1 refused", `namespace "Bookstore" must be a DNS label`}},
		{name: "empty namespace", change: func(r *local.Registration) { r.Namespace = "" },
			want: []string{`namespace "" must be a DNS label`}},
		{name: "namespace with a dot", change: func(r *local.Registration) { r.Namespace = "book.store" },
			want: []string{`namespace "book.store" must be a DNS label`}},
		{name: "account with an underscore", change: func(r *local.Registration) { r.Account = "book_store" },
			want: []string{`account "book_store" must be a DNS label`}},
		{name: "account too long", change: func(r *local.Registration) { r.Account = strings.Repeat("a", 64) },
			want: []string{"account", "must be a DNS label"}},
		{name: "name with a leading dash", change: func(r *local.Registration) { r.Name = "-v1" },
			want: []string{`name "-v1" must be a DNS label`}},
		{name: "service with a slash", change: func(r *local.Registration) { r.Services[0].Service = "book/store" },
			want: []string{`service "book/store" must be a DNS label`}},
		{name: "port zero", change: func(r *local.Registration) { r.Services[0].ServicePort = 0 },
			want: []string{"service bookstore: port 0 is not from 1 to 65535"}},
		{name: "negative port", change: func(r *local.Registration) { r.Services[0].ServicePort = -80 },
			want: []string{"service bookstore: port -80 is not from 1 to 65535"}},
		{name: "port too large", change: func(r *local.Registration) { r.Services[1].ServicePort = 65536 },
			want: []string{"service bookstore-v1: port 65536 is not from 1 to 65535"}},
		{name: "unknown protocol", change: func(r *local.Registration) { r.Services[0].Protocol = "udp" },
			want: []string{"service bookstore:", `unknown protocol "udp"`}},
		{name: "no address", change: func(r *local.Registration) { r.Address = "" },
			want: []string{"address (the sidecar's inbound host:port) is required"}},
		{name: "several problems at once", change: func(r *local.Registration) { r.Namespace, r.Services[0].ServicePort = "NS", 0 },
			want: []string{`namespace "NS"`, "port 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, local.Options{Dir: t.TempDir()})
			<-s.Changes()
			r := good
			r.Services = append([]model.ServiceMembership(nil), good.Services...)
			tt.change(&r)
			id, token, err := s.Register(r)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Register: %v", err)
				}
				if id == "" || token == "" {
					t.Errorf("Register = %q, %q; want an ID and a token", id, token)
				}
				if !strings.HasPrefix(id, r.Namespace+"/"+r.Name+"-") {
					t.Errorf("ID %q does not start with %s/%s-", id, r.Namespace, r.Name)
				}
				return
			}
			if err == nil {
				t.Fatalf("Register = %q, want an error", id)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if got := s.Workloads(); len(got) != 0 {
				t.Errorf("a refused registration was kept: %v", got)
			}
			select {
			case <-s.Changes():
				t.Error("Changes signalled after a refused registration")
			default:
			}
		})
	}
}

// TestRegisterProtocolCase: a protocol is matched in any case, and stored in the
// one spelling the rest of the mesh uses.
func TestRegisterProtocolCase(t *testing.T) {
	s := open(t, local.Options{Dir: t.TempDir()})
	r := bookwarehouse
	r.Services = []model.ServiceMembership{{Service: "bookwarehouse", ServicePort: 14001, Protocol: "GRPC"}}
	register(t, s, r)
	r.Name = "bookwarehouse-2"
	r.Services = []model.ServiceMembership{{Service: "bookwarehouse", ServicePort: 14001, Protocol: "grpc"}}
	register(t, s, r)
	svc, ok := s.Snapshot().Service(model.Key{Namespace: "bookwarehouse", Name: "bookwarehouse"})
	if !ok {
		t.Fatal("no service bookwarehouse/bookwarehouse")
	}
	if d := cmp.Diff([]model.ServicePort{{Port: 14001, Protocol: model.ProtocolGRPC}}, svc.Ports); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	if p := s.Snapshot().Problems(); len(p) > 0 {
		t.Errorf("problems: %v", p)
	}
}

func TestChanges(t *testing.T) {
	clk := newClock()
	s := open(t, local.Options{Dir: t.TempDir(), Grace: time.Second, Now: clk.Now})
	select {
	case <-s.Changes():
	default:
		t.Fatal("Changes did not signal the first snapshot")
	}
	var id string
	steps := []struct {
		name string
		do   func(t *testing.T)
		want bool
	}{
		{"nothing", func(*testing.T) {}, false},
		{"register", func(*testing.T) { id = register(t, s, bookstoreV1, bookstoreV2)[0].id }, true},
		{"set ready", func(t *testing.T) {
			if err := s.SetReady(id, true); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"set ready again", func(t *testing.T) {
			if err := s.SetReady(id, true); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"apply", func(t *testing.T) {
			if _, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml")); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"apply unchanged", func(t *testing.T) {
			if _, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml")); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"grace over", func(*testing.T) {
			clk.Advance(time.Second)
			s.GraceOver()
		}, true},
		{"connected", func(*testing.T) { s.Connected(id) }, true},
		{"disconnected", func(*testing.T) { s.Disconnected(id) }, true},
		{"delete", func(t *testing.T) {
			if _, err := s.Delete([]string{"TrafficSplit bookstore/bookstore-split"}); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"deregister", func(t *testing.T) {
			if err := s.Deregister(id); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := s.Snapshot()
			st.do(t)
			select {
			case <-s.Changes():
				if !st.want {
					t.Error("Changes signalled, want no signal")
				}
				if s.Snapshot() == before {
					t.Error("Changes signalled, but the snapshot is the same")
				}
			default:
				if st.want {
					t.Error("Changes did not signal")
				}
			}
		})
	}

	// Many changes collapse into one signal; nothing blocks without a reader.
	other := id2(t, s)
	s.Connected(other) // not ready yet: no change
	for i := range 10 {
		if err := s.SetReady(other, i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	<-s.Changes()
	select {
	case <-s.Changes():
		t.Error("Changes signalled twice for changes made before one read")
	default:
	}
}

// id2 is the ID of the one workload still registered.
func id2(t *testing.T, s *local.Store) string {
	t.Helper()
	ws := s.Workloads()
	if len(ws) != 1 {
		t.Fatalf("%d workloads, want 1", len(ws))
	}
	return ws[0].ID
}

func TestConcurrentUse(t *testing.T) {
	s := open(t, local.Options{Dir: t.TempDir()})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bookwarehouse
			r.Name = "bookwarehouse-" + string(rune('a'+i))
			id, token, err := s.Register(r)
			if err != nil {
				t.Error(err)
				return
			}
			s.Connected(id)
			if err := s.SetReady(id, true); err != nil {
				t.Error(err)
			}
			if _, err := s.Authenticate(context.Background(), token); err != nil {
				t.Error(err)
			}
			_ = s.Snapshot()
			_ = s.Workloads()
			s.Disconnected(id)
		}()
	}
	wg.Wait()
	if got := len(s.Workloads()); got != 8 {
		t.Errorf("%d workloads, want 8", got)
	}
	for _, w := range s.Workloads() {
		if w.Connected {
			t.Errorf("%s is connected after its stream closed", w.ID)
		}
	}
}

// An HTTPRoute applied over a stored TrafficSplit of the same service is
// accepted: the route takes precedence, and the warnings name both resources.
func TestApplyRouteOverSplitWarns(t *testing.T) {
	s, _ := bookstoreStore(t, local.Options{Dir: t.TempDir()})
	if _, err := s.Apply(exampleFile(t, "traffic-split-50-50.yaml")); err != nil {
		t.Fatal(err)
	}
	res, err := s.Apply(exampleFile(t, "httproute-canary.yaml"))
	if err != nil {
		t.Fatalf("Apply(httproute-canary.yaml) = %v, want it accepted with warnings", err)
	}
	var objects []string
	for _, w := range res.Warnings {
		if !w.Warning {
			t.Errorf("warning %v is not marked as one", w)
		}
		objects = append(objects, w.Object)
	}
	want := []string{"HTTPRoute bookstore/bookstore-canary", "TrafficSplit bookstore/bookstore-split"}
	if d := cmp.Diff(want, objects); d != "" {
		t.Errorf("warnings name (-want +got):\n%s\nwarnings: %v", d, res.Warnings)
	}
	if routes := s.Snapshot().RoutesFor(model.Key{Namespace: "bookstore", Name: "bookstore"}, 14001); len(routes) != 1 {
		t.Errorf("RoutesFor(bookstore:14001) = %d routes, want the canary", len(routes))
	}
}
