// Package translate turns what users write into what the model holds. Decode
// reads YAML or JSON documents into Resources, checking that each is of a kind
// Trellis accepts (the SMI and OSM kinds of api/smi and api/osm, and the Gateway
// API's HTTPRoute and GRPCRoute for mesh traffic) and is named.
// Translate decodes each Resource strictly into its API type, validates it and
// maps it to model objects, returning problems that name the object, the field
// and the fix. Sources import it: the local store now, the Kubernetes source
// later; it imports only the model and the API types.
package translate

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/trellis-mesh/trellis/api/osm"
	"github.com/trellis-mesh/trellis/api/smi"
	"github.com/trellis-mesh/trellis/internal/model"
)

// Objects are the model objects translated from valid resources. Each slice is
// in the order of the resources given to Translate.
type Objects struct {
	// Mesh is the settings from the MeshConfig in use; nil when there is none.
	Mesh *model.MeshSettings
	// MeshConfigs names the MeshConfig in use as "MeshConfig namespace/name"; a
	// mesh has at most one.
	MeshConfigs []string
	Splits      []model.TrafficSplit
	Targets     []model.TrafficTarget
	RouteGroups []model.HTTPRouteGroup
	TCPRoutes   []model.TCPRoute
	Routes      []model.Route // Gateway API HTTPRoute and GRPCRoute
}

// Messages of the warnings about what Trellis accepts without acting on it.
const (
	NotUsedYet     = "accepted and stored; not used by Trellis yet"
	NotEnforcedYet = "accepted and stored; not enforced by Trellis yet"
)

// Translate validates rs and maps the valid ones to model objects. errs are
// problems that keep an object out of Objects; warns are notes about objects
// that are kept (and only those), such as settings Trellis does not act on yet. Each problem's
// Object is the resource's Ref. Translate does not check references between
// objects (a rule naming a missing HTTPRouteGroup, say): model.Build does.
func Translate(rs []Resource) (objs Objects, errs, warns []model.Problem) {
	meshFrom := ""
	for _, r := range rs {
		c := &check{obj: r.Ref(), kind: r.Kind}
		switch {
		case !accepted(r.APIVersion, r.Kind):
			c.errorf("", "%v", &NotAcceptedError{APIVersion: r.APIVersion, Kind: r.Kind})
		case r.Kind == smi.KindTrafficSplit:
			if s := trafficSplit(c, r); c.ok() {
				objs.Splits = append(objs.Splits, s)
			}
		case r.Kind == smi.KindTrafficTarget:
			if t := trafficTarget(c, r); c.ok() {
				objs.Targets = append(objs.Targets, t)
			}
		case r.Kind == smi.KindHTTPRouteGroup:
			if g := httpRouteGroup(c, r); c.ok() {
				objs.RouteGroups = append(objs.RouteGroups, g)
			}
		case r.Kind == smi.KindTCPRoute:
			if t := tcpRoute(c, r); c.ok() {
				objs.TCPRoutes = append(objs.TCPRoutes, t)
			}
		case r.Kind == KindHTTPRoute:
			if rt := httpRoute(c, r); c.ok() {
				objs.Routes = append(objs.Routes, rt)
			}
		case r.Kind == KindGRPCRoute:
			if rt := grpcRoute(c, r); c.ok() {
				objs.Routes = append(objs.Routes, rt)
			}
		case r.Kind == osm.KindMeshConfig:
			m := meshConfig(c, r)
			if c.ok() && meshFrom != "" {
				c.errorf("", "a mesh has one MeshConfig and %s is already in use: delete this one, or merge its settings into that one", meshFrom)
			}
			if c.ok() {
				meshFrom = r.Ref()
				objs.Mesh = &m
				objs.MeshConfigs = append(objs.MeshConfigs, meshFrom)
			}
		default:
			policy(c, r)
		}
		errs = append(errs, c.errs...)
		if c.ok() {
			warns = append(warns, c.warns...)
		}
	}
	return objs, errs, warns
}

// check collects the problems found in one object.
type check struct {
	obj   string // Kind namespace/name
	kind  string
	errs  []model.Problem
	warns []model.Problem
}

func (c *check) errorf(field, format string, args ...any) {
	c.errs = append(c.errs, model.Problem{Object: c.obj, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (c *check) warnf(field, format string, args ...any) {
	c.warns = append(c.warns, model.Problem{Object: c.obj, Field: field, Message: fmt.Sprintf(format, args...)})
}

// ok reports whether no error was found.
func (c *check) ok() bool { return len(c.errs) == 0 }

// decodeStrict decodes r.Raw into the API struct into, reporting unknown fields
// and values of the wrong type at their paths, and returns the generic form too.
func decodeStrict(c *check, r Resource, into any) (map[string]any, bool) {
	v, err := decodeJSON(r.Raw)
	if err != nil {
		c.errorf("", "the stored object is not valid JSON (%v): apply it again", err)
		return nil, false
	}
	m, isObject := v.(map[string]any)
	if !isObject {
		c.errorf("", "the stored object is %s, not an object: apply it again", describe(v))
		return nil, false
	}
	n := len(c.errs)
	if av, _ := m["apiVersion"].(string); av != r.APIVersion {
		c.errorf("apiVersion", "%q does not match the resource's apiVersion %q: apply the object again", av, r.APIVersion)
	}
	if k, _ := m["kind"].(string); k != r.Kind {
		c.errorf("kind", "%q does not match the resource's kind %q: apply the object again", k, r.Kind)
	}
	meta, _ := m["metadata"].(map[string]any)
	if name, _ := meta["name"].(string); name != r.Name {
		c.errorf("metadata.name", "%q does not match the resource's name %q: apply the object again", name, r.Name)
	}
	if ns, _ := meta["namespace"].(string); ns != "" && ns != r.Namespace {
		c.errorf("metadata.namespace", "%q does not match the resource's namespace %q: apply the object again", ns, r.Namespace)
	}
	checkShape(c, m, reflect.TypeOf(into).Elem(), "", r.APIVersion)
	if len(c.errs) > n {
		return m, false
	}
	if err := json.Unmarshal(r.Raw, into); err != nil {
		c.errorf("", "cannot decode the object: %v", err)
		return m, false
	}
	return m, true
}

func keyOf(r Resource) model.Key { return model.Key{Namespace: r.Namespace, Name: r.Name} }

// policy checks an OSM policy object, which Trellis stores but does not
// enforce: its shape, and the fields OSM's CRDs require or limit (policy.go).
func policy(c *check, r Resource) {
	var into any
	switch r.Kind {
	case osm.KindIngressBackend:
		into = &osm.IngressBackend{}
	case osm.KindEgress:
		into = &osm.Egress{}
	case osm.KindRetry:
		into = &osm.Retry{}
	case osm.KindUpstreamTrafficSetting:
		into = &osm.UpstreamTrafficSetting{}
	default:
		c.errorf("", "%v", &NotAcceptedError{APIVersion: r.APIVersion, Kind: r.Kind})
		return
	}
	m, ok := decodeStrict(c, r, into)
	if !ok {
		return
	}
	policyFields(c, r.Kind, m)
	if c.ok() {
		c.warnf("", NotEnforcedYet)
	}
}
