package translate

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeErrors(t *testing.T) {
	accepts := "Trellis accepts TrafficTarget (access.smi-spec.io/v1alpha3); HTTPRouteGroup, TCPRoute (specs.smi-spec.io/v1alpha4); " +
		"TrafficSplit (split.smi-spec.io/v1alpha2); IngressBackend, Egress, Retry, UpstreamTrafficSetting (policy.openservicemesh.io/v1alpha1); " +
		"MeshConfig (config.openservicemesh.io/v1alpha2); MeshConfig (config.openservicemesh.io/v1alpha1); " +
		"HTTPRoute, GRPCRoute (gateway.networking.k8s.io/v1); HTTPRoute (gateway.networking.k8s.io/v1beta1)"
	tests := []struct {
		name   string
		file   string // under testdata, or "" to use data
		data   string
		source string
		want   []string // err.Error(), line by line
	}{
		{
			name:   "multi-document file names each bad document by index and line",
			file:   "decode/mixed.yaml",
			source: "mixed.yaml",
			want: []string{
				"mixed.yaml:13: document 2: apiVersion apps/v1 kind Deployment is not accepted; " + accepts,
				"mixed.yaml:23: document 3: invalid YAML: did not find expected key (at or near line 23): fix the syntax",
				"mixed.yaml:27: document 4: apiVersion is missing: add it (use apiVersion specs.smi-spec.io/v1alpha4)",
				"mixed.yaml:31: document 5: apiVersion specs.smi-spec.io/v1alpha5 kind TCPRoute is not accepted: use apiVersion specs.smi-spec.io/v1alpha4",
				"mixed.yaml:36: document 6: TCPRoute has no metadata.name: name it",
			},
		},
		{
			name:   "seed 001 ingress file: Ingress is not an accepted kind",
			file:   "decode/bookstore-ingress.yaml",
			source: "ingress.yaml",
			want:   []string{"ingress.yaml:1: document 1: apiVersion networking.k8s.io/v1 kind Ingress is not accepted; " + accepts},
		},
		{
			name:   "duplicate key is a syntax error with its line",
			file:   "decode/duplicate-key.yaml",
			source: "dup.yaml",
			want:   []string{`dup.yaml:5: document 1: invalid YAML: key "name" already set in map (at or near line 5): fix the syntax`},
		},
		{
			name:   "List items are named by index",
			file:   "decode/list-bad-item.yaml",
			source: "list.yaml",
			want: []string{
				`list.yaml:1: document 1, items[1] (TCPRoute bookwarehouse/MySQL): metadata.name "MySQL" is not valid: use at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit`,
				`list.yaml:1: document 1, items[2]: is the string "just a string", not an object`,
			},
		},
		{
			name: "no source name",
			data: "[1, 2]\n",
			want: []string{"line 1: document 1: is a list, not an object: each document must be one object with apiVersion, kind and metadata.name"},
		},
		{
			name: "kind in the wrong case",
			data: "apiVersion: split.smi-spec.io/v1alpha2\nkind: trafficsplit\nmetadata: {name: s}\n",
			want: []string{"line 1: document 1: apiVersion split.smi-spec.io/v1alpha2 kind trafficsplit is not accepted: use apiVersion split.smi-spec.io/v1alpha2 and kind TrafficSplit"},
		},
		{
			name: "MeshConfig at an old version lists both versions",
			data: "apiVersion: config.openservicemesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: m}\n",
			want: []string{"line 1: document 1: apiVersion config.openservicemesh.io/v1alpha3 kind MeshConfig is not accepted: use apiVersion config.openservicemesh.io/v1alpha2 or config.openservicemesh.io/v1alpha1"},
		},
		{
			name: "missing kind",
			data: "apiVersion: split.smi-spec.io/v1alpha2\nmetadata: {name: s}\n",
			want: []string{"line 1: document 1: kind is missing: add the object's kind, such as TrafficSplit"},
		},
		{
			name: "bad namespace",
			data: "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: Book_Store}\n",
			want: []string{`line 1: document 1 (TrafficSplit Book_Store/s): metadata.namespace "Book_Store" is not valid: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit`},
		},
		{
			name: "namespace not a string",
			data: "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: 7}\n",
			want: []string{"line 1: document 1: TrafficSplit s: metadata.namespace is the number 7: it must be a string"},
		},
		{
			name: "syntax error on the first line of a later document",
			data: "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {name: a}\n---\n\tkind: TCPRoute\n",
			want: []string{"line 5: document 2: invalid YAML: found character that cannot start any token: fix the syntax"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.data)
			if tc.file != "" {
				data = readTestdata(t, tc.file)
			}
			rs, err := Decode(data, tc.source)
			if err == nil {
				t.Fatalf("Decode returned %d resources and no error; want errors", len(rs))
			}
			if rs != nil {
				t.Errorf("Decode returned %d resources with an error; want none", len(rs))
			}
			if diff := cmp.Diff(tc.want, strings.Split(err.Error(), "\n")); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Errorf("error %v is not a *DecodeError", err)
			}
		})
	}
}

