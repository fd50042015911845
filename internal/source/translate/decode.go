package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/api/osm"
	"github.com/trellis-mesh/trellis/api/smi"
)

// DefaultNamespace is the namespace of an object that names none, except a
// MeshConfig, which defaults to osm.DefaultMeshConfigNamespace.
const DefaultNamespace = "default"

// Resource is one accepted object as applied: its type, its name and its
// canonical JSON.
type Resource struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	// Raw is the whole object as compact JSON with sorted keys and
	// metadata.namespace filled in, so equal objects have equal Raw.
	Raw json.RawMessage `json:"raw"`
}

// Ref names the resource as "Kind namespace/name", the form problems use.
func (r Resource) Ref() string { return r.Kind + " " + r.Namespace + "/" + r.Name }

// UnmarshalJSON decodes a Resource and compacts Raw, so that a resource written
// indented (as a store file is) reads back with the Raw it was written with.
func (r *Resource) UnmarshalJSON(b []byte) error {
	type plain Resource
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if len(p.Raw) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, p.Raw); err != nil {
			return err
		}
		p.Raw = buf.Bytes()
	}
	*r = Resource(p)
	return nil
}

// kindInfo is an accepted apiVersion and kind.
type kindInfo struct{ apiVersion, kind string }

// acceptedKinds lists what Decode and Translate accept, in the order error
// messages list them.
func acceptedKinds() []kindInfo {
	return []kindInfo{
		{smi.AccessAPIVersion, smi.KindTrafficTarget},
		{smi.SpecsAPIVersion, smi.KindHTTPRouteGroup},
		{smi.SpecsAPIVersion, smi.KindTCPRoute},
		{smi.SplitAPIVersion, smi.KindTrafficSplit},
		{osm.PolicyAPIVersion, osm.KindIngressBackend},
		{osm.PolicyAPIVersion, osm.KindEgress},
		{osm.PolicyAPIVersion, osm.KindRetry},
		{osm.PolicyAPIVersion, osm.KindUpstreamTrafficSetting},
		{osm.ConfigAPIVersion, osm.KindMeshConfig},
		{osm.ConfigAPIVersionV1alpha1, osm.KindMeshConfig},
		{GatewayAPIVersion, KindHTTPRoute},
		{GatewayAPIVersion, KindGRPCRoute},
		{GatewayAPIVersionV1beta1, KindHTTPRoute},
	}
}

func accepted(apiVersion, kind string) bool {
	for _, k := range acceptedKinds() {
		if k.apiVersion == apiVersion && k.kind == kind {
			return true
		}
	}
	return false
}

// NotAcceptedError rejects an object whose apiVersion and kind Trellis does not
// accept.
type NotAcceptedError struct {
	APIVersion string
	Kind       string
}

func (e *NotAcceptedError) Error() string {
	if use := useInstead(e.Kind); use != "" {
		return fmt.Sprintf("apiVersion %s kind %s is not accepted: use %s", e.APIVersion, e.Kind, use)
	}
	return fmt.Sprintf("apiVersion %s kind %s is not accepted; Trellis accepts %s", e.APIVersion, e.Kind, acceptedList())
}

// useInstead says which apiVersion (and kind, if its case differs) to use for
// kind, or "" if no version of kind is accepted.
func useInstead(kind string) string {
	var versions []string
	exact := ""
	for _, k := range acceptedKinds() {
		if strings.EqualFold(k.kind, kind) {
			versions = append(versions, k.apiVersion)
			exact = k.kind
		}
	}
	switch {
	case len(versions) == 0:
		return ""
	case exact != kind:
		return "apiVersion " + strings.Join(versions, " or ") + " and kind " + exact
	}
	return "apiVersion " + strings.Join(versions, " or ")
}

// acceptedList lists the accepted kinds grouped by apiVersion.
func acceptedList() string {
	var groups []string
	var kinds []string
	ks := acceptedKinds()
	for i, k := range ks {
		kinds = append(kinds, k.kind)
		if i == len(ks)-1 || ks[i+1].apiVersion != k.apiVersion {
			groups = append(groups, strings.Join(kinds, ", ")+" ("+k.apiVersion+")")
			kinds = nil
		}
	}
	return strings.Join(groups, "; ")
}

