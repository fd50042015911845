package bookstore

import (
	"io/fs"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// doc is the part of the demo's resources the tests look at.
type doc struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		// MeshConfig
		Traffic *struct {
			Permissive *bool `json:"enablePermissiveTrafficPolicyMode"`
			Egress     *bool `json:"enableEgress"`
		} `json:"traffic"`
		// TrafficTarget
		Destination *subject  `json:"destination"`
		Sources     []subject `json:"sources"`
		Rules       []struct {
			Kind    string   `json:"kind"`
			Name    string   `json:"name"`
			Matches []string `json:"matches"`
		} `json:"rules"`
		// HTTPRouteGroup: matches; TrafficSplit: service, backends
		Matches  []routeMatch `json:"matches"`
		Service  string       `json:"service"`
		Backends []struct {
			Service string `json:"service"`
			Weight  int    `json:"weight"`
		} `json:"backends"`
	} `json:"spec"`
}

type subject struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

type routeMatch struct {
	Name      string              `json:"name"`
	PathRegex string              `json:"pathRegex"`
	Methods   []string            `json:"methods"`
	Headers   []map[string]string `json:"headers"`
}

// readDocs decodes every YAML document of an embedded manifest, strictly.
func readDocs(t *testing.T, name string) []doc {
	t.Helper()
	b, err := Manifests.ReadFile(name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	var docs []doc
	for i, part := range strings.Split(string(b), "\n---\n") {
		var d doc
		if err := yaml.UnmarshalStrict([]byte(part), &d); err != nil {
			t.Fatalf("%s document %d: %v", name, i+1, err)
		}
		docs = append(docs, d)
	}
	return docs
}

func TestManifestsAreAllEmbedded(t *testing.T) {
	got, err := fs.Glob(Manifests, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"httproute-canary.yaml", "mesh-config-permissive.yaml", "mesh-config-strict.yaml", "traffic-access.yaml",
		"traffic-split-50-50.yaml", "traffic-split-v1.yaml", "traffic-split-v2.yaml",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("embedded manifests mismatch (-want +got):\n%s", diff)
	}
}

func TestMeshConfigs(t *testing.T) {
	for _, tt := range []struct {
		file       string
		permissive bool
	}{
		{"mesh-config-strict.yaml", false},
		{"mesh-config-permissive.yaml", true},
	} {
		t.Run(tt.file, func(t *testing.T) {
			docs := readDocs(t, tt.file)
			if len(docs) != 1 {
				t.Fatalf("%d documents, want 1", len(docs))
			}
			d := docs[0]
			got := [...]string{d.APIVersion, d.Kind, d.Metadata.Namespace + "/" + d.Metadata.Name}
			want := [...]string{"config.openservicemesh.io/v1alpha2", "MeshConfig", "osm-system/osm-mesh-config"}
			if got != want {
				t.Errorf("header = %q, want %q", got, want)
			}
			tr := d.Spec.Traffic
			if tr == nil || tr.Permissive == nil || *tr.Permissive != tt.permissive || tr.Egress == nil || *tr.Egress {
				t.Errorf("spec.traffic = %+v, want enablePermissiveTrafficPolicyMode %v and enableEgress false", tr, tt.permissive)
			}
		})
	}
}

func TestTrafficAccess(t *testing.T) {
	// access is who may call whom, by which routes: the demo's access matrix.
	type access struct {
		Destination subject
		Sources     []subject
		Rules       string // "GROUP: match,match"
	}
	targets := map[string]access{}
	groups := map[string][]routeMatch{}
	for _, d := range readDocs(t, "traffic-access.yaml") {
		key := d.Metadata.Namespace + "/" + d.Metadata.Name
		switch d.Kind + " " + d.APIVersion {
		case "TrafficTarget access.smi-spec.io/v1alpha3":
			a := access{Destination: *d.Spec.Destination, Sources: d.Spec.Sources}
			for _, r := range d.Spec.Rules {
				a.Rules += r.Kind + " " + r.Name + ": " + strings.Join(r.Matches, ",")
			}
			targets[key] = a
		case "HTTPRouteGroup specs.smi-spec.io/v1alpha4":
			groups[key] = d.Spec.Matches
		default:
			t.Errorf("unexpected %s %s %s", d.APIVersion, d.Kind, key)
		}
	}

	sa := func(ns, name string) subject { return subject{Kind: "ServiceAccount", Namespace: ns, Name: name} }
	bookbuyer := []subject{sa("bookbuyer", "bookbuyer")}
	storeRules := "HTTPRouteGroup bookstore-service-routes: buy-a-book,books-bought"
	wantTargets := map[string]access{
		"bookstore/bookstore":    {Destination: sa("bookstore", "bookstore"), Sources: bookbuyer, Rules: storeRules},
		"bookstore/bookstore-v2": {Destination: sa("bookstore", "bookstore-v2"), Sources: bookbuyer, Rules: storeRules},
		"bookwarehouse/bookstore-access-bookwarehouse": {
			Destination: sa("bookwarehouse", "bookwarehouse"),
			Sources:     []subject{sa("bookstore", "bookstore"), sa("bookstore", "bookstore-v2")},
			Rules:       "HTTPRouteGroup bookwarehouse-service-routes: restock-books",
		},
	}
	if diff := cmp.Diff(wantTargets, targets); diff != "" {
		t.Errorf("TrafficTargets mismatch (-want +got):\n%s", diff)
	}

	wantGroups := map[string][]routeMatch{
		"bookstore/bookstore-service-routes": {
			{Name: "books-bought", PathRegex: "/books-bought", Methods: []string{"GET"},
				Headers: []map[string]string{{"user-agent": ".*-http-client/*.*"}, {"client-app": "bookbuyer"}}},
			{Name: "buy-a-book", PathRegex: ".*a-book.*new", Methods: []string{"GET"}},
		},
		"bookwarehouse/bookwarehouse-service-routes": {
			{Name: "restock-books", PathRegex: "/restock-books", Methods: []string{"POST"}},
		},
	}
	if diff := cmp.Diff(wantGroups, groups); diff != "" {
		t.Errorf("HTTPRouteGroups mismatch (-want +got):\n%s", diff)
	}
}

func TestTrafficSplits(t *testing.T) {
	for _, tt := range []struct {
		file   string
		v1, v2 int
	}{
		{"traffic-split-v1.yaml", 100, 0},
		{"traffic-split-50-50.yaml", 50, 50},
		{"traffic-split-v2.yaml", 0, 100},
	} {
		t.Run(tt.file, func(t *testing.T) {
			docs := readDocs(t, tt.file)
			if len(docs) != 1 {
				t.Fatalf("%d documents, want 1", len(docs))
			}
			d := docs[0]
			got := []string{d.APIVersion, d.Kind, d.Metadata.Namespace + "/" + d.Metadata.Name, d.Spec.Service}
			for _, b := range d.Spec.Backends {
				got = append(got, b.Service+"="+strconv.Itoa(b.Weight))
			}
			want := []string{"split.smi-spec.io/v1alpha2", "TrafficSplit", "bookstore/bookstore-split", "bookstore.bookstore",
				"bookstore-v1=" + strconv.Itoa(tt.v1), "bookstore-v2=" + strconv.Itoa(tt.v2)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("TrafficSplit mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
