// Package kube is the Kubernetes source: client-go informers on Namespaces,
// Services, EndpointSlices, Pods and ServiceAccounts, and dynamic informers on the accepted custom
// resources (SMI, OSM and Gateway API routes), turned into model snapshots
// through the same translators as local mode. It publishes no snapshot before
// every informer has synced, so that no proxy is ever served from a partial view
// of the cluster, and it folds bursts of events into one snapshot. The control
// plane imports it; the proxy never does.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"

	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/translate"
)

// Labels that put a namespace in the mesh: Trellis's own, and OSM's for users
// who migrate (its value names the mesh).
const (
	InjectLabel      = "trellis.io/inject"
	OSMMonitoredBy   = "openservicemesh.io/monitored-by"
	serviceNameLabel = discoveryv1.LabelServiceName
)

// Sidecar ports on a pod: peers reach the inbound mTLS listener, the control
// plane and the CLI the admin one.
const (
	InboundPort = 15003
	AdminPort   = 15000
)

// CustomResource is a kind the source watches when its CRD is installed.
type CustomResource struct {
	GVR  schema.GroupVersionResource
	Kind string
}

// CustomResources lists the custom resources Trellis reads, at the storage
// version of each CRD it installs.
func CustomResources() []CustomResource {
	var out []CustomResource
	for _, c := range manifests.CRDs() {
		out = append(out, CustomResource{GVR: schema.GroupVersionResource{Group: c.Group, Version: c.Versions[0], Resource: c.Plural}, Kind: c.Kind})
	}
	return out
}

// Options configure a Source.
type Options struct {
	Client  kubernetes.Interface // required
	Dynamic dynamic.Interface    // required
	// Debounce is how long the source waits after an event for more before it
	// builds a snapshot; default 50ms.
	Debounce time.Duration
	Logger   *slog.Logger
	// WriteStatus makes the source write status conditions on the custom
	// resources it reads (see status.go); the control plane sets it.
	WriteStatus bool
	// LeaderElection, with WriteStatus, has the status written only while this
	// source holds a Lease, so that of several control-plane replicas one
	// writes at a time (see leader.go); nil: it writes without election.
	LeaderElection *LeaderElection
}

// Source watches a cluster and keeps the latest snapshot.
type Source struct {
	o       Options
	changes chan struct{} // one pending signal: the snapshot changed
	dirty   chan struct{} // one pending signal: an informer saw an event
	synced  chan struct{}

	mu       sync.Mutex
	snap     *model.Snapshot
	problems []model.Problem
	watched  []string // kinds whose CRD is installed
	writer   StatusWriter

	namespaces informersLister[*corev1.Namespace]
	services   informersLister[*corev1.Service]
	slices     informersLister[*discoveryv1.EndpointSlice]
	pods       informersLister[*corev1.Pod]
	accounts   cache.Store                    // ServiceAccounts, by namespace/name
	custom     map[string]cache.GenericLister // by kind
	gvrs       map[string]schema.GroupVersionResource
	status     *statusWriter // nil unless Options.WriteStatus
}

// informersLister lists typed objects from an informer's store.
type informersLister[T any] struct{ store cache.Store }

func (l informersLister[T]) list() []T {
	items := l.store.List()
	out := make([]T, 0, len(items))
	for _, it := range items {
		if v, ok := it.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// New makes a source; Run starts it.
func New(o Options) *Source {
	if o.Debounce == 0 {
		o.Debounce = 50 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{o: o, changes: make(chan struct{}, 1), dirty: make(chan struct{}, 1), synced: make(chan struct{}),
		custom: map[string]cache.GenericLister{}, gvrs: map[string]schema.GroupVersionResource{}}
}

// Synced is closed once every informer has synced and the first snapshot is
// built.
func (s *Source) Synced() <-chan struct{} { return s.synced }

// Changes signals, coalesced, that a new snapshot is ready.
func (s *Source) Changes() <-chan struct{} { return s.changes }

// Snapshot returns the latest snapshot; nil before Synced.
func (s *Source) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Problems returns what translation and validation found in the latest
// snapshot's inputs: custom resources left out or partly ignored, and the
// snapshot's own problems.
func (s *Source) Problems() []model.Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]model.Problem(nil), s.problems...)
}