// DecodeError is a document Decode could not take.
type DecodeError struct {
	// Source is the name of the input, such as a file name; may be empty.
	Source string
	// Document is the document's position among the non-empty documents of the
	// input, from 1.
	Document int
	// Item is the position in a List's items, from 0, or -1 outside a List.
	Item int
	// Line is the line of the input the error is at or near (YAML syntax
	// errors), or where the document starts, from 1.
	Line int
	// Object is "Kind namespace/name" when known.
	Object string
	Err    error
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	switch {
	case e.Source != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.Source, e.Line)
	case e.Source != "":
		fmt.Fprintf(&b, "%s: ", e.Source)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	fmt.Fprintf(&b, "document %d", e.Document)
	if e.Item >= 0 {
		fmt.Fprintf(&b, ", items[%d]", e.Item)
	}
	if e.Object != "" {
		fmt.Fprintf(&b, " (%s)", e.Object)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *DecodeError) Unwrap() error { return e.Err }

// syntaxError is a YAML parser error restated with the document's line numbers.
type syntaxError struct {
	msg string
	err error
}

func (e *syntaxError) Error() string { return e.msg }
func (e *syntaxError) Unwrap() error { return e.err }

// document is one YAML document of an input.
type document struct {
	index     int // among non-empty documents, from 1
	startLine int // first line of the document's text, from 1
	firstLine int // first line with content, from 1
	text      []byte
}

// Decode reads objects from data: YAML documents separated by "---" lines, or
// JSON, where a document of kind List contributes its items. Empty documents are
// skipped. Each object must be of an accepted apiVersion and kind and have
// metadata.name; metadata.namespace defaults to "default", or "osm-system" for a
// MeshConfig. source names data in errors (a file name, or "" for none). Every
// bad document is reported, each as a *DecodeError, joined; nothing is returned
// then.
func Decode(data []byte, source string) ([]Resource, error) {
	var out []Resource
	var errs []error
	for _, d := range splitDocuments(data) {
		rs, err := decodeDocument(d, source)
		if err != nil {
			errs = append(errs, err...)
			continue
		}
		out = append(out, rs...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// splitDocuments cuts data at "---" lines and drops documents with nothing but
// blank lines and comments.
func splitDocuments(data []byte) []document {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var docs []document
	var cur bytes.Buffer
	start, first := 1, 0
	flush := func() {
		if first > 0 {
			docs = append(docs, document{index: len(docs) + 1, startLine: start, firstLine: first, text: bytes.Clone(cur.Bytes())})
		}
		cur.Reset()
		first = 0
	}
	for n, line := range bytes.SplitAfter(data, []byte("\n")) {
		lineNo := n + 1
		trimmed := bytes.TrimRight(line, " \t\r\n")
		if bytes.HasPrefix(trimmed, []byte("---")) && (len(trimmed) == 3 || trimmed[3] == ' ' || trimmed[3] == '\t') {
			flush()
			start = lineNo + 1
			continue
		}
		content := bytes.TrimSpace(line)
		if first == 0 && len(content) > 0 && content[0] != '#' {
			first = lineNo
		}
		cur.Write(line)
	}
	flush()
	return docs
}

// yamlLine finds the parser's line in a YAML error message.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?(?:unmarshal errors:\s*)?line (\d+): (.*)$`)

func decodeDocument(d document, source string) ([]Resource, []error) {
	fail := func(item, line int, object string, err error) []error {
		if line == 0 {
			line = d.firstLine
		}
		return []error{&DecodeError{Source: source, Document: d.index, Item: item, Line: line, Object: object, Err: err}}
	}
	j, err := toJSON(d.text)
	if err != nil {
		msg := strings.TrimPrefix(strings.TrimSpace(err.Error()), "error converting YAML to JSON: ")
		line := 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil {
				line = d.startLine + n - 1
				msg = m[2]
			}
		}
		msg = strings.TrimPrefix(msg, "yaml: ")
		if line > 0 {
			// The parser's line is sometimes the one before the mistake.
			msg += fmt.Sprintf(" (at or near line %d)", line)
		}
		return nil, fail(-1, line, "", &syntaxError{msg: "invalid YAML: " + msg + ": fix the syntax", err: err})
	}
	v, err := decodeJSON(j)
	if err != nil {
		return nil, fail(-1, 0, "", fmt.Errorf("invalid JSON: %w", err))
	}
	if v == nil {
		return nil, nil // a document of just "null" or "~"
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fail(-1, 0, "", fmt.Errorf("is %s, not an object: each document must be one object with apiVersion, kind and metadata.name", describe(v)))
	}
	if kind, _ := obj["kind"].(string); kind == "List" {
		items, ok := obj["items"].([]any)
		if !ok && obj["items"] != nil {
			return nil, fail(-1, 0, "", fmt.Errorf("items is %s: a List's items must be a list of objects", describe(obj["items"])))
		}
		var out []Resource
		var errs []error
		for i, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				errs = append(errs, fail(i, 0, "", fmt.Errorf("is %s, not an object", describe(it)))...)
				continue
			}
			r, object, err := resourceOf(m)
			if err != nil {
				errs = append(errs, fail(i, 0, object, err)...)
				continue
			}
			out = append(out, r)
		}
		return out, errs
	}
	r, object, err := resourceOf(obj)
	if err != nil {
		return nil, fail(-1, 0, object, err)
	}
	return []Resource{r}, nil
}

// toJSON converts one YAML or JSON document to JSON. JSON is taken as is, so
// that tabs (which YAML forbids for indentation) do not trip it.
func toJSON(text []byte) ([]byte, error) {
	t := bytes.TrimSpace(text)
	if len(t) > 0 && (t[0] == '{' || t[0] == '[') && json.Valid(t) {
		return t, nil
	}
	return yaml.YAMLToJSONStrict(text)
}

// decodeJSON decodes one JSON value keeping numbers exact.
func decodeJSON(j []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one value in a document: separate objects with --- lines")
	}
	return v, nil
}

