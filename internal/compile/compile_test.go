package compile

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-mesh/trellis/internal/model"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// bookstore is the demo's mesh: bookstore v1 and v2 behind a root service,
// bookwarehouse, and the access policy of the OSM walk-through.
func bookstore(permissive bool, split []model.WeightedBackend) model.Inputs {
	ms := model.DefaultMeshSettings()
	ms.Permissive = permissive
	in := model.Inputs{
		Mesh: &ms,
		Workloads: []model.Workload{
			{ID: "bookstore/bookstore-v1-aaaaaa", Name: "bookstore-v1", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore"},
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v1", ServicePort: 14001}},
				Address:  "127.0.0.1:20001", Ready: true},
			{ID: "bookstore/bookstore-v2-bbbbbb", Name: "bookstore-v2", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore-v2"},
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v2", ServicePort: 14001}},
				Address:  "127.0.0.1:20002", Ready: true},
			{ID: "bookwarehouse/bookwarehouse-cccccc", Name: "bookwarehouse", Identity: model.Identity{Namespace: "bookwarehouse", Account: "bookwarehouse"},
				Services: []model.ServiceMembership{{Service: "bookwarehouse", ServicePort: 14001}},
				Address:  "127.0.0.1:20003", Ready: true},
			{ID: "bookbuyer/bookbuyer-dddddd", Name: "bookbuyer", Identity: model.Identity{Namespace: "bookbuyer", Account: "bookbuyer"}, Address: "127.0.0.1:20004", Ready: true},
			{ID: "bookthief/bookthief-eeeeee", Name: "bookthief", Identity: model.Identity{Namespace: "bookthief", Account: "bookthief"}, Address: "127.0.0.1:20005", Ready: true},
		},
		RouteGroups: []model.HTTPRouteGroup{{
			Key: model.Key{Namespace: "bookstore", Name: "bookstore-service-routes"},
			Matches: []model.HTTPMatch{
				{Name: "books-bought", PathRegex: "/books-bought", Methods: []string{"GET"}, Headers: map[string]string{"user-agent": ".*-http-client/*.*", "client-app": "bookbuyer"}},
				{Name: "buy-a-book", PathRegex: ".*a-book.*new", Methods: []string{"GET"}},
			},
		}},
		Targets: []model.TrafficTarget{
			{Key: model.Key{Namespace: "bookstore", Name: "bookstore"}, Destination: model.Identity{Namespace: "bookstore", Account: "bookstore"},
				Sources: []model.Identity{{Namespace: "bookbuyer", Account: "bookbuyer"}},
				Rules:   []model.TrafficRule{{Kind: model.RuleHTTPRouteGroup, Name: "bookstore-service-routes", Matches: []string{"buy-a-book", "books-bought"}}}},
			{Key: model.Key{Namespace: "bookstore", Name: "bookstore-v2"}, Destination: model.Identity{Namespace: "bookstore", Account: "bookstore-v2"},
				Sources: []model.Identity{{Namespace: "bookbuyer", Account: "bookbuyer"}},
				Rules:   []model.TrafficRule{{Kind: model.RuleHTTPRouteGroup, Name: "bookstore-service-routes"}}},
		},
	}
	if split != nil {
		in.Splits = []model.TrafficSplit{{Key: model.Key{Namespace: "bookstore", Name: "bookstore-split"}, Service: "bookstore", Backends: split}}
	}
	return in
}

func golden(t *testing.T, name string, m proto.Message) {
	t.Helper()
	got, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	// protojson output is not byte-stable across runs; normalise via the message.
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	wantBytes, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/compile -update to create it)", err)
	}
	want := m.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(wantBytes, want); err != nil {
		t.Fatalf("golden %s: %v", path, err)
	}
	if diff := cmp.Diff(want, m, cmpProto()); diff != "" {
		t.Errorf("%s differs from the golden file (-want +got); run with -update if intended:\n%s", name, diff)
	}
}

func cmpProto() cmp.Option {
	return cmp.Comparer(func(a, b proto.Message) bool { return proto.Equal(a, b) })
}

