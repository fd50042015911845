// Package model owns Trellis's internal view of the mesh: an immutable Snapshot of
// services, workloads, identities, routes, access policy and mesh settings, with a
// content hash. Sources build snapshots; the compiler reads them. It imports neither
// client-go nor wire types, so every front door (SMI, OSM, Gateway API, local
// registrations) meets here on equal terms.
package model

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// DefaultTrustDomain is the SPIFFE trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// Key names a namespaced object.
type Key struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Identity is a workload identity: a service account in a namespace.
type Identity struct {
	Namespace string `json:"namespace"`
	Account   string `json:"account"`
}

// SPIFFE returns the identity's SPIFFE ID in trust domain td.
func (i Identity) SPIFFE(td string) string {
	return "spiffe://" + td + "/ns/" + i.Namespace + "/sa/" + i.Account
}

func (i Identity) String() string { return i.Namespace + "/" + i.Account }

// Protocol names how a service port speaks. The values follow OSM's appProtocol
// vocabulary.
type Protocol string

// Protocols a service port may declare.
const (
	ProtocolHTTP           Protocol = "http"
	ProtocolTCP            Protocol = "tcp"
	ProtocolTCPServerFirst Protocol = "tcp-server-first"
	ProtocolGRPC           Protocol = "grpc"
)

// ParseProtocol maps an appProtocol or port-name prefix to a Protocol; the empty
// string means HTTP, as in OSM.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(s)); p {
	case "":
		return ProtocolHTTP, nil
	case ProtocolHTTP, ProtocolTCP, ProtocolTCPServerFirst, ProtocolGRPC:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q: use http, tcp, tcp-server-first or grpc", s)
}

// ServicePort is one port a service exposes.
type ServicePort struct {
	Port     int      `json:"port"`
	Protocol Protocol `json:"protocol"`
}

// Service is a named set of workloads reachable at service ports.
type Service struct {
	Key   Key           `json:"key"`
	Ports []ServicePort `json:"ports"`
	// Addresses are the service's virtual IPs (a Kubernetes ClusterIP, or
	// one the local control plane assigns): an app that connects to one
	// under transparent capture reaches the service.
	Addresses []netip.Addr `json:"addresses,omitempty"`
}

// Port returns the service port numbered p, if the service has it.
func (s *Service) Port(p int) (ServicePort, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return ServicePort{}, false
}

// ServiceMembership says a workload backs a service on a service port.
type ServiceMembership struct {
	Service     string   `json:"service"`
	ServicePort int      `json:"servicePort"`
	Protocol    Protocol `json:"protocol"`
}

// Workload is one running instance with its sidecar: a pod on Kubernetes, a
// `trellis run` process in local mode.
type Workload struct {
	ID       string              `json:"id"`
	Name     string              `json:"name"`
	Identity Identity            `json:"identity"`
	Services []ServiceMembership `json:"services"`
	// Address is the sidecar's inbound (mTLS) address, host:port.
	Address string `json:"address"`
	// AdminAddress is the sidecar's admin address (metrics, config), host:port.
	AdminAddress string `json:"adminAddress"`
	// Ready is true once the sidecar and the app are ready to take traffic.
	Ready bool `json:"ready"`
}

// Matches says whether the workload answers to q, as users name workloads on
// the command line: its ID, namespace/name, or name.
func (w *Workload) Matches(q string) bool {
	return w.ID == q || w.Identity.Namespace+"/"+w.Name == q || w.Name == q
}

// WeightedBackend is one leg of a traffic split.
type WeightedBackend struct {
	Service string `json:"service"`
	Weight  int    `json:"weight"`
}

// TrafficSplit divides requests for a root service among backend services.
type TrafficSplit struct {
	Key      Key               `json:"key"`
	Service  string            `json:"service"` // root service name, in Key.Namespace
	Backends []WeightedBackend `json:"backends"`
}

// HTTPMatch is one named request match of an HTTPRouteGroup. Empty fields match
// everything.
type HTTPMatch struct {
	Name      string            `json:"name"`
	PathRegex string            `json:"pathRegex,omitempty"`
	Methods   []string          `json:"methods,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"` // header name → value regex
}

// HTTPRouteGroup is a set of named HTTP matches that TrafficTargets refer to.
type HTTPRouteGroup struct {
	Key     Key         `json:"key"`
	Matches []HTTPMatch `json:"matches"`
}

