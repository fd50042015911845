package translate

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/trellis-mesh/trellis/api/osm"
	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/model"
)

// Fields of a MeshConfig that Trellis acts on.
const (
	fieldPermissive = "spec.traffic.enablePermissiveTrafficPolicyMode"
	fieldEgress     = "spec.traffic.enableEgress"
	fieldCertTTL    = "spec.certificate.serviceCertValidityDuration"
	fieldSidecarLog = "spec.sidecar.logLevel"
	fieldCPLog      = "spec.observability.osmLogLevel"
	// Kubernetes mode: the injector gives every sidecar these resources.
	fieldSidecarResources = "spec.sidecar.resources"
)

// actedOn says whether Trellis acts on a MeshConfig field; every other field
// set is stored and reported as not used yet.
func actedOn(field string) bool {
	switch field {
	case fieldPermissive, fieldEgress, fieldCertTTL, fieldSidecarLog, fieldCPLog, fieldSidecarResources:
		return true
	}
	return false
}

// v1alpha2OnlyFields are MeshConfig spec fields that v1alpha1 lacks; the
// v1alpha1 CRD's schema leaves out the same ones.
func v1alpha2OnlyFields() []string { return manifests.MeshConfigV1alpha2Only() }

// meshConfig reads a MeshConfig of either version into mesh settings, with OSM's
// defaults for what it leaves unset, and warns about each set field that
// Trellis does not act on.
func meshConfig(c *check, r Resource) model.MeshSettings {
	var in osm.MeshConfig
	m, ok := decodeStrict(c, r, &in)
	if !ok {
		return model.MeshSettings{}
	}
	var set []string
	setFields(m["spec"], reflect.TypeFor[osm.MeshConfigSpec](), "spec", &set)
	if r.APIVersion == osm.ConfigAPIVersionV1alpha1 {
		for _, f := range set {
			if slices.Contains(v1alpha2OnlyFields(), f) {
				c.errorf(f, "unknown field %q: remove it or check the apiVersion (the field is in %s, not %s)", f[strings.LastIndexByte(f, '.')+1:], osm.ConfigAPIVersion, r.APIVersion)
			}
		}
	}
	s := in.Spec
	oneOf(c, fieldSidecarLog, s.Sidecar.LogLevel, "trace", "debug", "info", "warning", "warn", "error", "critical", "off")
	// OSM's control plane logs with zerolog, whose level words these are.
	oneOf(c, fieldCPLog, s.Observability.OSMLogLevel, "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic", "disabled", "off")
	tls := []string{"TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"}
	oneOf(c, "spec.sidecar.tlsMinProtocolVersion", s.Sidecar.TLSMinProtocolVersion, tls...)
	oneOf(c, "spec.sidecar.tlsMaxProtocolVersion", s.Sidecar.TLSMaxProtocolVersion, tls...)
	oneOf(c, "spec.sidecar.localProxyMode", s.Sidecar.LocalProxyMode, "Localhost", "PodIP")
	if s.Sidecar.MaxDataPlaneConnections < 0 {
		c.errorf("spec.sidecar.maxDataPlaneConnections", "%d is negative: use 0 for no limit", s.Sidecar.MaxDataPlaneConnections)
	}
	duration(c, "spec.sidecar.configResyncInterval", s.Sidecar.ConfigResyncInterval)
	duration(c, "spec.traffic.inboundExternalAuthorization.timeout", s.Traffic.InboundExternalAuthorization.Timeout)
	certTTL := duration(c, fieldCertTTL, s.Certificate.ServiceCertValidityDuration)
	if d, err := time.ParseDuration(s.Certificate.ServiceCertValidityDuration); err == nil && d <= 0 {
		c.errorf(fieldCertTTL, "%q is not positive: give certificates a lifetime such as 24h", s.Certificate.ServiceCertValidityDuration)
	}
	if g := s.Certificate.IngressGateway; g != nil {
		duration(c, "spec.certificate.ingressGateway.validityDuration", g.ValidityDuration)
	}
	cidrs(c, "spec.traffic.outboundIPRangeExclusionList", s.Traffic.OutboundIPRangeExclusionList)
	cidrs(c, "spec.traffic.outboundIPRangeInclusionList", s.Traffic.OutboundIPRangeInclusionList)
	ports(c, "spec.traffic.outboundPortExclusionList", s.Traffic.OutboundPortExclusionList)
	ports(c, "spec.traffic.inboundPortExclusionList", s.Traffic.InboundPortExclusionList)
	if p := s.Traffic.InboundExternalAuthorization.Port; p != 0 {
		port(c, "spec.traffic.inboundExternalAuthorization.port", p)
	}
	if p := s.Observability.Tracing.Port; p != 0 {
		port(c, "spec.observability.tracing.port", p)
	}
	for _, f := range set {
		if !actedOn(f) {
			c.warnf(f, NotUsedYet)
		}
	}
	resources := sidecarResources(c, s.Sidecar.Resources)
	tr := s.Observability.Tracing
	return model.MeshSettings{
		TrustDomain:          model.DefaultTrustDomain,
		Permissive:           boolOr(s.Traffic.EnablePermissiveTrafficPolicyMode, true),
		Egress:               boolOr(s.Traffic.EnableEgress, true),
		CertValidity:         certTTL,
		SidecarLogLevel:      s.Sidecar.LogLevel,
		ControlPlaneLogLevel: s.Observability.OSMLogLevel,
		SidecarResources:     resources,
		Tracing:              model.Tracing{Enable: boolOr(tr.Enable, false), Address: tr.Address, Port: tr.Port, Endpoint: tr.Endpoint},
		Source:               "MeshConfig " + r.Namespace + "/" + r.Name,
	}
}