func TestDestinationGolden(t *testing.T) {
	split5050 := []model.WeightedBackend{{Service: "bookstore-v1", Weight: 50}, {Service: "bookstore-v2", Weight: 50}}
	tests := []struct {
		name      string
		in        model.Inputs
		authority string
		caller    string
	}{
		{"split-50-50-strict", bookstore(false, split5050), "bookstore.bookstore:14001", "bookbuyer"},
		{"split-v2-strict", bookstore(false, []model.WeightedBackend{{Service: "bookstore-v1", Weight: 0}, {Service: "bookstore-v2", Weight: 100}}), "bookstore.bookstore.svc.cluster.local:14001", "bookbuyer"},
		{"no-split-permissive", bookstore(true, nil), "bookstore:14001", "bookstore"},
		{"warehouse-strict-no-target", bookstore(false, nil), "bookwarehouse.bookwarehouse:14001", "bookstore"},
		{"unknown-service", bookstore(false, nil), "nosuch.bookstore:14001", "bookbuyer"},
		{"unknown-port", bookstore(false, nil), "bookstore.bookstore:80", "bookbuyer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, err := ParseAuthority(tt.authority, tt.caller)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "destination-"+tt.name, Destination(model.Build(tt.in), target))
		})
	}
}

func TestInboundGolden(t *testing.T) {
	for _, tt := range []struct {
		name, workload string
		permissive     bool
	}{
		{"bookstore-v1-strict", "bookstore/bookstore-v1-aaaaaa", false},
		{"bookstore-v2-strict", "bookstore/bookstore-v2-bbbbbb", false},
		{"bookstore-v1-permissive", "bookstore/bookstore-v1-aaaaaa", true},
		{"bookthief-strict", "bookthief/bookthief-eeeeee", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ic, err := Inbound(model.Build(bookstore(tt.permissive, nil)), tt.workload)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "inbound-"+tt.name, ic)
		})
	}
}

func TestInboundUnknownWorkload(t *testing.T) {
	if _, err := Inbound(model.Build(bookstore(false, nil)), "nope/nope"); err == nil {
		t.Fatal("Inbound of an unregistered workload: got no error")
	}
}

// TestDeterministic checks that compiling the same snapshot twice, and two
// snapshots of the same content, gives the same version.
func TestDeterministic(t *testing.T) {
	split := []model.WeightedBackend{{Service: "bookstore-v1", Weight: 50}, {Service: "bookstore-v2", Weight: 50}}
	target := Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001}
	a := Destination(model.Build(bookstore(false, split)), target)
	b := Destination(model.Build(bookstore(false, split)), target)
	if a.GetVersion() != b.GetVersion() || a.GetVersion() == "" {
		t.Fatalf("versions differ for equal content: %q vs %q", a.GetVersion(), b.GetVersion())
	}
	split[0].Weight = 0
	c := Destination(model.Build(bookstore(false, split)), target)
	if c.GetVersion() == a.GetVersion() {
		t.Fatalf("a changed split kept version %q", a.GetVersion())
	}
}

