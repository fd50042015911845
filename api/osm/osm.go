// Package osm holds Go types for the Open Service Mesh kinds Trellis accepts:
// MeshConfig (config.openservicemesh.io v1alpha2 and v1alpha1) and the policy
// kinds IngressBackend, Egress, Retry and UpstreamTrafficSetting
// (policy.openservicemesh.io/v1alpha1), with the schemas of OSM v1.2.4. They are
// plain, hand-written structs with JSON tags so that no Kubernetes module is
// needed; object metadata reuses the api/smi types. Fields whose absence means
// something (an OSM default of true, say) are pointers. Any package may import it.
package osm

import (
	"encoding/json"

	"github.com/trellis-mesh/trellis/api/smi"
)

// API versions of the OSM kinds Trellis accepts.
const (
	ConfigAPIVersion         = "config.openservicemesh.io/v1alpha2"
	ConfigAPIVersionV1alpha1 = "config.openservicemesh.io/v1alpha1"
	PolicyAPIVersion         = "policy.openservicemesh.io/v1alpha1"
)

// Kind names.
const (
	KindMeshConfig             = "MeshConfig"
	KindIngressBackend         = "IngressBackend"
	KindEgress                 = "Egress"
	KindRetry                  = "Retry"
	KindUpstreamTrafficSetting = "UpstreamTrafficSetting"
)

// DefaultMeshConfigNamespace is the namespace of a MeshConfig that names none:
// OSM's control-plane namespace.
const DefaultMeshConfigNamespace = "osm-system"

// MeshConfig holds mesh-wide settings. Both served versions decode into this
// type; v1alpha1 lacks the fields marked "v1alpha2 only".
type MeshConfig struct {
	smi.TypeMeta
	smi.ObjectMeta `json:"metadata,omitempty"`
	Spec           MeshConfigSpec `json:"spec,omitempty"`
}

// MeshConfigSpec is a MeshConfig's spec.
type MeshConfigSpec struct {
	Sidecar       SidecarSpec       `json:"sidecar,omitempty"`
	Traffic       TrafficSpec       `json:"traffic,omitempty"`
	Observability ObservabilitySpec `json:"observability,omitempty"`
	Certificate   CertificateSpec   `json:"certificate,omitempty"`
	FeatureFlags  FeatureFlags      `json:"featureFlags,omitempty"`
}

// SidecarSpec configures the sidecar proxies.
type SidecarSpec struct {
	EnablePrivilegedInitContainer *bool `json:"enablePrivilegedInitContainer,omitempty"`
	// LogLevel is one of trace, debug, info, warning, warn, error, critical, off.
	LogLevel           string `json:"logLevel,omitempty"`
	EnvoyImage         string `json:"envoyImage,omitempty"`
	EnvoyWindowsImage  string `json:"envoyWindowsImage,omitempty"`
	InitContainerImage string `json:"initContainerImage,omitempty"`
	// MaxDataPlaneConnections limits sidecar connections; 0 means unlimited.
	MaxDataPlaneConnections int `json:"maxDataPlaneConnections,omitempty"`
	// ConfigResyncInterval is a duration such as "90s"; "0s" disables resync.
	ConfigResyncInterval string `json:"configResyncInterval,omitempty"`
	// Resources is a Kubernetes ResourceRequirements object, kept as given.
	Resources json.RawMessage `json:"resources,omitempty"`
	// TLSMinProtocolVersion is one of TLS_AUTO, TLSv1_0, TLSv1_1, TLSv1_2,
	// TLSv1_3 (v1alpha2 only); so is TLSMaxProtocolVersion.
	TLSMinProtocolVersion string `json:"tlsMinProtocolVersion,omitempty"`
	TLSMaxProtocolVersion string `json:"tlsMaxProtocolVersion,omitempty"`
	// CipherSuites and ECDHCurves are v1alpha2 only.
	CipherSuites []string `json:"cipherSuites,omitempty"`
	ECDHCurves   []string `json:"ecdhCurves,omitempty"`
	// LocalProxyMode is Localhost or PodIP (v1alpha2 only).
	LocalProxyMode string `json:"localProxyMode,omitempty"`
}

