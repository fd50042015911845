// Package manifests renders the Kubernetes manifests Trellis installs: the
// CustomResourceDefinitions of every kind it accepts (SMI, OSM policy and
// config, and the Gateway API routes it reads for mesh traffic), from one table
// so that what is installed and what the Kubernetes source watches cannot
// drift. The CLI and the tests import it.
//
// The SMI and OSM kinds' schemas are the files in schemas/, one per kind; the
// Gateway API routes' CRDs are the Gateway API's own, copied into gateway/
// from the module go.mod pins (hack/gateway-crds.sh).
package manifests

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:generate ../../hack/gateway-crds.sh

//go:embed schemas/*.yaml
var schemaFiles embed.FS

//go:embed gateway/*.yaml
var gatewayFiles embed.FS

// PartOfLabel marks every object Trellis installs, the CRDs included.
const PartOfLabel = "app.kubernetes.io/part-of"

// CRD describes one CustomResourceDefinition.
type CRD struct {
	Group      string
	Kind       string
	Plural     string
	ShortNames []string
	// Versions served, the storage version first.
	Versions []string
	// Status says the kind has a status subresource (Trellis writes conditions).
	Status bool
	// Upstream names the file of gateway/ that holds the CRD as its own
	// project publishes it; Trellis adds only its label. Empty: the CRD is
	// rendered here, with the schema of schemas/<plural>.yaml.
	Upstream string
}

// Name is the CRD's object name, plural.group.
func (c CRD) Name() string { return c.Plural + "." + c.Group }

// CRDs lists every custom resource Trellis accepts, at the versions OSM
// served them (OSM-COMPAT) and Gateway API v1 for routes (whose CRD also
// serves v1beta1, as the Gateway API's does; Trellis reads v1).
func CRDs() []CRD {
	return []CRD{
		{Group: "access.smi-spec.io", Kind: "TrafficTarget", Plural: "traffictargets", ShortNames: []string{"tt"}, Versions: []string{"v1alpha3"}, Status: true},
		{Group: "specs.smi-spec.io", Kind: "HTTPRouteGroup", Plural: "httproutegroups", ShortNames: []string{"htr"}, Versions: []string{"v1alpha4"}, Status: true},
		{Group: "specs.smi-spec.io", Kind: "TCPRoute", Plural: "tcproutes", ShortNames: []string{"tr"}, Versions: []string{"v1alpha4"}, Status: true},
		{Group: "split.smi-spec.io", Kind: "TrafficSplit", Plural: "trafficsplits", ShortNames: []string{"ts"}, Versions: []string{"v1alpha2"}, Status: true},
		{Group: "config.openservicemesh.io", Kind: "MeshConfig", Plural: "meshconfigs", ShortNames: []string{"meshconfig"}, Versions: []string{"v1alpha2", "v1alpha1"}, Status: true},
		{Group: "policy.openservicemesh.io", Kind: "Egress", Plural: "egresses", ShortNames: []string{"egress"}, Versions: []string{"v1alpha1"}, Status: true},
		{Group: "policy.openservicemesh.io", Kind: "IngressBackend", Plural: "ingressbackends", ShortNames: []string{"ingressbackend"}, Versions: []string{"v1alpha1"}, Status: true},
		{Group: "policy.openservicemesh.io", Kind: "Retry", Plural: "retries", ShortNames: []string{"retry"}, Versions: []string{"v1alpha1"}, Status: true},
		{Group: "policy.openservicemesh.io", Kind: "UpstreamTrafficSetting", Plural: "upstreamtrafficsettings", ShortNames: []string{"upstreamtrafficsetting"}, Versions: []string{"v1alpha1"}, Status: true},
		{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Plural: "httproutes", Versions: []string{"v1", "v1beta1"}, Status: true, Upstream: "gateway.networking.k8s.io_httproutes.yaml"},
		{Group: "gateway.networking.k8s.io", Kind: "GRPCRoute", Plural: "grpcroutes", Versions: []string{"v1"}, Status: true, Upstream: "gateway.networking.k8s.io_grpcroutes.yaml"},
	}
}

// MeshConfigV1alpha2Only lists the MeshConfig spec fields that v1alpha1 lacks
// (OSM-COMPAT 3.2): the v1alpha1 schema is the v1alpha2 one without them, so
// that the API server refuses them in a v1alpha1 object, as OSM's did, and the
// translator refuses them in one applied locally.
func MeshConfigV1alpha2Only() []string {
	return []string{
		"spec.sidecar.tlsMinProtocolVersion",
		"spec.sidecar.tlsMaxProtocolVersion",
		"spec.sidecar.cipherSuites",
		"spec.sidecar.ecdhCurves",
		"spec.sidecar.localProxyMode",
		"spec.traffic.outboundIPRangeInclusionList",
		"spec.traffic.networkInterfaceExclusionList",
	}
}

