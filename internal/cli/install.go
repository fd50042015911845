package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/manifests"
)

type installOptions struct {
	*globals
	kubeconfig string
	sets       []string
	wait       bool
	timeout    time.Duration
	deleteCRDs bool
}

func newInstallCmd(g *globals) *cobra.Command {
	o := &installOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Trellis on a Kubernetes cluster",
		Long: `Applies, from manifests in this binary: the CRDs of every kind Trellis accepts (SMI, OSM
policy and config with their schemas, and the Gateway API's own HTTPRoute and GRPCRoute CRDs,
standard channel, unless the cluster has its own, which are kept as they are), the
trellis-system namespace, the control plane's service account and RBAC,
its Service and Deployment, and the injection webhook. Applying again changes nothing. With --wait it shows progress until the control plane is ready (its caches
synced) and the webhook carries its CA.

Keys for --set: namespace, image, proxyImage, captureImage (empty: no transparent capture), pullPolicy, logLevel, sidecarKeyType.`,
		Example: `  trellis install --wait
  trellis install --set image=localhost/trellis/trellis:dev --set pullPolicy=Never --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.install(cmd.Context(), cmd.ErrOrStderr()) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	f.StringArrayVar(&o.sets, "set", nil, "a setting, `key=value` (repeatable)")
	f.BoolVar(&o.wait, "wait", false, "wait, showing progress, until the control plane is ready")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

func newUninstallCmd(g *globals) *cobra.Command {
	o := &installOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove Trellis from a Kubernetes cluster",
		Long: `Deletes the injection webhook first (so no new pod is injected), then the control plane, its
RBAC and its namespace. Pods already injected keep their sidecars until they are restarted;
restart them (kubectl rollout restart) to run without the mesh. The CRDs, and so the users'
TrafficTargets, TrafficSplits and routes, are kept unless --delete-crds is given; it deletes
the HTTPRoute and GRPCRoute CRDs too if Trellis installed them, and with them every route, a
gateway's included. The cluster's own Gateway API CRDs, which install kept, stay.`,
		Example: `  trellis uninstall
  trellis uninstall --delete-crds`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.uninstall(cmd.Context(), cmd.ErrOrStderr()) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig `file`; default: in-cluster credentials, then $KUBECONFIG")
	f.StringArrayVar(&o.sets, "set", nil, "a setting of the installation, `key=value` (namespace)")
	f.BoolVar(&o.deleteCRDs, "delete-crds", false, "also delete the CRDs, and with them every resource of those kinds")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the namespace to go")
	return cmd
}

// cluster is what install and uninstall talk to.
type cluster struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
	mapper  meta.ResettableRESTMapper
}

func (o *installOptions) connect() (*cluster, manifests.Values, error) {
	v := manifests.DefaultValues()
	for _, s := range o.sets {
		if err := v.Set(s); err != nil {
			return nil, v, err
		}
	}
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return nil, v, err
	}
	c := &cluster{}
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, v, err
	}
	if c.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, v, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, v, err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return c, v, nil
}

// objects decodes a multi-document YAML stream.
func objects(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, err
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
	return out, nil
}

func ref(u *unstructured.Unstructured) string {
	if u.GetNamespace() != "" {
		return u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
	}
	return u.GetKind() + " " + u.GetName()
}

// resource finds where u lives in the API.
func (c *cluster) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		c.mapper.Reset() // a CRD applied a moment ago
		if m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return nil, fmt.Errorf("%s: %w", ref(u), err)
		}
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dynamic.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	return c.dynamic.Resource(m.Resource), nil
}

// apply server-side applies u, so that applying the same manifests again
// changes nothing and fields others manage are left alone.
func (c *cluster) apply(ctx context.Context, u *unstructured.Unstructured) error {
	ri, err := c.resource(u)
	if err != nil {
		return err
	}
	b, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	force := true
	_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, b, metav1.PatchOptions{FieldManager: "trellis-install", Force: &force})
	if err != nil {
		return fmt.Errorf("apply %s: %w", ref(u), err)
	}
	return nil
}

// clusterCRD says whether the CRD that u installs is already in the cluster
// as the cluster's own, not Trellis's: the Gateway API's CRDs often are (a
// gateway's installation brings them, in its own version and channel), and
// replacing them would downgrade an experimental channel to the standard one
// or change the version a gateway relies on. why describes the CRD kept; note
// says what Trellis cannot read from it, if anything. Trellis's own CRDs
// (labelled PartOfLabel: trellis) and the SMI and OSM ones, which Trellis
// owns, are never the cluster's.
func (c *cluster) clusterCRD(ctx context.Context, u *unstructured.Unstructured) (own bool, why, note string, err error) {
	if !upstreamCRD(u.GetName()) {
		return false, "", "", nil
	}
	got, err := c.dynamic.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, "", "", nil
	case err != nil:
		return false, "", "", fmt.Errorf("read CRD %s: %w", u.GetName(), err)
	case got.GetLabels()[manifests.PartOfLabel] == "trellis":
		return false, "", "", nil
	}
	ann := got.GetAnnotations()
	version, channel := ann["gateway.networking.k8s.io/bundle-version"], ann["gateway.networking.k8s.io/channel"]
	why = "not installed by Trellis"
	if version != "" || channel != "" {
		why = fmt.Sprintf("Gateway API %s, %s channel", orUnknown(version), orUnknown(channel))
	}
	versions, _, _ := unstructured.NestedSlice(got.Object, "spec", "versions")
	servesV1 := false
	for _, v := range versions {
		m, _ := v.(map[string]any)
		if m["name"] == "v1" && m["served"] == true {
			servesV1 = true
		}
	}
	if !servesV1 {
		note = "it does not serve v1, which Trellis reads, so the mesh does not see these routes until the Gateway API's CRDs are upgraded (v1.1 or later serves v1 of both route kinds)"
	}
	return true, why, note, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// upstreamCRD says whether name is a CRD Trellis installs as its project
// publishes it (the Gateway API's).
func upstreamCRD(name string) bool {
	for _, c := range manifests.CRDs() {
		if c.Upstream != "" && c.Name() == name {
			return true
		}
	}
	return false
}

func (o *installOptions) install(ctx context.Context, progress io.Writer) error {
	c, v, err := o.connect()
	if err != nil {
		return err
	}
	start := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(progress, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	crds, err := objects(manifests.CRDsYAML())
	if err != nil {
		return err
	}
	rest, err := manifests.InstallYAML(v)
	if err != nil {
		return err
	}
	others, err := objects(rest)
	if err != nil {
		return err
	}
	applied := 0
	for _, u := range crds {
		own, why, note, err := c.clusterCRD(ctx, u)
		if err != nil {
			return err
		}
		if own {
			step("kept the cluster's own CRD %s (%s)", u.GetName(), why)
			if note != "" {
				fmt.Fprintf(progress, "  warning: %s: %s\n", u.GetName(), note)
			}
			continue
		}
		if err := c.apply(ctx, u); err != nil {
			return err
		}
		applied++
	}
	step("applied %d CRDs", applied)
	if err := waitFor(ctx, o.timeout, func() (bool, string, error) {
		for _, u := range crds {
			got, err := c.dynamic.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			if !condition(got, "Established") {
				return false, "CRD " + u.GetName() + " not established yet", nil
			}
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	step("CRDs established")
	for _, u := range others {
		if err := c.apply(ctx, u); err != nil {
			return err
		}
		step("applied %s", ref(u))
	}
	if !o.wait {
		return nil
	}
	last := ""
	err = waitFor(ctx, o.timeout, func() (bool, string, error) {
		d, err := c.client.AppsV1().Deployments(v.Namespace).Get(ctx, controlplane.ServiceName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		if d.Status.AvailableReplicas < 1 {
			return false, fmt.Sprintf("control plane: %d of %d replicas ready%s", d.Status.ReadyReplicas, *d.Spec.Replicas, podWhy(ctx, c, v.Namespace)), nil
		}
		wh, err := c.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, controlplane.WebhookConfigName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		for _, w := range wh.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return false, "webhook " + w.Name + ": waiting for the control plane to write its CA", nil
			}
		}
		vh, err := c.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, controlplane.ValidatorConfigName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		for _, w := range vh.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return false, "webhook " + w.Name + ": waiting for the control plane to write its CA", nil
			}
		}
		return true, "", nil
	}, func(msg string) {
		if msg != last {
			step("%s", msg)
			last = msg
		}
	})
	if err != nil {
		return err
	}
	// Ready pods are not yet a webhook the API server can call: the Service's
	// rules may lag. Until it injects, pods would start unmeshed (the
	// webhook fails open), so wait until a dry-run pod comes back injected.
	step("checking that the webhook injects")
	if err := c.checkInjection(ctx, o.timeout); err != nil {
		return err
	}
	step("Trellis is ready: label a namespace with trellis.io/inject=enabled (trellis namespace add NS) and restart its pods")
	return nil
}

// checkInjection creates a labeled namespace of its own and dry-runs the
// creation of a pod there until the answer carries the sidecar; it deletes the
// namespace after.
func (c *cluster) checkInjection(ctx context.Context, timeout time.Duration) error {
	name := fmt.Sprintf("trellis-install-check-%d", time.Now().UnixNano()%1_000_000)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{inject.InjectKey: "enabled"}}}
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("the injection check's namespace: %w", err)
	}
	defer c.client.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	if err := waitFor(ctx, 30*time.Second, func() (bool, string, error) {
		_, err := c.client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, "waiting for the check namespace's default service account", nil
	}); err != nil {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "check"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: "trellis.invalid/check"}}},
	}
	return waitFor(ctx, timeout, func() (bool, string, error) {
		got, err := c.client.CoreV1().Pods(name).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, "dry-run pod: " + err.Error(), nil
		}
		if got.Annotations[inject.InjectedAnnotation] != "true" {
			return false, "the webhook does not inject yet", nil
		}
		return true, "", nil
	})
}

// podWhy says why the control plane's pod is not ready, when a container waits.
func podWhy(ctx context.Context, c *cluster, ns string) string {
	pods, err := c.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + controlplane.ServiceName})
	if err != nil || len(pods.Items) == 0 {
		return ""
	}
	for _, st := range pods.Items[0].Status.ContainerStatuses {
		if w := st.State.Waiting; w != nil {
			return fmt.Sprintf(" (%s: %s %s)", st.Name, w.Reason, w.Message)
		}
	}
	return ""
}

func condition(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// waitFor polls done every 500 ms until it says so, fails, or timeout passes;
// each message it returns on the way goes to show, if given.
func waitFor(ctx context.Context, timeout time.Duration, done func() (bool, string, error), show ...func(string)) error {
	deadline := time.Now().Add(timeout)
	var msg string
	for {
		ok, m, err := done()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		msg = m
		for _, s := range show {
			s(m)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", timeout, msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted: %s", msg)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (o *installOptions) uninstall(ctx context.Context, progress io.Writer) error {
	c, v, err := o.connect()
	if err != nil {
		return err
	}
	rest, err := manifests.InstallYAML(v)
	if err != nil {
		return err
	}
	objs, err := objects(rest)
	if err != nil {
		return err
	}
	if o.deleteCRDs {
		crds, err := objects(manifests.CRDsYAML())
		if err != nil {
			return err
		}
		for _, u := range crds {
			own, why, _, err := c.clusterCRD(ctx, u)
			if err != nil {
				return err
			}
			if own {
				// Not Trellis's to delete, nor the routes in it.
				fmt.Fprintf(progress, "kept the cluster's own CRD %s (%s)\n", u.GetName(), why)
				continue
			}
			objs = append(objs, u)
		}
	}
	// The webhook first, so that no pod is injected by a control plane on
	// its way out; the namespace last.
	for i := len(objs) - 1; i >= 0; i-- {
		u := objs[i]
		ri, err := c.resource(u)
		if err != nil {
			return err
		}
		policy := metav1.DeletePropagationForeground
		err = ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
		switch {
		case apierrors.IsNotFound(err):
			fmt.Fprintf(progress, "%s: already gone\n", ref(u))
		case err != nil:
			return fmt.Errorf("delete %s: %w", ref(u), err)
		default:
			fmt.Fprintf(progress, "deleted %s\n", ref(u))
		}
	}
	err = waitFor(ctx, o.timeout, func() (bool, string, error) {
		_, err := c.client.CoreV1().Namespaces().Get(ctx, v.Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "namespace " + v.Namespace + " still terminating", err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(progress, "Trellis is uninstalled; restart injected pods to run them without their sidecars")
	return nil
}
