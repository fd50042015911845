// Package manifests renders the Kubernetes manifests Trellis installs: the
// CustomResourceDefinitions of every kind it accepts (SMI, OSM policy and
// config, and the Gateway API routes it reads for mesh traffic), from one table
// so that what is installed and what the Kubernetes source watches cannot
// drift. The CLI and the tests import it.
package manifests

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
)

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
}

// Name is the CRD's object name, plural.group.
func (c CRD) Name() string { return c.Plural + "." + c.Group }

// Protected says the group is one the API server reserves for Kubernetes
// projects (k8s.io and kubernetes.io), whose CRDs carry an approval annotation.
func (c CRD) Protected() bool {
	for _, suffix := range []string{".k8s.io", ".kubernetes.io"} {
		if strings.HasSuffix(c.Group, suffix) {
			return true
		}
	}
	return false
}

// CRDs lists every custom resource Trellis accepts, at the versions OSM
// served them (OSM-COMPAT) and Gateway API v1 for routes.
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
		{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Plural: "httproutes", Versions: []string{"v1"}, Status: true},
		{Group: "gateway.networking.k8s.io", Kind: "GRPCRoute", Plural: "grpcroutes", Versions: []string{"v1"}, Status: true},
	}
}

// crdTemplate renders a CRD whose spec schema is open: the control plane
// validates every field itself and reports what it refuses, naming the field.
var crdTemplate = template.Must(template.New("crd").Funcs(template.FuncMap{
	"lower": strings.ToLower,
}).Parse(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {{.Name}}
  labels:
    app.kubernetes.io/part-of: trellis
{{- if .Protected}}
  annotations:
    # Groups under k8s.io need this; "unapproved" marks a stand-in. Where the
    # Gateway API's own CRDs are installed, use those instead.
    api-approved.kubernetes.io: "unapproved, Trellis stand-in for the Gateway API CRDs"
{{- end}}
spec:
  group: {{.Group}}
  scope: Namespaced
  names:
    kind: {{.Kind}}
    listKind: {{.Kind}}List
    plural: {{.Plural}}
    singular: {{lower .Kind}}
{{- if .ShortNames}}
    shortNames:
{{- range .ShortNames}}
    - {{.}}
{{- end}}
{{- end}}
  versions:
{{- range $i, $v := .Versions}}
  - name: {{$v}}
    served: true
    storage: {{if eq $i 0}}true{{else}}false{{end}}
{{- if $.Status}}
    subresources:
      status: {}
{{- end}}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
{{- if $.Status}}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
{{- end}}
{{- end}}
`))

// CRDsYAML renders every CRD as one multi-document YAML stream.
func CRDsYAML() []byte {
	var b bytes.Buffer
	for i, c := range CRDs() {
		if i > 0 {
			b.WriteString("---\n")
		}
		if err := crdTemplate.Execute(&b, c); err != nil {
			panic(fmt.Sprintf("manifests: CRD %s does not render: %v", c.Name(), err)) // the table above is fixed
		}
	}
	return b.Bytes()
}