// TCPRoute names the ports a TrafficTarget allows for opaque TCP.
type TCPRoute struct {
	Key   Key   `json:"key"`
	Ports []int `json:"ports,omitempty"` // empty: every port
}

// RuleKind is the kind of route a TrafficTarget rule refers to.
type RuleKind string

// Rule kinds.
const (
	RuleHTTPRouteGroup RuleKind = "HTTPRouteGroup"
	RuleTCPRoute       RuleKind = "TCPRoute"
)

// TrafficRule narrows a TrafficTarget to some routes.
type TrafficRule struct {
	Kind    RuleKind `json:"kind"`
	Name    string   `json:"name"`
	Matches []string `json:"matches,omitempty"` // names within the route group; empty: all
}

// TrafficTarget allows source identities to call a destination identity over the
// listed routes. It lives in the destination's namespace.
type TrafficTarget struct {
	Key         Key           `json:"key"`
	Destination Identity      `json:"destination"`
	Sources     []Identity    `json:"sources"`
	Rules       []TrafficRule `json:"rules"`
}

// MeshSettings are the mesh-wide switches (OSM's MeshConfig).
type MeshSettings struct {
	// TrustDomain of every identity; default cluster.local.
	TrustDomain string `json:"trustDomain"`
	// Permissive lets any meshed identity call any service; default true, as OSM.
	Permissive bool `json:"permissive"`
	// Egress lets workloads call destinations outside the mesh; default true, as OSM.
	Egress bool `json:"egress"`
	// CertValidity is the lifetime of workload certificates (OSM's
	// spec.certificate.serviceCertValidityDuration); 0 means the control plane's
	// default, 24h.
	CertValidity time.Duration `json:"certValidity,omitempty"`
	// SidecarLogLevel is the sidecars' log level (OSM's spec.sidecar.logLevel,
	// in its words: trace, debug, info, warning, warn, error, critical, off);
	// empty: each sidecar's own --log-level.
	SidecarLogLevel string `json:"sidecarLogLevel,omitempty"`
	// ControlPlaneLogLevel is the control plane's own log level (OSM's
	// spec.observability.osmLogLevel, in its words: trace, debug, info, warn,
	// warning, error, fatal, panic, disabled, off); empty: the control plane's
	// own --log-level.
	ControlPlaneLogLevel string `json:"controlPlaneLogLevel,omitempty"`
	// SidecarResources is the resources of every injected sidecar container
	// (OSM's spec.sidecar.resources), as the JSON of a Kubernetes
	// ResourceRequirements, checked and normalised; empty: none set.
	SidecarResources string `json:"sidecarResources,omitempty"`
	// Tracing is OSM's spec.observability.tracing as given: stored and shown,
	// not yet used (sidecars do not export spans to it); zero when unset.
	Tracing Tracing `json:"tracing,omitzero"`
	// Source names the MeshConfig that set these, if any.
	Source string `json:"source,omitempty"`
}

// Tracing is where a MeshConfig says spans go (OSM's
// spec.observability.tracing). Trellis stores it and shows it; no sidecar
// exports spans to it yet.
type Tracing struct {
	Enable bool `json:"enable"`
	// Address is the collector's host; OSM's default jaeger.<namespace>.svc.cluster.local.
	Address string `json:"address,omitempty"`
	// Port is the collector's port; OSM's default 9411.
	Port int `json:"port,omitempty"`
	// Endpoint is the collector's path; OSM's default /api/v2/spans.
	Endpoint string `json:"endpoint,omitempty"`
}

// DefaultMeshSettings returns OSM's defaults: permissive, egress on.
func DefaultMeshSettings() MeshSettings {
	return MeshSettings{TrustDomain: DefaultTrustDomain, Permissive: true, Egress: true}
}

// Problem is a validation finding about one resource.
type Problem struct {
	Object  string `json:"object"` // Kind namespace/name
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
	// Warning marks a finding that changes nothing the user asked for being
	// accepted: the resources stay in force, and this says how they combine.
	Warning bool `json:"warning,omitempty"`
}

func (p Problem) Error() string {
	if p.Field != "" {
		return p.Object + ": " + p.Field + ": " + p.Message
	}
	return p.Object + ": " + p.Message
}

// sortKeys orders keys by namespace then name.
func sortKeys(keys []Key) {
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Namespace != keys[j].Namespace {
			return keys[i].Namespace < keys[j].Namespace
		}
		return keys[i].Name < keys[j].Name
	})
}