// Namespace returns a namespace from the informer's cache; an error before
// the source has synced or for a namespace it has not seen.
func (s *Source) Namespace(name string) (*corev1.Namespace, error) {
	select {
	case <-s.synced:
	default:
		return nil, errors.New("kube source not synced yet")
	}
	obj, ok, err := s.namespaces.store.GetByKey(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("namespace %s not found", name)
	}
	return obj.(*corev1.Namespace), nil
}

// MeshedNamespaces returns the namespaces in the mesh, sorted by name. They
// are the informer's: callers must not modify them.
func (s *Source) MeshedNamespaces() []*corev1.Namespace {
	if s.namespaces.store == nil {
		return nil // not started
	}
	var out []*corev1.Namespace
	for _, ns := range s.namespaces.list() {
		if meshed(ns) {
			out = append(out, ns)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// StatusWriter says who writes status conditions: with leader election, the
// Lease and its holder as this replica last saw it; without (Lease empty),
// every replica that writes status.
type StatusWriter struct {
	Lease  string `json:"lease,omitempty"`  // namespace/name
	Holder string `json:"holder,omitempty"` // its holder's identity; empty: none yet
	Self   string `json:"self,omitempty"`   // this replica's identity
}

// StatusWriter returns who writes status conditions, as this replica knows it.
func (s *Source) StatusWriter() StatusWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writer
}

func (s *Source) setHolder(holder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writer.Holder = holder
}

// Watched returns the custom resource kinds whose CRDs were installed at start.
func (s *Source) Watched() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.watched...)
}

// Run starts the informers, waits for them to sync, and rebuilds the snapshot
// after each burst of events until ctx ends. Kinds whose CRDs are not installed
// are not watched (install the CRDs and restart to watch them).
func (s *Source) Run(ctx context.Context) error {
	if s.o.Client == nil || s.o.Dynamic == nil {
		return errors.New("kube source: a client and a dynamic client are required")
	}
	var elector *leaderelection.LeaderElector
	if s.o.WriteStatus && s.o.LeaderElection != nil {
		le, err := s.o.LeaderElection.withDefaults()
		if err != nil {
			return err
		}
		if elector, err = s.newElector(ctx, le); err != nil {
			return fmt.Errorf("kube source: leader election: %w", err)
		}
		if err := mayUseLease(ctx, s, le); err != nil {
			// As before there was an election: status is written, by every
			// replica, rather than by none.
			s.o.Logger.Warn("status conditions are written without leader election, by every replica: the control plane may not read its Lease; apply its current Role (trellis install, or the chart) and restart it to elect one writer", "err", err)
			elector = nil
		} else {
			s.mu.Lock()
			s.writer = StatusWriter{Lease: le.Namespace + "/" + le.Name, Self: le.Identity}
			s.mu.Unlock()
		}
	}
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.markDirty() },
		UpdateFunc: func(any, any) { s.markDirty() },
		DeleteFunc: func(any) { s.markDirty() },
	}
	f := informers.NewSharedInformerFactory(s.o.Client, 0)
	var syncs []cache.InformerSynced
	add := func(inf cache.SharedIndexInformer) cache.Store {
		inf.AddEventHandler(notify)
		syncs = append(syncs, inf.HasSynced)
		return inf.GetStore()
	}
	s.namespaces.store = add(f.Core().V1().Namespaces().Informer())
	s.services.store = add(f.Core().V1().Services().Informer())
	s.slices.store = add(f.Discovery().V1().EndpointSlices().Informer())
	s.pods.store = add(f.Core().V1().Pods().Informer())
	if mayListAccounts(ctx, s.o.Client) {
		s.accounts = add(f.Core().V1().ServiceAccounts().Informer())
	} else {
		// A control plane upgraded without its new ClusterRole rule still
		// serves; only the check for missing ServiceAccounts is off.
		s.o.Logger.Warn("the control plane may not list ServiceAccounts, so TrafficTargets are not checked for accounts that do not exist; apply its current ClusterRole (trellis install, or the chart) and restart it to check them")
	}

	df := dynamicinformer.NewDynamicSharedInformerFactory(s.o.Dynamic, 0)
	var watched []string
	for _, cr := range CustomResources() {
		ok, err := served(s.o.Client, cr)
		if err != nil {
			return fmt.Errorf("kube source: discovery of %s: %w", cr.GVR.GroupVersion(), err)
		}
		if !ok {
			s.o.Logger.Info("custom resource not installed; not watched", "kind", cr.Kind, "apiVersion", cr.GVR.GroupVersion().String())
			continue
		}
		gi := df.ForResource(cr.GVR)
		add(gi.Informer())
		s.custom[cr.Kind] = gi.Lister()
		s.gvrs[cr.Kind] = cr.GVR
		watched = append(watched, cr.Kind)
	}
	s.mu.Lock()
	s.watched = watched
	s.mu.Unlock()

	f.Start(ctx.Done())
	df.Start(ctx.Done())
	defer f.Shutdown()
	defer df.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("kube source: caches did not sync: %w", context.Cause(ctx))
	}
	if s.o.WriteStatus {
		s.status = newStatusWriter(s)
		if elector != nil {
			// Run returns once the Lease is handed over, so that a process
			// that exits after it leaves no Lease to wait out.
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.elect(ctx, elector)
			}()
			defer func() { <-done }()
		} else {
			go s.status.run(ctx)
		}
	}
	s.rebuild()
	close(s.synced)
	s.o.Logger.Info("kube source synced", "watching", strings.Join(watched, ","))

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.dirty:
		}
		// Fold the burst: wait until events stop arriving for a moment.
		t := time.NewTimer(s.o.Debounce)
	burst:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-s.dirty:
				if !t.Stop() {
					<-t.C
				}
				t.Reset(s.o.Debounce)
			case <-t.C:
				break burst
			}
		}
		s.rebuild()
	}
}