func TestParseAuthority(t *testing.T) {
	tests := []struct {
		in, caller string
		want       Target
		wantErr    bool
	}{
		{"bookstore.bookstore:14001", "x", Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001}, false},
		{"bookstore.bookstore.svc.cluster.local:14001", "x", Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001}, false},
		{"bookstore.bookstore.svc:14001", "x", Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 14001}, false},
		{"Bookstore:14001", "shop", Target{Service: model.Key{Namespace: "shop", Name: "bookstore"}, Port: 14001}, false},
		{"bookstore.bookstore", "x", Target{Service: model.Key{Namespace: "bookstore", Name: "bookstore"}, Port: 80}, false},
		{"bookstore.bookstore:0", "x", Target{}, true},
		{"bookstore.bookstore:http", "x", Target{}, true},
		{"a.b.c:80", "x", Target{}, true},
		{":80", "x", Target{}, true},
		{"198.18.4.7:14001", "x", Target{Addr: netip.MustParseAddr("198.18.4.7"), Port: 14001}, false},
		{"[::ffff:198.18.4.7]:14001", "x", Target{Addr: netip.MustParseAddr("198.18.4.7"), Port: 14001}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAuthority(tt.in, tt.caller)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseAuthority(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("ParseAuthority(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// The mesh config's sidecar log level reaches every sidecar's inbound config.
func TestInboundLogLevel(t *testing.T) {
	in := bookstore(false, nil)
	in.Mesh.SidecarLogLevel = "debug"
	ic, err := Inbound(model.Build(in), "bookstore/bookstore-v1-aaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	if ic.GetLogLevel() != "debug" {
		t.Errorf("inbound log level = %q, want debug", ic.GetLogLevel())
	}
}

// TestDestinationByAddress resolves a captured connection's original
// destination, an assigned virtual address, to the service that holds it, and
// reports an address no service holds.
func TestDestinationByAddress(t *testing.T) {
	snap := model.Build(model.Inputs{
		VirtualAddresses: netip.MustParsePrefix("198.18.0.0/16"),
		Services: []model.Service{
			{Key: model.Key{Namespace: "db", Name: "mysql"}, Ports: []model.ServicePort{{Port: 3306, Protocol: model.ProtocolTCPServerFirst}},
				Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10")}},
		},
		Workloads: []model.Workload{{ID: "bookstore/v1", Name: "v1", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore"},
			Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}}, Address: "127.0.0.1:1", Ready: true}},
	})
	if p := snap.Problems(); len(p) > 0 {
		t.Fatalf("problems: %v", p)
	}
	store, ok := snap.Service(model.Key{Namespace: "bookstore", Name: "bookstore"})
	if !ok || len(store.Addresses) != 1 || !netip.MustParsePrefix("198.18.0.0/16").Contains(store.Addresses[0]) {
		t.Fatalf("bookstore was given no address from the pool: %+v", store)
	}
	for _, tt := range []struct {
		authority, service, reason string
	}{
		{netip.AddrPortFrom(store.Addresses[0], 14001).String(), "bookstore.bookstore", ""},
		{"10.96.0.10:3306", "mysql.db", ""},
		{"10.96.0.11:3306", "", "no service in the mesh has address 10.96.0.11"},
	} {
		tg, err := ParseAuthority(tt.authority, "bookbuyer")
		if err != nil {
			t.Fatal(err)
		}
		dc := Destination(snap, tg)
		if dc.GetAuthority() != tt.authority || dc.GetService() != tt.service || dc.GetReason() != tt.reason || dc.GetFound() != (tt.reason == "") {
			t.Errorf("%s: authority %q service %q found %v reason %q", tt.authority, dc.GetAuthority(), dc.GetService(), dc.GetFound(), dc.GetReason())
		}
	}
	// A service keeps its address as others join.
	more := model.Build(model.Inputs{
		VirtualAddresses: netip.MustParsePrefix("198.18.0.0/16"),
		Services: []model.Service{
			{Key: model.Key{Namespace: "bookstore", Name: "aaa"}, Ports: []model.ServicePort{{Port: 80}}},
			{Key: model.Key{Namespace: "bookstore", Name: "bookstore"}, Ports: []model.ServicePort{{Port: 14001}}},
		},
	})
	if again, _ := more.Service(store.Key); again == nil || again.Addresses[0] != store.Addresses[0] {
		t.Errorf("bookstore's address moved from %v to %+v", store.Addresses, again)
	}
	// Two services claiming one address: neither gets it, both are told.
	clash := model.Build(model.Inputs{Services: []model.Service{
		{Key: model.Key{Namespace: "a", Name: "x"}, Ports: []model.ServicePort{{Port: 80}}, Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{Key: model.Key{Namespace: "b", Name: "y"}, Ports: []model.ServicePort{{Port: 80}}, Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
	}})
	if _, ok := clash.ServiceAt(netip.MustParseAddr("10.0.0.1")); ok || len(clash.Problems()) != 2 {
		t.Errorf("clashing addresses: ServiceAt found %v, problems %v", ok, clash.Problems())
	}
}
