// Package smi holds Go types for the Service Mesh Interface kinds Trellis accepts:
// TrafficSplit (split.smi-spec.io/v1alpha2), HTTPRouteGroup and TCPRoute
// (specs.smi-spec.io/v1alpha4) and TrafficTarget (access.smi-spec.io/v1alpha3),
// at the versions Open Service Mesh serves. They are plain structs with JSON tags.
//
// The types are hand-written because the SMI SDK module is unmaintained and pulls
// old Kubernetes modules; TypeMeta and ObjectMeta here stand in for the Kubernetes
// ones for the same reason. The package imports only the standard library, and any
// package may import it: the local store, the translator and the Kubernetes source.
package smi

import "encoding/json"

// API versions of the SMI kinds Trellis accepts.
const (
	SplitAPIVersion  = "split.smi-spec.io/v1alpha2"
	SpecsAPIVersion  = "specs.smi-spec.io/v1alpha4"
	AccessAPIVersion = "access.smi-spec.io/v1alpha3"
)

// Kind names.
const (
	KindTrafficSplit   = "TrafficSplit"
	KindHTTPRouteGroup = "HTTPRouteGroup"
	KindTCPRoute       = "TCPRoute"
	KindTrafficTarget  = "TrafficTarget"
	KindServiceAccount = "ServiceAccount"
)

// TypeMeta says what an object is. It is embedded without a name, so its fields
// sit at the top level of the object, as in Kubernetes.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta names an object. Besides the fields Trellis reads (name, namespace,
// labels, annotations) it carries the fields a Kubernetes API server adds, so that
// objects exported with `kubectl get -o yaml` decode strictly; Trellis ignores them.
type ObjectMeta struct {
	Name        string            `json:"name,omitempty"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`

	// Set by a Kubernetes API server; ignored.
	GenerateName               string          `json:"generateName,omitempty"`
	UID                        string          `json:"uid,omitempty"`
	ResourceVersion            string          `json:"resourceVersion,omitempty"`
	Generation                 int64           `json:"generation,omitempty"`
	CreationTimestamp          string          `json:"creationTimestamp,omitempty"`
	DeletionTimestamp          string          `json:"deletionTimestamp,omitempty"`
	DeletionGracePeriodSeconds *int64          `json:"deletionGracePeriodSeconds,omitempty"`
	SelfLink                   string          `json:"selfLink,omitempty"`
	Finalizers                 []string        `json:"finalizers,omitempty"`
	OwnerReferences            json.RawMessage `json:"ownerReferences,omitempty"`
	ManagedFields              json.RawMessage `json:"managedFields,omitempty"`
}

// TrafficSplit (split.smi-spec.io/v1alpha2) divides the requests for a root
// service among backend services by weight.
type TrafficSplit struct {
	TypeMeta
	ObjectMeta `json:"metadata,omitempty"`
	Spec       TrafficSplitSpec `json:"spec,omitempty"`
}

// TrafficSplitSpec is a TrafficSplit's spec.
type TrafficSplitSpec struct {
	// Service is the root service: "name", "name.namespace" or the FQDN
	// "name.namespace.svc.cluster.local".
	Service  string                `json:"service,omitempty"`
	Backends []TrafficSplitBackend `json:"backends,omitempty"`
}

// TrafficSplitBackend is one backend service of a TrafficSplit, in the split's
// namespace.
type TrafficSplitBackend struct {
	Service string `json:"service,omitempty"`
	// Weight is the backend's share relative to the sum of all weights.
	Weight int `json:"weight"`
}

// HTTPRouteGroup (specs.smi-spec.io/v1alpha4) is a set of named HTTP request
// matches that TrafficTargets refer to.
type HTTPRouteGroup struct {
	TypeMeta
	ObjectMeta `json:"metadata,omitempty"`
	Spec       HTTPRouteGroupSpec `json:"spec,omitempty"`
}

// HTTPRouteGroupSpec is an HTTPRouteGroup's spec.
type HTTPRouteGroupSpec struct {
	Matches []HTTPMatch `json:"matches,omitempty"`
}

// HTTPMatch is one named request match. Empty fields match everything.
type HTTPMatch struct {
	Name string `json:"name,omitempty"`
	// PathRegex is a regular expression the request path must match.
	PathRegex string `json:"pathRegex,omitempty"`
	// Methods are upper-case HTTP methods, or "*" for any.
	Methods []string `json:"methods,omitempty"`
	// Headers is a list of single-key maps: header name → value regex.
	Headers []map[string]string `json:"headers,omitempty"`
}

// TCPRoute (specs.smi-spec.io/v1alpha4) names the ports a TrafficTarget allows
// for opaque TCP.
type TCPRoute struct {
	TypeMeta
	ObjectMeta `json:"metadata,omitempty"`
	Spec       TCPRouteSpec `json:"spec,omitempty"`
}

// TCPRouteSpec is a TCPRoute's spec.
type TCPRouteSpec struct {
	Matches TCPMatch `json:"matches,omitempty"`
}

// TCPMatch lists destination ports; none means every port.
type TCPMatch struct {
	Ports []int `json:"ports,omitempty"`
}

// TrafficTarget (access.smi-spec.io/v1alpha3) allows source service accounts to
// call a destination service account over the listed routes.
type TrafficTarget struct {
	TypeMeta
	ObjectMeta `json:"metadata,omitempty"`
	Spec       TrafficTargetSpec `json:"spec,omitempty"`
}

// TrafficTargetSpec is a TrafficTarget's spec.
type TrafficTargetSpec struct {
	Destination IdentityBindingSubject   `json:"destination,omitempty"`
	Rules       []TrafficTargetRule      `json:"rules,omitempty"`
	Sources     []IdentityBindingSubject `json:"sources,omitempty"`
}

// IdentityBindingSubject names an identity: a ServiceAccount in a namespace.
type IdentityBindingSubject struct {
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// TrafficTargetRule narrows a TrafficTarget to a route (HTTPRouteGroup or
// TCPRoute) and, for an HTTPRouteGroup, to some of its matches by name.
type TrafficTargetRule struct {
	Kind    string   `json:"kind,omitempty"`
	Name    string   `json:"name,omitempty"`
	Matches []string `json:"matches,omitempty"`
}
