package manifests

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The CRDs rendered here match the golden file; the Gateway API's, checked
// against their module by TestGatewayCRDsMatchModule, are left out of it and
// must be their file with only Trellis's label added.
func TestCRDsYAMLGolden(t *testing.T) {
	var got []byte
	for _, c := range CRDs() {
		doc, err := c.render()
		if err != nil {
			t.Fatal(err)
		}
		if c.Upstream == "" {
			if len(got) > 0 {
				got = append(got, "---\n"...)
			}
			got = append(got, doc...)
			continue
		}
		file, err := os.ReadFile(filepath.Join("gateway", c.Upstream))
		if err != nil {
			t.Fatal(err)
		}
		label := "\n  labels:\n    " + PartOfLabel + ": trellis\n"
		if !bytes.Contains(doc, []byte(label)) || string(bytes.Replace(doc, []byte(label), []byte("\n"), 1)) != string(file) {
			t.Errorf("%s: the rendered CRD is not gateway/%s with the label %s added", c.Name(), c.Upstream, PartOfLabel)
		}
	}
	path := filepath.Join("testdata", "crds.golden.yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/manifests -update)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("CRDs (-want +got):\n%s", diff)
	}
}

// Every document is a CRD whose name, kind and versions are those of the table,
// with exactly one storage version.
func TestCRDsYAMLShape(t *testing.T) {
	docs := bytes.Split(CRDsYAML(), []byte("\n---\n"))
	crds := CRDs()
	if len(docs) != len(crds) {
		t.Fatalf("%d documents, want %d", len(docs), len(crds))
	}
	type version struct {
		Name    string `json:"name"`
		Served  bool   `json:"served"`
		Storage bool   `json:"storage"`
	}
	for i, d := range docs {
		var crd struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind   string `json:"kind"`
					Plural string `json:"plural"`
				} `json:"names"`
				Versions []version `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(d, &crd); err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		c := crds[i]
		if crd.Kind != "CustomResourceDefinition" || crd.Metadata.Name != c.Name() || crd.Spec.Group != c.Group || crd.Spec.Names.Kind != c.Kind || crd.Spec.Names.Plural != c.Plural {
			t.Errorf("document %d = %+v, want the CRD of %s", i+1, crd, c.Name())
		}
		if crd.Metadata.Labels[PartOfLabel] != "trellis" {
			t.Errorf("%s: labels %v, want %s: trellis", c.Name(), crd.Metadata.Labels, PartOfLabel)
		}
		if len(crd.Spec.Versions) != len(c.Versions) {
			t.Errorf("%s: versions %+v, want %v", c.Name(), crd.Spec.Versions, c.Versions)
			continue
		}
		storage := 0
		for j, v := range crd.Spec.Versions {
			if v.Name != c.Versions[j] || !v.Served {
				t.Errorf("%s version %d = %+v, want %s served", c.Name(), j, v, c.Versions[j])
			}
			if v.Storage {
				storage++
			}
		}
		if storage != 1 || !crd.Spec.Versions[0].Storage {
			t.Errorf("%s: %d storage versions, want exactly the first", c.Name(), storage)
		}
	}
}

// The control plane's ClusterRole lets it write the status of every kind in
// the table that has a status subresource, in its group.
func TestRBACCoversStatus(t *testing.T) {
	b, err := InstallYAML(DefaultValues())
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		APIGroups []string `json:"apiGroups"`
		Resources []string `json:"resources"`
		Verbs     []string `json:"verbs"`
	}
	var rules []rule
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var obj struct {
			Kind  string `json:"kind"`
			Rules []rule `json:"rules"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		if obj.Kind == "ClusterRole" {
			rules = append(rules, obj.Rules...)
		}
	}
	has := func(xs []string, x string) bool {
		for _, v := range xs {
			if v == x {
				return true
			}
		}
		return false
	}
	for _, c := range CRDs() {
		if !c.Status {
			continue
		}
		ok := false
		for _, r := range rules {
			if has(r.APIGroups, c.Group) && has(r.Resources, c.Plural+"/status") && has(r.Verbs, "update") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no ClusterRole rule lets the control plane update %s/status in group %s", c.Plural, c.Group)
		}
	}
}
