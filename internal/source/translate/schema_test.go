package translate

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/trellis-mesh/trellis/api/osm"
	"github.com/trellis-mesh/trellis/api/smi"
	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/model"
)

// The CRDs Trellis installs and the translators must agree: what `trellis
// apply` accepts, the API server must accept too (a field the schema lacks
// would be pruned or refused), and what the schema refuses, Trellis refuses
// too (so local mode and the webhook say the same as the cluster).

// schemaKind is an accepted kind whose CRD Trellis writes, with the API type
// its translator decodes into.
type schemaKind struct {
	apiVersion, kind string
	typ              reflect.Type
}

func schemaKinds() []schemaKind {
	return []schemaKind{
		{smi.AccessAPIVersion, smi.KindTrafficTarget, reflect.TypeFor[smi.TrafficTarget]()},
		{smi.SpecsAPIVersion, smi.KindHTTPRouteGroup, reflect.TypeFor[smi.HTTPRouteGroup]()},
		{smi.SpecsAPIVersion, smi.KindTCPRoute, reflect.TypeFor[smi.TCPRoute]()},
		{smi.SplitAPIVersion, smi.KindTrafficSplit, reflect.TypeFor[smi.TrafficSplit]()},
		{osm.PolicyAPIVersion, osm.KindIngressBackend, reflect.TypeFor[osm.IngressBackend]()},
		{osm.PolicyAPIVersion, osm.KindEgress, reflect.TypeFor[osm.Egress]()},
		{osm.PolicyAPIVersion, osm.KindRetry, reflect.TypeFor[osm.Retry]()},
		{osm.PolicyAPIVersion, osm.KindUpstreamTrafficSetting, reflect.TypeFor[osm.UpstreamTrafficSetting]()},
		{osm.ConfigAPIVersion, osm.KindMeshConfig, reflect.TypeFor[osm.MeshConfig]()},
		{osm.ConfigAPIVersionV1alpha1, osm.KindMeshConfig, reflect.TypeFor[osm.MeshConfig]()},
	}
}