func TestDecodeErrorDetails(t *testing.T) {
	_, err := Decode(readTestdata(t, "decode/mixed.yaml"), "mixed.yaml")
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("error %v does not join the documents' errors", err)
	}
	var got []DecodeError
	for _, e := range joined.Unwrap() {
		var de *DecodeError
		if !errors.As(e, &de) {
			t.Fatalf("error %v is not a *DecodeError", e)
		}
		d := *de
		d.Err = nil
		got = append(got, d)
	}
	want := []DecodeError{
		{Source: "mixed.yaml", Document: 2, Item: -1, Line: 13},
		{Source: "mixed.yaml", Document: 3, Item: -1, Line: 23},
		{Source: "mixed.yaml", Document: 4, Item: -1, Line: 27},
		{Source: "mixed.yaml", Document: 5, Item: -1, Line: 31},
		{Source: "mixed.yaml", Document: 6, Item: -1, Line: 36},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	var na *NotAcceptedError
	if !errors.As(err, &na) || na.Kind != "Deployment" || na.APIVersion != "apps/v1" {
		t.Errorf("errors.As(*NotAcceptedError) = %+v; want Deployment apps/v1", na)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		file string
		data string
		want []Resource
	}{
		{
			name: "JSON List with tabs",
			file: "decode/list.json",
			want: []Resource{
				{
					APIVersion: "specs.smi-spec.io/v1alpha4", Kind: "TCPRoute", Namespace: "bookwarehouse", Name: "mysql",
					Raw: json.RawMessage(`{"apiVersion":"specs.smi-spec.io/v1alpha4","kind":"TCPRoute","metadata":{"name":"mysql","namespace":"bookwarehouse"},"spec":{"matches":{"ports":[3306]}}}`),
				},
				{
					APIVersion: "split.smi-spec.io/v1alpha2", Kind: "TrafficSplit", Namespace: "bookstore", Name: "bookstore-split",
					Raw: json.RawMessage(`{"apiVersion":"split.smi-spec.io/v1alpha2","kind":"TrafficSplit","metadata":{"name":"bookstore-split","namespace":"bookstore"},"spec":{"backends":[{"service":"bookstore-v1","weight":1}],"service":"bookstore"}}`),
				},
			},
		},
		{
			name: "namespace defaults to default, and to osm-system for a MeshConfig",
			data: "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata:\n  name: t\n---\n" +
				"apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\nmetadata:\n  name: osm-mesh-config\n  namespace: \"\"\n",
			want: []Resource{
				{
					APIVersion: "specs.smi-spec.io/v1alpha4", Kind: "TCPRoute", Namespace: "default", Name: "t",
					Raw: json.RawMessage(`{"apiVersion":"specs.smi-spec.io/v1alpha4","kind":"TCPRoute","metadata":{"name":"t","namespace":"default"}}`),
				},
				{
					APIVersion: "config.openservicemesh.io/v1alpha2", Kind: "MeshConfig", Namespace: "osm-system", Name: "osm-mesh-config",
					Raw: json.RawMessage(`{"apiVersion":"config.openservicemesh.io/v1alpha2","kind":"MeshConfig","metadata":{"name":"osm-mesh-config","namespace":"osm-system"}}`),
				},
			},
		},
		{name: "empty input", data: ""},
		{name: "only separators and comments", data: "---\n# nothing\n---\n\n--- \n"},
		{name: "null document", data: "---\nnull\n---\n~\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.data)
			if tc.file != "" {
				data = readTestdata(t, tc.file)
			}
			got, err := Decode(data, tc.file)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("resources (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecodeCanonical checks that the same object written as YAML (with a
// comment and another key order) and as JSON has the same Raw, so re-applying it
// in either form changes nothing.
func TestDecodeCanonical(t *testing.T) {
	fromYAML, err := Decode(readTestdata(t, "bookstore/traffic-split-50-50.yaml"), "")
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := Decode(readTestdata(t, "decode/traffic-split.json"), "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromYAML, fromJSON); diff != "" {
		t.Errorf("YAML and JSON forms differ (-yaml +json):\n%s", diff)
	}
	again, err := Decode(fromYAML[0].Raw, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromYAML, again); diff != "" {
		t.Errorf("decoding Raw again changed the resource (-first +again):\n%s", diff)
	}
}

// TestResourceJSON checks that resources written indented, as a store file is,
// read back with the same Raw, HTML characters included.
func TestResourceJSON(t *testing.T) {
	rs, err := Decode(readTestdata(t, "valid.yaml"), "valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rs[3].Raw), `\u0026`) {
		t.Fatalf("want an escaped '&' in %s to exercise escaping", rs[3].Raw)
	}
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var got []Resource
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rs, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestRef(t *testing.T) {
	r := Resource{Kind: "TrafficSplit", Namespace: "bookstore", Name: "bookstore-split"}
	if got, want := r.Ref(), "TrafficSplit bookstore/bookstore-split"; got != want {
		t.Errorf("Ref() = %q; want %q", got, want)
	}
}