// RouteKind is the Gateway API kind a Route came from.
type RouteKind string

// Route kinds.
const (
	RouteKindHTTP RouteKind = "HTTPRoute"
	RouteKindGRPC RouteKind = "GRPCRoute"
)

// Route is a Gateway API HTTPRoute or GRPCRoute attached to services (GAMMA: its
// parentRefs are Services). It takes over the routing of requests to its
// parents: a request matching no rule is answered 404.
type Route struct {
	Key     Key           `json:"key"`
	Kind    RouteKind     `json:"kind"`
	Parents []RouteParent `json:"parents"`
	Rules   []RouteRule   `json:"rules"`
	// Created orders routes of equal precedence, oldest first, as the Gateway
	// API asks; zero sorts first, then namespace/name.
	Created time.Time `json:"created,omitempty"`
}

// RouteParent is a service a Route attaches to, in the Route's namespace unless
// Namespace says otherwise.
type RouteParent struct {
	Service Key `json:"service"`
	Port    int `json:"port,omitempty"` // 0: every port of the service
}

// RouteRule is one rule of a Route: its matches (any of them; none matches every
// request), the filters applied to matching requests, and where they go.
type RouteRule struct {
	Name     string         `json:"name,omitempty"`
	Matches  []RouteMatch   `json:"matches,omitempty"`
	Filters  RouteFilters   `json:"filters,omitempty"`
	Backends []RouteBackend `json:"backends,omitempty"`
	// Timeout bounds the whole request (Gateway API timeouts.request); 0: none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// BackendTimeout bounds each try to a backend (timeouts.backendRequest); 0: none.
	BackendTimeout time.Duration `json:"backendTimeout,omitempty"`
}

// RouteBackend is a weighted backend service of a rule.
type RouteBackend struct {
	Service Key `json:"service"`
	Port    int `json:"port,omitempty"` // 0: the port the caller called
	Weight  int `json:"weight"`
}

// MatchType says how a path, header or query value is compared.
type MatchType string

// Match types of the Gateway API.
const (
	MatchExact      MatchType = "Exact"
	MatchPathPrefix MatchType = "PathPrefix"
	MatchRegex      MatchType = "RegularExpression"
)

// ValueMatch compares one named value (a header or query parameter).
type ValueMatch struct {
	Name  string    `json:"name"`
	Type  MatchType `json:"type"`
	Value string    `json:"value"`
}

// RouteMatch is one request match: every part given must hold.
type RouteMatch struct {
	PathType  MatchType    `json:"pathType,omitempty"` // empty: any path
	PathValue string       `json:"pathValue,omitempty"`
	Method    string       `json:"method,omitempty"`
	Headers   []ValueMatch `json:"headers,omitempty"`
	Query     []ValueMatch `json:"query,omitempty"`
}

// HeaderChanges edit request or response headers.
type HeaderChanges struct {
	Set    []Header `json:"set,omitempty"`
	Add    []Header `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// Header is a header name and value.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// PathChange rewrites a path: the whole path, or the prefix a PathPrefix match
// matched.
type PathChange struct {
	ReplaceFullPath    string `json:"replaceFullPath,omitempty"`
	ReplacePrefixMatch string `json:"replacePrefixMatch,omitempty"`
	// Prefix says ReplacePrefixMatch is in use (its value may be empty or "/").
	Prefix bool `json:"prefix,omitempty"`
}

// Redirect answers a request with a redirect instead of forwarding it.
type Redirect struct {
	Scheme     string      `json:"scheme,omitempty"`
	Hostname   string      `json:"hostname,omitempty"`
	Port       int         `json:"port,omitempty"`
	Path       *PathChange `json:"path,omitempty"`
	StatusCode int         `json:"statusCode"` // 301 or 302 (default 302)
}

// Rewrite changes a request before it is forwarded.
type Rewrite struct {
	Hostname string      `json:"hostname,omitempty"`
	Path     *PathChange `json:"path,omitempty"`
}

// RouteFilters are the filters of a rule, at most one of each kind.
type RouteFilters struct {
	RequestHeaders  *HeaderChanges `json:"requestHeaders,omitempty"`
	ResponseHeaders *HeaderChanges `json:"responseHeaders,omitempty"`
	Redirect        *Redirect      `json:"redirect,omitempty"`
	Rewrite         *Rewrite       `json:"rewrite,omitempty"`
}