// resourceOf checks an object's type and name and makes its Resource. object is
// its "Kind namespace/name", as far as known.
func resourceOf(obj map[string]any) (r Resource, object string, err error) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	switch {
	case kind == "":
		return r, "", errors.New("kind is missing: add the object's kind, such as TrafficSplit")
	case apiVersion == "":
		if use := useInstead(kind); use != "" {
			return r, "", fmt.Errorf("apiVersion is missing: add it (use %s)", use)
		}
		return r, "", fmt.Errorf("apiVersion is missing, and kind %s is not accepted; Trellis accepts %s", kind, acceptedList())
	case !accepted(apiVersion, kind):
		return r, "", &NotAcceptedError{APIVersion: apiVersion, Kind: kind}
	}
	meta, ok := obj["metadata"].(map[string]any)
	if !ok {
		return r, "", fmt.Errorf("%s has no metadata: add metadata.name", kind)
	}
	name, _ := meta["name"].(string)
	if name == "" {
		return r, "", fmt.Errorf("%s has no metadata.name: name it", kind)
	}
	ns := DefaultNamespace
	if kind == osm.KindMeshConfig {
		ns = osm.DefaultMeshConfigNamespace
	}
	switch v := meta["namespace"].(type) {
	case nil:
	case string:
		if v != "" {
			ns = v
		}
	default:
		return r, "", fmt.Errorf("%s %s: metadata.namespace is %s: it must be a string", kind, name, describe(v))
	}
	object = kind + " " + ns + "/" + name
	if !isDNSSubdomain(name) {
		return r, object, fmt.Errorf("metadata.name %q is not valid: use at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", name)
	}
	if !isDNSLabel(ns) {
		return r, object, fmt.Errorf("metadata.namespace %q is not valid: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit", ns)
	}
	meta["namespace"] = ns
	raw, err := json.Marshal(obj)
	if err != nil {
		return r, object, fmt.Errorf("cannot encode the object: %w", err)
	}
	return Resource{APIVersion: apiVersion, Kind: kind, Namespace: ns, Name: name, Raw: raw}, object, nil
}

// isDNSLabel reports whether s is an RFC 1123 label, as Kubernetes namespaces and
// service names are: at most 63 lower-case letters, digits and '-', starting and
// ending with a letter or digit.
func isDNSLabel(s string) bool { return len(s) <= 63 && isLabel(s) }

// isDNSSubdomain reports whether s is an RFC 1123 subdomain, as most Kubernetes
// object names are: at most 253 characters of dot-separated labels.
func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

// isLabel reports whether s is non-empty lower-case letters, digits and '-',
// starting and ending with a letter or digit.
func isLabel(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// describe says what kind of JSON value v is, for messages.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return "the boolean " + strconv.FormatBool(v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