func (s *Source) markDirty() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// served reports whether the API server serves cr's group, version and
// resource.
func served(c kubernetes.Interface, cr CustomResource) (bool, error) {
	rl, err := c.Discovery().ServerResourcesForGroupVersion(cr.GVR.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range rl.APIResources {
		if r.Name == cr.GVR.Resource {
			return true, nil
		}
	}
	return false, nil
}

// rebuild builds a snapshot from the informers' stores and publishes it when
// its hash changed.
func (s *Source) rebuild() {
	in, problems := s.inputs()
	snap := model.Build(in)
	problems = append(problems, snap.Problems()...)
	s.mu.Lock()
	changed := s.snap == nil || s.snap.Hash() != snap.Hash()
	s.snap, s.problems = snap, problems
	s.mu.Unlock()
	if s.status != nil {
		s.status.offer(s.targets(problems))
	}
	if changed {
		select {
		case s.changes <- struct{}{}:
		default:
		}
	}
}

// meshed says whether a namespace is in the mesh.
func meshed(ns *corev1.Namespace) bool {
	if ns.DeletionTimestamp != nil {
		return false
	}
	return ns.Labels[InjectLabel] == "enabled" || ns.Labels[OSMMonitoredBy] != ""
}

// inputs gathers the model's inputs from the stores.
func (s *Source) inputs() (model.Inputs, []model.Problem) {
	inMesh := map[string]bool{}
	leaving := map[string]bool{} // namespaces being deleted: their objects no longer count
	for _, ns := range s.namespaces.list() {
		if meshed(ns) {
			inMesh[ns.Name] = true
		}
		if ns.DeletionTimestamp != nil {
			leaving[ns.Name] = true
		}
	}
	var in model.Inputs
	svcs := map[model.Key]*corev1.Service{}
	for _, svc := range s.services.list() {
		if !inMesh[svc.Namespace] {
			continue
		}
		k := model.Key{Namespace: svc.Namespace, Name: svc.Name}
		svcs[k] = svc
		ms := model.Service{Key: k}
		for _, ip := range svc.Spec.ClusterIPs {
			if a, err := netip.ParseAddr(ip); err == nil { // "None" for a headless service
				ms.Addresses = append(ms.Addresses, a)
			}
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue // the mesh carries TCP; UDP and SCTP pass by
			}
			ms.Ports = append(ms.Ports, model.ServicePort{Port: int(p.Port), Protocol: portProtocol(p)})
		}
		in.Services = append(in.Services, ms)
	}

	// Which services each pod backs, and whether any slice calls it not
	// ready (readiness is the pod's; the slices should agree, and when they
	// do not, the pod takes no traffic).
	type member struct {
		services []model.ServiceMembership
		notReady bool
	}
	members := map[string]*member{} // by namespace/pod
	for _, sl := range s.slices.list() {
		svc := svcs[model.Key{Namespace: sl.Namespace, Name: sl.Labels[serviceNameLabel]}]
		if svc == nil {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" {
				continue
			}
			key := sl.Namespace + "/" + ep.TargetRef.Name
			m := members[key]
			if m == nil {
				m = &member{}
				members[key] = m
			}
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				m.notReady = true
			}
			for _, sp := range sl.Ports {
				if p, ok := servicePortFor(svc, sp); ok {
					m.services = append(m.services, model.ServiceMembership{Service: svc.Name, ServicePort: int(p.Port), Protocol: portProtocol(p)})
				}
			}
		}
	}
	var problems []model.Problem
	outside := map[string][]string{} // service → pods without a sidecar
	for _, pod := range s.pods.list() {
		if !inMesh[pod.Namespace] || pod.Status.PodIP == "" || pod.DeletionTimestamp != nil ||
			pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if !hasSidecar(pod) {
			// Not an endpoint: nothing answers mTLS on its inbound port.
			if m := members[pod.Namespace+"/"+pod.Name]; m != nil {
				for _, ms := range dedupe(m.services) {
					k := pod.Namespace + "/" + ms.Service
					outside[k] = append(outside[k], pod.Name)
				}
			}
			continue
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		w := model.Workload{
			ID:           pod.Namespace + "/" + pod.Name,
			Name:         pod.Name,
			Identity:     model.Identity{Namespace: pod.Namespace, Account: sa},
			Address:      net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(InboundPort)),
			AdminAddress: net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(AdminPort)),
		}
		if m := members[w.ID]; m != nil {
			w.Services = dedupe(m.services)
			w.Ready = !m.notReady
		}
		in.Workloads = append(in.Workloads, w)
	}

	for _, k := range sortedKeys(outside) {
		pods := outside[k]
		sort.Strings(pods)
		problems = append(problems, model.Problem{Object: "Service " + k, Warning: true,
			Message: fmt.Sprintf("has endpoints outside the mesh: pod %s has no sidecar, so meshed clients do not reach it; restart it (kubectl rollout restart) to inject it, or take it out of the Service", strings.Join(pods, ", "))})
	}

	var rs []translate.Resource
	kinds := make([]string, 0, len(s.custom))
	for k := range s.custom {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, kind := range kinds {
		objs, err := s.custom[kind].List(labels.Everything())
		if err != nil {
			continue // a lister over a synced store does not fail
		}
		// In a fixed order (the lister's is random), so that where one
		// object wins over another (one MeshConfig per mesh) the same one
		// wins in every snapshot.
		us := make([]*unstructured.Unstructured, 0, len(objs))
		for _, o := range objs {
			if u, ok := o.(*unstructured.Unstructured); ok && !leaving[u.GetNamespace()] {
				us = append(us, u)
			}
		}
		sort.Slice(us, func(i, j int) bool {
			if us[i].GetNamespace() != us[j].GetNamespace() {
				return us[i].GetNamespace() < us[j].GetNamespace()
			}
			return us[i].GetName() < us[j].GetName()
		})
		for _, u := range us {
			r, err := resourceOf(u)
			if err != nil {
				problems = append(problems, model.Problem{Object: kind + " " + u.GetNamespace() + "/" + u.GetName(), Message: err.Error()})
				continue
			}
			rs = append(rs, r...)
		}
	}
	objs, errs, warns := translate.Translate(rs)
	problems = append(problems, errs...)
	for _, w := range warns {
		w.Warning = true // in force, with a remark
		problems = append(problems, w)
	}
	problems = append(problems, s.missingAccounts(objs.Targets)...)
	in.Mesh = objs.Mesh
	in.Splits, in.Targets, in.RouteGroups, in.TCPRoutes, in.Routes = objs.Splits, objs.Targets, objs.RouteGroups, objs.TCPRoutes, objs.Routes
	return in, problems
}