// TrafficSpec configures traffic management.
type TrafficSpec struct {
	// EnableEgress lets workloads reach destinations outside the mesh; OSM's
	// default is true.
	EnableEgress *bool `json:"enableEgress,omitempty"`
	// EnablePermissiveTrafficPolicyMode lets any meshed workload call any
	// service without a TrafficTarget; OSM's default is true.
	EnablePermissiveTrafficPolicyMode *bool    `json:"enablePermissiveTrafficPolicyMode,omitempty"`
	OutboundIPRangeExclusionList      []string `json:"outboundIPRangeExclusionList,omitempty"`
	// OutboundIPRangeInclusionList is v1alpha2 only.
	OutboundIPRangeInclusionList []string          `json:"outboundIPRangeInclusionList,omitempty"`
	OutboundPortExclusionList    []int             `json:"outboundPortExclusionList,omitempty"`
	InboundPortExclusionList     []int             `json:"inboundPortExclusionList,omitempty"`
	InboundExternalAuthorization ExternalAuthzSpec `json:"inboundExternalAuthorization,omitempty"`
	// NetworkInterfaceExclusionList is v1alpha2 only.
	NetworkInterfaceExclusionList []string `json:"networkInterfaceExclusionList,omitempty"`
}

// ExternalAuthzSpec configures an external authorization endpoint for inbound
// traffic.
type ExternalAuthzSpec struct {
	Enable     *bool  `json:"enable,omitempty"`
	Address    string `json:"address,omitempty"`
	Port       int    `json:"port,omitempty"`
	StatPrefix string `json:"statPrefix,omitempty"`
	// Timeout is a duration such as "1s".
	Timeout          string `json:"timeout,omitempty"`
	FailureModeAllow *bool  `json:"failureModeAllow,omitempty"`
}

// ObservabilitySpec configures logs, debugging and tracing.
type ObservabilitySpec struct {
	OSMLogLevel       string      `json:"osmLogLevel,omitempty"`
	EnableDebugServer *bool       `json:"enableDebugServer,omitempty"`
	Tracing           TracingSpec `json:"tracing,omitempty"`
}