// Schema returns the openAPIV3Schema of version of the CRD, as installed, or
// an error if the CRD has no such version.
func (c CRD) Schema(version string) (map[string]any, error) {
	if c.Upstream != "" {
		var crd struct {
			Spec struct {
				Versions []struct {
					Name   string `json:"name"`
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		b, err := gatewayFiles.ReadFile("gateway/" + c.Upstream)
		if err != nil {
			return nil, err
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			return nil, fmt.Errorf("%s: %w", c.Upstream, err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Name == version {
				return v.Schema.OpenAPIV3Schema, nil
			}
		}
		return nil, fmt.Errorf("CRD %s has no version %s", c.Name(), version)
	}
	served := false
	for _, v := range c.Versions {
		served = served || v == version
	}
	if !served {
		return nil, fmt.Errorf("CRD %s has no version %s", c.Name(), version)
	}
	b, err := schemaFiles.ReadFile("schemas/" + c.Plural + ".yaml")
	if err != nil {
		return nil, err
	}
	var s map[string]any
	if err := yaml.UnmarshalStrict(b, &s); err != nil {
		return nil, fmt.Errorf("schemas/%s.yaml: %w", c.Plural, err)
	}
	if c.Kind == "MeshConfig" && version == "v1alpha1" {
		for _, f := range MeshConfigV1alpha2Only() {
			if err := deleteField(s, f); err != nil {
				return nil, fmt.Errorf("schemas/%s.yaml: %w", c.Plural, err)
			}
		}
	}
	if c.Status {
		props, _ := s["properties"].(map[string]any)
		if props == nil {
			return nil, fmt.Errorf("schemas/%s.yaml: no properties", c.Plural)
		}
		// Trellis writes conditions (internal/source/kube/status.go) and
		// keeps what others write, such as OSM's currentStatus.
		props["status"] = map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
	}
	return s, nil
}

// deleteField removes the property at a dotted path from a schema.
func deleteField(s map[string]any, path string) error {
	parts := strings.Split(path, ".")
	for i, p := range parts {
		props, _ := s["properties"].(map[string]any)
		if _, ok := props[p]; !ok {
			return fmt.Errorf("no field %s", strings.Join(parts[:i+1], "."))
		}
		if i == len(parts)-1 {
			delete(props, p)
			return nil
		}
		s, _ = props[p].(map[string]any)
	}
	return nil
}

// render returns the CRD as one YAML document.
func (c CRD) render() ([]byte, error) {
	if c.Upstream != "" {
		b, err := gatewayFiles.ReadFile("gateway/" + c.Upstream)
		if err != nil {
			return nil, err
		}
		// The upstream file as published, with Trellis's label added: it
		// says who installed the CRD, and the file stays easy to compare.
		const meta = "\nmetadata:\n"
		i := bytes.Index(b, []byte(meta))
		if i < 0 {
			return nil, fmt.Errorf("%s: no metadata", c.Upstream)
		}
		i += len(meta)
		var out bytes.Buffer
		out.Write(b[:i])
		out.WriteString("  labels:\n    " + PartOfLabel + ": trellis\n")
		out.Write(b[i:])
		return out.Bytes(), nil
	}
	names := map[string]any{"kind": c.Kind, "listKind": c.Kind + "List", "plural": c.Plural, "singular": strings.ToLower(c.Kind)}
	if len(c.ShortNames) > 0 {
		names["shortNames"] = c.ShortNames
	}
	var versions []any
	for i, v := range c.Versions {
		s, err := c.Schema(v)
		if err != nil {
			return nil, err
		}
		ver := map[string]any{"name": v, "served": true, "storage": i == 0, "schema": map[string]any{"openAPIV3Schema": s}}
		if c.Status {
			ver["subresources"] = map[string]any{"status": map[string]any{}}
		}
		versions = append(versions, ver)
	}
	crd := map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": c.Name(), "labels": map[string]any{PartOfLabel: "trellis"}},
		"spec": map[string]any{
			"group": c.Group, "scope": "Namespaced", "names": names, "versions": versions,
		},
	}
	j, err := json.Marshal(crd)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// CRDsYAML renders every CRD as one multi-document YAML stream, the
// documents separated by "---" lines.
func CRDsYAML() []byte {
	var b bytes.Buffer
	for i, c := range CRDs() {
		if i > 0 {
			b.WriteString("---\n")
		}
		doc, err := c.render()
		if err != nil {
			panic(fmt.Sprintf("manifests: CRD %s does not render: %v", c.Name(), err)) // the table and the embedded files are fixed
		}
		b.Write(doc)
	}
	return b.Bytes()
}
