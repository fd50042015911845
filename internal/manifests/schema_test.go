package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// gatewayModule finds the Gateway API module go.mod pins: its version and its
// directory in the module cache; it skips the test when the directory is not
// there (no go command, or the module not downloaded).
func gatewayModule(t *testing.T) (version, dir string) {
	t.Helper()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	}
	out, err := exec.Command(gobin, "list", "-m", "-f", "{{.Version}} {{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	var ee *exec.ExitError
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist):
		t.Skipf("no go command to find the Gateway API module: %v", err)
	case errors.As(err, &ee):
		t.Fatalf("go list -m sigs.k8s.io/gateway-api: %v\n%s", err, ee.Stderr)
	case err != nil:
		t.Fatal(err)
	}
	version, dir, _ = strings.Cut(strings.TrimSpace(string(out)), " ")
	if dir == "" {
		t.Skipf("sigs.k8s.io/gateway-api %s is not in the module cache (go mod download sigs.k8s.io/gateway-api)", version)
	}
	return version, dir
}

// The Gateway API CRDs Trellis installs are the pinned module's own, byte for
// byte, and say the same version as go.mod.
func TestGatewayCRDsMatchModule(t *testing.T) {
	version, dir := gatewayModule(t)
	n := 0
	for _, c := range CRDs() {
		if c.Upstream == "" {
			continue
		}
		n++
		want, err := os.ReadFile(filepath.Join(dir, "config", "crd", "standard", c.Upstream))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("gateway", c.Upstream))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("gateway/%s differs from sigs.k8s.io/gateway-api %s's config/crd/standard/%s: run hack/gateway-crds.sh", c.Upstream, version, c.Upstream)
		}
		var crd struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(got, &crd); err != nil {
			t.Fatal(err)
		}
		a := crd.Metadata.Annotations
		if a["gateway.networking.k8s.io/bundle-version"] != version || a["gateway.networking.k8s.io/channel"] != "standard" {
			t.Errorf("gateway/%s: bundle %s channel %s, want %s standard", c.Upstream, a["gateway.networking.k8s.io/bundle-version"], a["gateway.networking.k8s.io/channel"], version)
		}
	}
	if n != 2 {
		t.Errorf("%d CRDs from the Gateway API, want HTTPRoute and GRPCRoute", n)
	}
}

// Every file of schemas/ and gateway/ is a CRD of the table, and only those
// Gateway API CRDs are installed.
func TestEmbeddedFilesInTable(t *testing.T) {
	want := map[string]bool{}
	for _, c := range CRDs() {
		if c.Upstream != "" {
			want["gateway/"+c.Upstream] = true
		} else {
			want["schemas/"+c.Plural+".yaml"] = true
		}
	}
	var got []string
	for _, dir := range []string{"schemas", "gateway"} {
		m, err := filepath.Glob(filepath.Join(dir, "*"))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
	}
	for _, f := range got {
		if !want[filepath.ToSlash(f)] {
			t.Errorf("%s is not a CRD of the table: add it to CRDs() or remove it", f)
		}
		delete(want, filepath.ToSlash(f))
	}
	for f := range want {
		t.Errorf("%s is missing", f)
	}
}

// schemaKeywords are the parts of OpenAPI the schemas of schemas/ use; the API
// server knows more, but a key outside these is a typo here.
var schemaKeywords = []string{"type", "description", "properties", "required", "items", "enum", "minimum", "maximum",
	"minItems", "minLength", "additionalProperties", "x-kubernetes-preserve-unknown-fields"}

// The schemas Trellis writes are structural, as the API server demands of a
// CRD (every node typed, properties and additionalProperties not together),
// and consistent: required fields exist, enum values and bounds fit the type.
func TestSchemasStructural(t *testing.T) {
	for _, c := range CRDs() {
		if c.Upstream != "" {
			continue
		}
		for _, v := range c.Versions {
			s, err := c.Schema(v)
			if err != nil {
				t.Fatal(err)
			}
			var problems []string
			checkNode(s, c.Kind+" "+v, &problems)
			props, _ := s["properties"].(map[string]any)
			if props["spec"] == nil || c.Status && props["status"] == nil {
				problems = append(problems, fmt.Sprintf("%s %s: properties %v, want spec and status", c.Kind, v, keys(props)))
			}
			for k := range props {
				if k != "spec" && k != "status" {
					problems = append(problems, fmt.Sprintf("%s %s: top-level property %s: only spec and status are the kind's own", c.Kind, v, k))
				}
			}
			for _, p := range problems {
				t.Error(p)
			}
		}
	}
}