// TracingSpec configures the tracing collector.
type TracingSpec struct {
	Enable   *bool  `json:"enable,omitempty"`
	Port     int    `json:"port,omitempty"`
	Address  string `json:"address,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
}

// CertificateSpec configures workload certificates.
type CertificateSpec struct {
	// ServiceCertValidityDuration is a duration such as "24h".
	ServiceCertValidityDuration string                  `json:"serviceCertValidityDuration,omitempty"`
	CertKeyBitSize              int                     `json:"certKeyBitSize,omitempty"`
	IngressGateway              *IngressGatewayCertSpec `json:"ingressGateway,omitempty"`
}

// IngressGatewayCertSpec configures the certificate of an ingress gateway.
type IngressGatewayCertSpec struct {
	SubjectAltNames []string `json:"subjectAltNames,omitempty"`
	// ValidityDuration is a duration such as "24h".
	ValidityDuration string          `json:"validityDuration,omitempty"`
	Secret           SecretReference `json:"secret,omitempty"`
}

// SecretReference names a Secret.
type SecretReference struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// FeatureFlags switch OSM features on and off.
type FeatureFlags struct {
	EnableWASMStats                *bool `json:"enableWASMStats,omitempty"`
	EnableEgressPolicy             *bool `json:"enableEgressPolicy,omitempty"`
	EnableMulticlusterMode         *bool `json:"enableMulticlusterMode,omitempty"` // deprecated in OSM, unused
	EnableSnapshotCacheMode        *bool `json:"enableSnapshotCacheMode,omitempty"`
	EnableAsyncProxyServiceMapping *bool `json:"enableAsyncProxyServiceMapping,omitempty"`
	EnableIngressBackendPolicy     *bool `json:"enableIngressBackendPolicy,omitempty"`
	EnableEnvoyActiveHealthChecks  *bool `json:"enableEnvoyActiveHealthChecks,omitempty"`
	EnableRetryPolicy              *bool `json:"enableRetryPolicy,omitempty"`
	EnableMeshRootCertificate      *bool `json:"enableMeshRootCertificate,omitempty"`
}

// PolicyStatus is the status OSM writes on IngressBackend and
// UpstreamTrafficSetting objects.
type PolicyStatus struct {
	CurrentStatus string `json:"currentStatus,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

// PortSpec is a port number with the protocol it serves.
type PortSpec struct {
	Number   int    `json:"number,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// TypedLocalObjectReference names an object by API group, kind and name, such as
// an HTTPRouteGroup (apiGroup specs.smi-spec.io/v1alpha4).
type TypedLocalObjectReference struct {
	APIGroup string `json:"apiGroup,omitempty"`
	Kind     string `json:"kind,omitempty"`
	Name     string `json:"name,omitempty"`
}

// IngressBackend allows sources outside the mesh (an ingress controller, say) to
// reach mesh backends.
type IngressBackend struct {
	smi.TypeMeta
	smi.ObjectMeta `json:"metadata,omitempty"`
	Spec           IngressBackendSpec `json:"spec,omitempty"`
	Status         PolicyStatus       `json:"status,omitempty"`
}

// IngressBackendSpec is an IngressBackend's spec.
type IngressBackendSpec struct {
	Backends []BackendSpec               `json:"backends,omitempty"`
	Sources  []IngressSourceSpec         `json:"sources,omitempty"`
	Matches  []TypedLocalObjectReference `json:"matches,omitempty"`
}

// BackendSpec is a backend service that accepts ingress traffic.
type BackendSpec struct {
	Name string   `json:"name,omitempty"`
	Port PortSpec `json:"port,omitempty"`
	TLS  TLSSpec  `json:"tls,omitempty"`
}

// TLSSpec configures a backend's TLS for ingress traffic.
type TLSSpec struct {
	SkipClientCertValidation *bool    `json:"skipClientCertValidation,omitempty"`
	SNIHosts                 []string `json:"sniHosts,omitempty"`
}

// IngressSourceSpec is a source of ingress traffic: kind Service,
// AuthenticatedPrincipal or IPRange.
type IngressSourceSpec struct {
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Egress allows workloads to reach destinations outside the mesh.
type Egress struct {
	smi.TypeMeta
	smi.ObjectMeta `json:"metadata,omitempty"`
	Spec           EgressSpec `json:"spec,omitempty"`
}

// EgressSpec is an Egress's spec.
type EgressSpec struct {
	Sources []EgressSourceSpec `json:"sources,omitempty"`
	// Hosts match the HTTP Host header or the TLS SNI.
	Hosts []string `json:"hosts,omitempty"`
	// IPAddresses are CIDR ranges.
	IPAddresses []string                    `json:"ipAddresses,omitempty"`
	Ports       []PortSpec                  `json:"ports,omitempty"`
	Matches     []TypedLocalObjectReference `json:"matches,omitempty"`
}

// EgressSourceSpec is a source of egress traffic: a ServiceAccount.
type EgressSourceSpec struct {
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Retry sets the retry policy from a source service account to destination
// services.
type Retry struct {
	smi.TypeMeta
	smi.ObjectMeta `json:"metadata,omitempty"`
	Spec           RetrySpec `json:"spec,omitempty"`
}

// RetrySpec is a Retry's spec.
type RetrySpec struct {
	Source       RetrySrcDstSpec   `json:"source,omitempty"`
	Destinations []RetrySrcDstSpec `json:"destinations,omitempty"`
	RetryPolicy  RetryPolicySpec   `json:"retryPolicy,omitempty"`
}

// RetrySrcDstSpec names a Retry's source (a ServiceAccount) or destination (a
// Service).
type RetrySrcDstSpec struct {
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// RetryPolicySpec is the retry policy.
type RetryPolicySpec struct {
	// RetryOn is a comma-separated list of conditions, such as "5xx".
	RetryOn string `json:"retryOn,omitempty"`
	// PerTryTimeout is a duration such as "1s".
	PerTryTimeout string `json:"perTryTimeout,omitempty"`
	NumRetries    *int   `json:"numRetries,omitempty"`
	// RetryBackoffBaseInterval is a duration; the maximum interval is ten times it.
	RetryBackoffBaseInterval string `json:"retryBackoffBaseInterval,omitempty"`
}

// UpstreamTrafficSetting sets connection limits and rate limits for traffic to an
// upstream host.
type UpstreamTrafficSetting struct {
	smi.TypeMeta
	smi.ObjectMeta `json:"metadata,omitempty"`
	Spec           UpstreamTrafficSettingSpec `json:"spec,omitempty"`
	Status         PolicyStatus               `json:"status,omitempty"`
}

// UpstreamTrafficSettingSpec is an UpstreamTrafficSetting's spec.
type UpstreamTrafficSettingSpec struct {
	// Host is a service FQDN, or a service name in the object's namespace.
	Host               string                  `json:"host,omitempty"`
	ConnectionSettings *ConnectionSettingsSpec `json:"connectionSettings,omitempty"`
	RateLimit          *RateLimitSpec          `json:"rateLimit,omitempty"`
	HTTPRoutes         []HTTPRouteSpec         `json:"httpRoutes,omitempty"`
}

// ConnectionSettingsSpec limits connections to the upstream host.
type ConnectionSettingsSpec struct {
	TCP  *TCPConnectionSettings  `json:"tcp,omitempty"`
	HTTP *HTTPConnectionSettings `json:"http,omitempty"`
}

// TCPConnectionSettings limits TCP connections; unset limits are 2^32-1.
type TCPConnectionSettings struct {
	MaxConnections *uint32 `json:"maxConnections,omitempty"`
	// ConnectTimeout is a duration; default 5s.
	ConnectTimeout string `json:"connectTimeout,omitempty"`
}

// HTTPConnectionSettings limits HTTP requests; unset limits are 2^32-1, except
// MaxRequestsPerConnection, which is unlimited.
type HTTPConnectionSettings struct {
	MaxRequests              *uint32 `json:"maxRequests,omitempty"`
	MaxRequestsPerConnection *uint32 `json:"maxRequestsPerConnection,omitempty"`
	MaxPendingRequests       *uint32 `json:"maxPendingRequests,omitempty"`
	MaxRetries               *uint32 `json:"maxRetries,omitempty"`
}

// RateLimitSpec rate-limits traffic to the upstream host.
type RateLimitSpec struct {
	Local *LocalRateLimitSpec `json:"local,omitempty"`
}

// LocalRateLimitSpec is a token-bucket rate limit applied by the upstream's
// sidecar.
type LocalRateLimitSpec struct {
	TCP  *TCPLocalRateLimitSpec  `json:"tcp,omitempty"`
	HTTP *HTTPLocalRateLimitSpec `json:"http,omitempty"`
}

// TCPLocalRateLimitSpec limits new connections per unit of time.
type TCPLocalRateLimitSpec struct {
	Connections uint32 `json:"connections,omitempty"`
	// Unit is second, minute or hour.
	Unit  string `json:"unit,omitempty"`
	Burst uint32 `json:"burst,omitempty"`
}

// HTTPLocalRateLimitSpec limits requests per unit of time.
type HTTPLocalRateLimitSpec struct {
	Requests uint32 `json:"requests,omitempty"`
	// Unit is second, minute or hour.
	Unit  string `json:"unit,omitempty"`
	Burst uint32 `json:"burst,omitempty"`
	// ResponseStatusCode answers limited requests; default 429.
	ResponseStatusCode   uint32            `json:"responseStatusCode,omitempty"`
	ResponseHeadersToAdd []HTTPHeaderValue `json:"responseHeadersToAdd,omitempty"`
}

// HTTPHeaderValue is a header name and value.
type HTTPHeaderValue struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// HTTPRouteSpec sets a rate limit for one HTTP path of the upstream host.
type HTTPRouteSpec struct {
	Path      string                     `json:"path,omitempty"`
	RateLimit *HTTPPerRouteRateLimitSpec `json:"rateLimit,omitempty"`
}

// HTTPPerRouteRateLimitSpec is a per-route rate limit.
type HTTPPerRouteRateLimitSpec struct {
	Local *HTTPLocalRateLimitSpec `json:"local,omitempty"`
}