// mayListAccounts says whether the control plane may list ServiceAccounts
// (the informer would otherwise retry for ever and the source never sync).
// Only a refusal says no: any other error is left to the informer's retries.
func mayListAccounts(ctx context.Context, c kubernetes.Interface) bool {
	_, err := c.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{Limit: 1})
	return !apierrors.IsForbidden(err)
}

// missingAccounts warns of the ServiceAccounts TrafficTargets name that do
// not exist: such a rule is in force but matches no workload, which is what a
// misspelt name or namespace looks like. Without the ServiceAccounts informer
// (mayListAccounts) nothing is checked, and the one warning says why, for
// trellis check.
func (s *Source) missingAccounts(targets []model.TrafficTarget) []model.Problem {
	if s.accounts == nil {
		return []model.Problem{{Object: "ClusterRole trellis-control-plane", Field: "rules", Warning: true,
			Message: "the control plane may not list serviceaccounts, so TrafficTargets are not checked for accounts that do not exist; apply its current ClusterRole (trellis install, or the chart) and restart the control plane"}}
	}
	var out []model.Problem
	for _, tt := range targets {
		check := func(field string, id model.Identity) {
			if _, ok, _ := s.accounts.GetByKey(id.Namespace + "/" + id.Account); ok {
				return
			}
			out = append(out, model.Problem{Object: "TrafficTarget " + tt.Key.Namespace + "/" + tt.Key.Name, Field: field, Warning: true,
				Message: fmt.Sprintf("ServiceAccount %s/%s does not exist, so this names no workload until it does; check the name and namespace", id.Namespace, id.Account)})
		}
		check("spec.destination", tt.Destination)
		for i, src := range tt.Sources {
			check(fmt.Sprintf("spec.sources[%d]", i), src)
		}
	}
	return out
}