func checkNode(n map[string]any, path string, problems *[]string) {
	bad := func(format string, args ...any) {
		*problems = append(*problems, path+": "+fmt.Sprintf(format, args...))
	}
	for k := range n {
		if !slices.Contains(schemaKeywords, k) {
			bad("keyword %q is not one the schemas use (%s)", k, strings.Join(schemaKeywords, ", "))
		}
	}
	typ, _ := n["type"].(string)
	props, hasProps := n["properties"].(map[string]any)
	addl, hasAddl := n["additionalProperties"].(map[string]any)
	items, hasItems := n["items"].(map[string]any)
	switch typ {
	case "object":
		if hasProps && hasAddl {
			bad("properties and additionalProperties together")
		}
		if !hasProps && !hasAddl && n["x-kubernetes-preserve-unknown-fields"] != true {
			bad("an object with neither properties nor additionalProperties prunes everything: say which fields it has")
		}
	case "array":
		if !hasItems {
			bad("an array without items")
		}
	case "string", "integer", "boolean", "number":
	default:
		bad("type %q: every node needs one of object, array, string, integer, boolean, number", n["type"])
	}
	if (hasProps || hasAddl) && typ != "object" || hasItems && typ != "array" {
		bad("properties, additionalProperties or items on a node of type %s", typ)
	}
	if req, ok := n["required"].([]any); ok {
		for _, r := range req {
			if _, ok := props[fmt.Sprint(r)]; !ok {
				bad("required %v is not a property", r)
			}
		}
	}
	if enum, ok := n["enum"].([]any); ok {
		for _, e := range enum {
			if _, ok := e.(string); !ok || typ != "string" {
				bad("enum value %v (%T) in a node of type %s: the enums here are strings", e, e, typ)
			}
		}
	}
	minimum, hasMin := n["minimum"].(float64)
	maximum, hasMax := n["maximum"].(float64)
	if (hasMin || hasMax) && typ != "integer" {
		bad("bounds on a node of type %s", typ)
	}
	if hasMin && hasMax && minimum > maximum {
		bad("minimum %v > maximum %v", minimum, maximum)
	}
	for _, k := range keys(props) {
		checkNode(props[k].(map[string]any), path+"."+k, problems)
	}
	if hasAddl {
		checkNode(addl, path+"[*]", problems)
	}
	if hasItems {
		checkNode(items, path+"[]", problems)
	}
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// MeshConfig v1alpha1 is v1alpha2 without the fields v1alpha1 lacks, and
// nothing else is different.
func TestMeshConfigVersions(t *testing.T) {
	var mc CRD
	for _, c := range CRDs() {
		if c.Kind == "MeshConfig" {
			mc = c
		}
	}
	v2, err := mc.Schema("v1alpha2")
	if err != nil {
		t.Fatal(err)
	}
	v1, err := mc.Schema("v1alpha1")
	if err != nil {
		t.Fatal(err)
	}
	var p2, p1 []string
	paths(v2, "", &p2)
	paths(v1, "", &p1)
	var gone []string
	for _, p := range p2 {
		if !slices.Contains(p1, p) {
			gone = append(gone, p)
		}
	}
	want := slices.Clone(MeshConfigV1alpha2Only())
	sort.Strings(want)
	sort.Strings(gone)
	if !slices.Equal(gone, want) {
		t.Errorf("v1alpha2 fields missing from v1alpha1: %v, want %v", gone, want)
	}
	for _, p := range p1 {
		if !slices.Contains(p2, p) {
			t.Errorf("v1alpha1 has %s, v1alpha2 does not", p)
		}
	}
}

// paths lists the dotted paths of every property of a schema.
func paths(n map[string]any, prefix string, out *[]string) {
	props, _ := n["properties"].(map[string]any)
	for _, k := range keys(props) {
		p := strings.TrimPrefix(prefix+"."+k, ".")
		*out = append(*out, p)
		paths(props[k].(map[string]any), p, out)
	}
	if items, ok := n["items"].(map[string]any); ok {
		paths(items, prefix+"[]", out)
	}
}