// installedSchema is the openAPIV3Schema of apiVersion kind in the CRDs
// Trellis installs.
func installedSchema(t *testing.T, apiVersion, kind string) map[string]any {
	t.Helper()
	group, version, _ := strings.Cut(apiVersion, "/")
	for _, c := range manifests.CRDs() {
		if c.Group == group && c.Kind == kind {
			s, err := c.Schema(version)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	t.Fatalf("no CRD for %s %s", apiVersion, kind)
	return nil
}

// Every accepted kind but the Gateway API's (whose CRDs are the Gateway
// API's own) is in schemaKinds.
func TestSchemaKindsCoverAccepted(t *testing.T) {
	for _, k := range acceptedKinds() {
		if k.apiVersion == GatewayAPIVersion || k.apiVersion == GatewayAPIVersionV1beta1 {
			continue
		}
		if !slices.ContainsFunc(schemaKinds(), func(s schemaKind) bool { return s.apiVersion == k.apiVersion && s.kind == k.kind }) {
			t.Errorf("%s %s is accepted but not in schemaKinds: add it, with the type its translator decodes into", k.apiVersion, k.kind)
		}
	}
}

// The fields of each CRD's spec schema are the fields of the API type the
// translator decodes into, with the same JSON types, both ways; MeshConfig
// v1alpha1 lacks exactly the fields the translator refuses in v1alpha1.
func TestSchemaFieldsMatchTranslator(t *testing.T) {
	for _, k := range schemaKinds() {
		t.Run(k.kind+" "+k.apiVersion, func(t *testing.T) {
			s := installedSchema(t, k.apiVersion, k.kind)
			props, _ := s["properties"].(map[string]any)
			spec, _ := props["spec"].(map[string]any)
			st, ok := jsonFields(k.typ)["spec"]
			if !ok || spec == nil {
				t.Fatalf("spec: type %v, schema %v", st, spec)
			}
			var got []string
			compareSchema(st, spec, "spec", &got)
			var want []string
			if k.apiVersion == osm.ConfigAPIVersionV1alpha1 {
				for _, f := range v1alpha2OnlyFields() {
					want = append(want, f+": the translator reads it, the schema lacks it")
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("schema against the translator's type (-want +got):\n%s", diff)
			}
		})
	}
}

// compareSchema reports where schema s and Go type t, read as checkShape reads
// it, disagree.
func compareSchema(t reflect.Type, s map[string]any, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(format string, args ...any) { *out = append(*out, path+": "+fmt.Sprintf(format, args...)) }
	typ, _ := s["type"].(string)
	want := ""
	switch t.Kind() {
	case reflect.Struct:
		want = "object"
	case reflect.Map:
		want = "object"
	case reflect.Slice:
		want = "array"
		if t == reflect.TypeFor[json.RawMessage]() {
			want = "object"
		}
	case reflect.String:
		want = "string"
	case reflect.Bool:
		want = "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		want = "integer"
	case reflect.Float32, reflect.Float64:
		want = "number"
	}
	if typ != want {
		bad("schema type %q, the translator's Go type %s wants %q", typ, t, want)
		return
	}
	switch {
	case t == reflect.TypeFor[json.RawMessage]():
		if s["x-kubernetes-preserve-unknown-fields"] != true {
			bad("the translator keeps any value here; the schema must preserve unknown fields")
		}
	case t.Kind() == reflect.Struct:
		props, _ := s["properties"].(map[string]any)
		fields := jsonFields(t)
		for k, ft := range fields {
			p, ok := props[k].(map[string]any)
			if !ok {
				*out = append(*out, join(path, k)+": the translator reads it, the schema lacks it")
				continue
			}
			compareSchema(ft, p, join(path, k), out)
		}
		for k := range props {
			if _, ok := fields[k]; !ok {
				*out = append(*out, join(path, k)+": the schema has it, the translator refuses it")
			}
		}
	case t.Kind() == reflect.Map:
		a, ok := s["additionalProperties"].(map[string]any)
		if !ok {
			bad("a map of %s, but the schema has no additionalProperties", t.Elem())
			return
		}
		compareSchema(t.Elem(), a, path+"[*]", out)
	case t.Kind() == reflect.Slice:
		items, ok := s["items"].(map[string]any)
		if !ok {
			bad("a list, but the schema has no items")
			return
		}
		compareSchema(t.Elem(), items, path+"[]", out)
	}
}

// constraint is one rule of a schema beyond the types: a required field, an
// enum, a bound.
type constraint struct {
	path []string // to the node, "[]" for list items
	rule string   // required, enum, minimum, maximum, minItems, minLength
	key  string   // required: the field
	num  float64
	enum []any
}

func (c constraint) String() string {
	p := strings.Join(c.path, ".")
	p = strings.ReplaceAll(p, ".[]", "[]")
	if c.rule == "required" {
		return fmt.Sprintf("%s requires %s", p, c.key)
	}
	if c.rule == "enum" {
		return fmt.Sprintf("%s enum %v", p, c.enum)
	}
	return fmt.Sprintf("%s %s %v", p, c.rule, c.num)
}

func constraints(s map[string]any, path []string, out *[]constraint) {
	p := slices.Clone(path)
	for _, r := range asList(s["required"]) {
		*out = append(*out, constraint{path: p, rule: "required", key: r.(string)})
	}
	if e, ok := s["enum"].([]any); ok {
		*out = append(*out, constraint{path: p, rule: "enum", enum: e})
	}
	for _, rule := range []string{"minimum", "maximum", "minItems", "minLength"} {
		if n, ok := s[rule].(float64); ok {
			*out = append(*out, constraint{path: p, rule: rule, num: n})
		}
	}
	props, _ := s["properties"].(map[string]any)
	for _, k := range sortedKeys(props) {
		if k == "status" && len(path) == 0 {
			continue // the server's
		}
		constraints(props[k].(map[string]any), append(p, k), out)
	}
	if items, ok := s["items"].(map[string]any); ok {
		constraints(items, append(p, "[]"), out)
	}
}

func asList(v any) []any { l, _ := v.([]any); return l }

// found is a value in an object, with its path and a way to replace it.
type found struct {
	v    any
	path string
	set  func(any)
}

// findAll returns every value at path in v.
func findAll(v any, path []string, at string, set func(any)) []found {
	if v == nil {
		return nil
	}
	if len(path) == 0 {
		return []found{{v, at, set}}
	}
	seg, rest := path[0], path[1:]
	if seg == "[]" {
		l, _ := v.([]any)
		var out []found
		for i := range l {
			out = append(out, findAll(l[i], rest, fmt.Sprintf("%s[%d]", at, i), func(x any) { l[i] = x })...)
		}
		return out
	}
	m, _ := v.(map[string]any)
	return findAll(m[seg], rest, join(at, seg), func(x any) { m[seg] = x })
}

// holds says whether the value f satisfies c; for required, f is the object.
func holds(c constraint, f found) bool {
	switch c.rule {
	case "required":
		m, _ := f.v.(map[string]any)
		return m[c.key] != nil
	case "enum":
		return slices.Contains(c.enum, f.v)
	case "minimum", "maximum":
		n, err := f.v.(json.Number).Float64()
		return err == nil && (c.rule == "minimum" && n >= c.num || c.rule == "maximum" && n <= c.num)
	case "minItems":
		return float64(len(asList(f.v))) >= c.num
	case "minLength":
		s, _ := f.v.(string)
		return float64(len(s)) >= c.num
	}
	panic("unknown rule " + c.rule)
}

// violate changes f so that it breaks c, and returns the path of the field the
// translator must then name (or name a field under).
func violate(c constraint, f found) string {
	switch c.rule {
	case "required":
		delete(f.v.(map[string]any), c.key)
		return join(f.path, c.key)
	case "enum":
		f.set("NotOneOfThem")
	case "minimum":
		f.set(json.Number(fmt.Sprint(int64(c.num) - 1)))
	case "maximum":
		f.set(json.Number(fmt.Sprint(int64(c.num) + 1)))
	case "minItems":
		f.set([]any{})
	case "minLength":
		f.set("")
	}
	return f.path
}

// acceptedFixtures are the objects of the translator's testdata and of the
// bookstore example that it translates without errors, by apiVersion and kind.
func acceptedFixtures(t *testing.T) map[string][]Resource {
	t.Helper()
	var files []string
	for _, pattern := range []string{"testdata/*.yaml", "testdata/*/*.yaml", "testdata/*/*.json", "../../../examples/bookstore/*.yaml"} {
		m, err := filepath.Glob(pattern)
		if err != nil || len(m) == 0 {
			t.Fatalf("fixtures %s: %v files (%v)", pattern, len(m), err)
		}
		files = append(files, m...)
	}
	out := map[string][]Resource{}
	for _, f := range files {
		if strings.Contains(f, "invalid") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := Decode(b, f)
		if err != nil {
			continue // a fixture of a decoding error
		}
		for _, r := range rs {
			if _, errs, _ := Translate([]Resource{r}); len(errs) == 0 {
				out[r.APIVersion+" "+r.Kind] = append(out[r.APIVersion+" "+r.Kind], r)
			}
		}
	}
	return out
}

func generic(t *testing.T, r Resource) map[string]any {
	t.Helper()
	v, err := decodeJSON(r.Raw)
	if err != nil {
		t.Fatal(err)
	}
	return v.(map[string]any)
}

// TestSchemaConstraints: every required field, enum and bound of the
// installed schemas holds in every object the translator accepts (so the API
// server accepts them too), and breaking any one of them in an accepted object
// makes the translator refuse it, naming that field (so the schema refuses
// nothing Trellis would take). Every rule must be met by some fixture.
func TestSchemaConstraints(t *testing.T) {
	fixtures := acceptedFixtures(t)
	for _, k := range schemaKinds() {
		t.Run(k.kind+" "+k.apiVersion, func(t *testing.T) {
			var cs []constraint
			constraints(installedSchema(t, k.apiVersion, k.kind), nil, &cs)
			if len(cs) == 0 && k.kind != smi.KindTCPRoute {
				t.Fatal("no constraints found: the walk is broken")
			}
			objs := fixtures[k.apiVersion+" "+k.kind]
			for _, c := range cs {
				tried := false
				for _, r := range objs {
					for _, f := range findAll(generic(t, r), c.path, "", nil) {
						if !holds(c, f) {
							t.Errorf("%s: %s breaks %s, but the translator accepts it", r.Ref(), f.path, c)
						}
					}
					if tried {
						continue
					}
					obj := generic(t, r)
					fs := findAll(obj, c.path, "", nil)
					if len(fs) == 0 {
						continue
					}
					tried = true
					field := violate(c, fs[0])
					b, err := json.Marshal(obj)
					if err != nil {
						t.Fatal(err)
					}
					rs, err := Decode(b, "mutated")
					if err != nil {
						t.Fatalf("%s with %s broken: %v", r.Ref(), c, err)
					}
					_, errs, _ := Translate(rs)
					named := slices.ContainsFunc(errs, func(p model.Problem) bool {
						return p.Field == field || strings.HasPrefix(p.Field, field+".") || strings.HasPrefix(p.Field, field+"[")
					})
					if !named {
						t.Errorf("%s with %s broken (%s): the translator says %v; want it refused naming %s, as the API server refuses it", r.Ref(), c, field, errs, field)
					}
				}
				if !tried {
					t.Errorf("no accepted fixture has %s: add one to testdata/schema", c)
				}
			}
		})
	}
}

// The Gateway API's Go types, which the route translators decode into, carry
// the experimental channel's fields too; the CRDs Trellis installs are the
// standard channel's, so the API server refuses those fields. Apart from
// them, the installed schemas and the types agree, both ways.
func TestGatewaySchemaFieldsMatchTranslator(t *testing.T) {
	experimental := map[string][]string{
		KindHTTPRoute: {
			"spec.rules[].backendRefs[].filters[].externalAuth",
			"spec.rules[].filters[].externalAuth",
			"spec.rules[].retry",
			"spec.rules[].sessionPersistence",
			"spec.useDefaultGateways",
		},
		KindGRPCRoute: {
			"spec.rules[].sessionPersistence",
			"spec.useDefaultGateways",
		},
	}
	// HTTPRoute v1beta1 is read with the v1 type too (its Go types are
	// aliases of v1's), so its schema must agree with that type as well.
	for _, k := range []struct {
		apiVersion, kind string
		typ              reflect.Type
	}{
		{GatewayAPIVersion, KindHTTPRoute, reflect.TypeFor[gatewayv1.HTTPRoute]()},
		{GatewayAPIVersionV1beta1, KindHTTPRoute, reflect.TypeFor[gatewayv1.HTTPRoute]()},
		{GatewayAPIVersion, KindGRPCRoute, reflect.TypeFor[gatewayv1.GRPCRoute]()},
	} {
		s := installedSchema(t, k.apiVersion, k.kind)
		props, _ := s["properties"].(map[string]any)
		spec, _ := props["spec"].(map[string]any)
		var got []string
		compareSchema(jsonFields(k.typ)["spec"], spec, "spec", &got)
		var want []string
		for _, f := range experimental[k.kind] {
			want = append(want, f+": the translator reads it, the schema lacks it")
		}
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s %s: the standard channel's schema against the Go types (-want +got):\n%s", k.kind, k.apiVersion, diff)
		}
	}
}