// resourceOf turns a custom resource as the API server holds it into the
// translators' Resource: the server's own fields (status, managedFields, uid and
// the like) are dropped, as they are not the user's.
func resourceOf(u *unstructured.Unstructured) ([]translate.Resource, error) {
	obj := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind()}
	meta := map[string]any{"name": u.GetName(), "namespace": u.GetNamespace()}
	if l := u.GetLabels(); len(l) > 0 {
		meta["labels"] = l
	}
	if a := u.GetAnnotations(); len(a) > 0 {
		delete(a, "kubectl.kubernetes.io/last-applied-configuration")
		if len(a) > 0 {
			meta["annotations"] = a
		}
	}
	if ts := u.GetCreationTimestamp(); !ts.IsZero() {
		meta["creationTimestamp"] = ts.UTC().Format(time.RFC3339)
	}
	obj["metadata"] = meta
	if spec, ok := u.Object["spec"]; ok {
		obj["spec"] = spec
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return translate.Decode(b, "")
}

// servicePortFor finds the Service port an EndpointSlice port belongs to: by
// name, or the only port when unnamed.
func servicePortFor(svc *corev1.Service, sp discoveryv1.EndpointPort) (corev1.ServicePort, bool) {
	name := ""
	if sp.Name != nil {
		name = *sp.Name
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ServicePort{}, false
}

// portProtocol reads a Service port's protocol as OSM does: appProtocol, then
// the port name's prefix (http-, tcp-, tcp-server-first-, grpc-), then http.
func portProtocol(p corev1.ServicePort) model.Protocol {
	if p.AppProtocol != nil {
		if proto, err := model.ParseProtocol(*p.AppProtocol); err == nil {
			return proto
		}
	}
	name := strings.ToLower(p.Name)
	for _, pr := range []model.Protocol{model.ProtocolTCPServerFirst, model.ProtocolHTTP, model.ProtocolTCP, model.ProtocolGRPC} {
		if name == string(pr) || strings.HasPrefix(name, string(pr)+"-") {
			return pr
		}
	}
	return model.ProtocolHTTP
}

// hasSidecar says whether the pod runs Trellis's sidecar.
func hasSidecar(pod *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == inject.ProxyContainer {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func dedupe(ms []model.ServiceMembership) []model.ServiceMembership {
	seen := map[model.ServiceMembership]bool{}
	var out []model.ServiceMembership
	for _, m := range ms {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}