// sidecarResources checks spec.sidecar.resources as Kubernetes reads a
// container's resources (known fields, quantities that parse) and returns it
// normalised; "" when unset or invalid.
func sidecarResources(c *check, raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var rr corev1.ResourceRequirements
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rr); err != nil {
		c.errorf(fieldSidecarResources, "%v: write a container's resources, such as {limits: {cpu: \"1\", memory: 64Mi}, requests: {cpu: 100m}}", err)
		return ""
	}
	if len(rr.Limits) == 0 && len(rr.Requests) == 0 && len(rr.Claims) == 0 {
		return "" // OSM's own MeshConfig has resources: {}
	}
	if len(rr.Claims) > 0 {
		c.errorf(fieldSidecarResources+".claims", "a sidecar takes no resource claims: remove claims")
		return ""
	}
	for name, q := range rr.Requests {
		if l, ok := rr.Limits[name]; ok && q.Cmp(l) > 0 {
			c.errorf(fieldSidecarResources+".requests."+string(name), "request %s is above the limit %s: Kubernetes would refuse every injected pod", q.String(), l.String())
			return ""
		}
	}
	b, err := json.Marshal(rr)
	if err != nil {
		c.errorf(fieldSidecarResources, "%v", err)
		return ""
	}
	return string(b)
}

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

func oneOf(c *check, field, v string, allowed ...string) {
	if v != "" && !slices.Contains(allowed, v) {
		c.errorf(field, "%q is not one of %s: use one of them", v, strings.Join(allowed, ", "))
	}
}

// duration checks and parses a duration field; 0 when unset or invalid.
func duration(c *check, field, v string) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		c.errorf(field, "%q is not a duration: write one such as 30s, 5m or 24h", v)
		return 0
	}
	return d
}

func cidrs(c *check, field string, vs []string) {
	for i, v := range vs {
		if _, err := netip.ParsePrefix(v); err != nil {
			c.errorf(field+"["+strconv.Itoa(i)+"]", "%q is not an IP range in CIDR form: write one such as 10.0.0.0/8", v)
		}
	}
}

func ports(c *check, field string, ps []int) {
	for i, p := range ps {
		port(c, field+"["+strconv.Itoa(i)+"]", p)
	}
}

func port(c *check, field string, p int) {
	if p < 1 || p > 65535 {
		c.errorf(field, "port %d is not from 1 to 65535: fix it", p)
	}
}
