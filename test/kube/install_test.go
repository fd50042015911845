package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	srckube "github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// trellis runs the CLI in the test and fails it on a non-zero exit.
func trellis(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), append(args, "--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)), &out, &errb); code != 0 {
		t.Fatalf("trellis %v: exit %d\n%s%s", args, code, out.String(), errb.String())
	}
	return errb.String()
}

// TestInstallUninstall installs Trellis with the CLI from its embedded
// manifests, runs a meshed client and server, checks the client is served
// through the sidecars injected by the installed control plane, then
// uninstalls and sees the apps, restarted, run without the mesh, while the
// users' resources' CRDs stay.
func TestInstallUninstall(t *testing.T) {
	if os.Getenv(ImagesEnv) == "" {
		t.Skipf("Trellis's images are not in the cluster: set $%s after test/cluster/images.sh (make e2e-kube does)", ImagesEnv)
	}
	c := kubetest.New(t)
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			var out bytes.Buffer
			cli.Main(context.Background(), []string{"uninstall", "--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &out)
		}
	})
	start := time.Now()
	// RSA sidecars here (the walk-through's are P-256): the key type reaches
	// every injected sidecar.
	progress := trellis(t, "install", "--wait", "--set", "pullPolicy=Never", "--set", "sidecarKeyType=rsa-2048", "--timeout", "3m")
	t.Logf("trellis install --wait: ready in %s\n%s", time.Since(start).Round(100*time.Millisecond), progress)
	// Installing again changes nothing and succeeds.
	trellis(t, "install", "--set", "pullPolicy=Never", "--set", "sidecarKeyType=rsa-2048")

	ns := c.Namespace(t, "shop", true)

	// The validating webhook refuses what Trellis would, naming the field.
	kubetest.Eventually(t, 20*time.Second, "the validating webhook refusing a bad TrafficSplit", func() error {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
			"metadata": map[string]any{"name": "bad", "namespace": ns},
			"spec":     map[string]any{"service": "bookstore", "backends": []any{map[string]any{"service": "bookstore-v1", "weight": int64(0)}}},
		}}
		_, err := c.Dynamic.Resource(c.GVR(t, "TrafficSplit")).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil || !strings.Contains(err.Error(), "spec.backends: weights sum to 0") {
			return fmt.Errorf("create = %v, want a refusal naming spec.backends", err)
		}
		return nil
	})
	m := &mesh{c: c}
	m.service(t, ns, "bookstore", map[string]string{"app": "bookstore"}, 14001)
	// The store listens on every address so that, once the mesh is gone, its
	// client can reach it without a sidecar.
	m.app(t, ns, "bookstore", "bookstore", nil, 14001, "bookstore", "--listen", "0.0.0.0:14001", "--warehouse", "http://127.0.0.1:1")
	m.app(t, ns, "bookbuyer", "bookbuyer", nil, 0, "bookbuyer", "--listen", "0.0.0.0:8080", "--bookstore", "http://bookstore."+ns+":14001")
	m.waitRunning(t, ns, "bookstore")
	buyerIP := m.waitRunning(t, ns, "bookbuyer")
	var sc struct {
		KeyType string `json:"certificate_key_type"`
	}
	resp, err := http.Get("http://" + net.JoinHostPort(buyerIP, "15000") + "/config")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&sc)
	resp.Body.Close()
	if sc.KeyType != "rsa-2048" {
		t.Errorf("bookbuyer's sidecar certificate key type %q, want rsa-2048 from sidecarKeyType", sc.KeyType)
	}
	servedNow := func(who string) func() error {
		return func() error {
			a := stats(t, buyerIP)
			time.Sleep(2 * time.Second)
			b := stats(t, buyerIP)
			if b.OK-a.OK < 5 {
				return fmt.Errorf("%s: %d more 2xx in 2 s (reasons %v)", who, b.OK-a.OK, b.Reasons)
			}
			return nil
		}
	}
	kubetest.Eventually(t, 60*time.Second, "bookbuyer served through the installed mesh", servedNow("bookbuyer"))

	// The installed Role lets the control plane hold the status writer's
	// Lease, under its pod's name (POD_NAME, from the downward API).
	kubetest.Eventually(t, 30*time.Second, "the control plane holds the status writer's Lease", func() error {
		l, err := c.Client.CoordinationV1().Leases("trellis-system").Get(context.Background(), srckube.DefaultLeaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pods, err := c.Client.CoreV1().Pods("trellis-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=trellis-control-plane"})
		if err != nil {
			return err
		}
		holder := ""
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		for _, p := range pods.Items {
			if strings.HasPrefix(holder, p.Name+"_") {
				return nil
			}
		}
		return fmt.Errorf("Lease holder %q is none of the control plane's pods (%d)", holder, len(pods.Items))
	})

	// Metrics on: the meshed pods carry the scrape annotations, and pods
	// injected from now on get them too (the Job's, below).
	trellis(t, "metrics", "enable", "--namespace", ns)
	scraped := func(pod string) string {
		p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations["prometheus.io/scrape"] + " " + p.Annotations["prometheus.io/port"]
	}
	if got := scraped("bookbuyer"); got != "true 15000" {
		t.Errorf("after metrics enable, bookbuyer's prometheus.io scrape and port = %q, want true 15000", got)
	}

	// A Job's pod completes: the native sidecar stops once the job's
	// container has exited.
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "once"},
		Spec: batchv1.JobSpec{
			BackoffLimit: kubetest.Ptr(int32(0)),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "once", Image: "localhost/trellis/trellis:dev", ImagePullPolicy: corev1.PullNever, Args: []string{"version"}}},
			}},
		},
	}
	if _, err := c.Client.BatchV1().Jobs(ns).Create(context.Background(), job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 60*time.Second, "the meshed Job completes", func() error {
		j, err := c.Client.BatchV1().Jobs(ns).Get(context.Background(), "once", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if j.Status.Failed > 0 {
			t.Fatalf("the Job failed: %+v", j.Status)
		}
		if j.Status.Succeeded != 1 {
			return fmt.Errorf("job status %+v", j.Status)
		}
		return nil
	})
	pods, err := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "job-name=once"})
	if err != nil || len(pods.Items) != 1 || !injected(&pods.Items[0]) {
		t.Errorf("the Job's pod was not meshed: %v %+v", err, pods)
	}
	if got := pods.Items[0].Annotations["prometheus.io/scrape"]; got != "true" {
		t.Errorf("the Job's pod, injected after metrics enable, has prometheus.io/scrape %q, want true", got)
	}
	trellis(t, "metrics", "disable", "--namespace", ns)
	if got := scraped("bookbuyer"); got != " " {
		t.Errorf("after metrics disable, bookbuyer's prometheus.io scrape and port = %q, want none", got)
	}
	if err := c.Client.BatchV1().Jobs(ns).Delete(context.Background(), "once", metav1.DeleteOptions{PropagationPolicy: kubetest.Ptr(metav1.DeletePropagationBackground)}); err != nil {
		t.Fatal(err)
	}

	trellis(t, "uninstall")
	uninstalled = true
	bg := context.Background()
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(bg, controlplane.WebhookConfigName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the webhook configuration is still there after uninstall: %v", err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(bg, "trellis-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("trellis-system is still there after uninstall: %v", err)
	}
	if _, err := c.Dynamic.Resource(kubetest.CRDResource).Get(bg, "trafficsplits.split.smi-spec.io", metav1.GetOptions{}); err != nil {
		t.Errorf("the TrafficSplit CRD is gone after uninstall without --delete-crds: %v", err)
	}

	// Restarted, the apps run without the mesh: no sidecar is injected, and the
	// client reaches the store by the same name, through the cluster's DNS
	// and kube-proxy alone.
	for _, p := range []string{"bookstore", "bookbuyer"} {
		if err := c.Client.CoreV1().Pods(ns).Delete(bg, p, metav1.DeleteOptions{GracePeriodSeconds: kubetest.Ptr(int64(0))}); err != nil {
			t.Fatal(err)
		}
	}
	kubetest.Eventually(t, 60*time.Second, "the old pods gone", func() error {
		pods, err := c.Client.CoreV1().Pods(ns).List(bg, metav1.ListOptions{})
		if err != nil || len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left (%v)", len(pods.Items), err)
		}
		return nil
	})
	m.app(t, ns, "bookstore", "bookstore", nil, 14001, "bookstore", "--listen", "0.0.0.0:14001", "--warehouse", "http://127.0.0.1:1")
	m.app(t, ns, "bookbuyer", "bookbuyer", nil, 0, "bookbuyer", "--listen", "0.0.0.0:8080", "--bookstore", "http://bookstore."+ns+":14001")
	buyerIP = m.waitPlain(t, ns, "bookbuyer")
	m.waitPlain(t, ns, "bookstore")
	kubetest.Eventually(t, 60*time.Second, "bookbuyer served without the mesh", servedNow("bookbuyer"))
}

// waitPlain waits until an uninjected pod runs and returns its IP.
func (m *mesh) waitPlain(t *testing.T, ns, name string) string {
	t.Helper()
	var ip string
	kubetest.Eventually(t, 60*time.Second, "pod "+ns+"/"+name+" running", func() error {
		p, err := m.c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range p.Spec.InitContainers {
			if c.Name == inject.ProxyContainer {
				t.Fatalf("pod %s/%s was injected after uninstall", ns, name)
			}
		}
		if len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Running == nil || p.Status.PodIP == "" {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		ip = p.Status.PodIP
		return nil
	})
	return ip
}

// TestNamespaceCommands adds a namespace to the mesh, lists it with one that
// OSM's `osm namespace add` labeled, and removes both.
func TestNamespaceCommands(t *testing.T) {
	c := kubetest.New(t)
	plain := c.Namespace(t, "plain", false)
	osm := c.Namespace(t, "osm", false)
	bg := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Patch(bg, osm, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"openservicemesh.io/monitored-by":"osm"},"annotations":{"openservicemesh.io/sidecar-injection":"enabled"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	list := func() map[string]string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := cli.Main(bg, []string{"namespace", "list", "-o", "json", "--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb); code != 0 {
			t.Fatalf("namespace list: exit %d: %s", code, errb.String())
		}
		var rows []struct {
			Name, By  string
			Injection bool
		}
		if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
			t.Fatalf("namespace list -o json: %v\n%s", err, out.String())
		}
		got := map[string]string{}
		for _, r := range rows {
			got[r.Name] = fmt.Sprintf("%s %v", r.By, r.Injection)
		}
		return got
	}
	if got := list(); got[plain] != "" || got[osm] != "osm (osm) true" {
		t.Errorf("before add: %s %q, %s %q; want absent and osm (osm) true", plain, got[plain], osm, got[osm])
	}
	trellis(t, "namespace", "add", plain)
	if got := list(); got[plain] != "trellis true" {
		t.Errorf("after add: %s %q, want trellis true", plain, got[plain])
	}
	trellis(t, "namespace", "remove", plain, osm)
	if got := list(); got[plain] != "" || got[osm] != "" {
		t.Errorf("after remove: %s %q, %s %q; want both absent", plain, got[plain], osm, got[osm])
	}
	var out, errb bytes.Buffer
	if code := cli.Main(bg, []string{"namespace", "add", "kube-system", "--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb); code == 0 {
		t.Error("namespace add kube-system succeeded")
	}
}

// TestCheckPre runs trellis check --pre against the test cluster as its
// admin: the API server answers, 1.33 runs native sidecars, every permission
// install needs is there.
func TestCheckPre(t *testing.T) {
	kubetest.New(t)
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), []string{"check", "--pre", "-o", "json", "--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb)
	var rows []struct{ Check, Object, Result, Detail string }
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("check --pre -o json: %v\n%s%s", err, out.String(), errb.String())
	}
	if code != 0 {
		t.Errorf("check --pre: exit %d: %s", code, out.String())
	}
	got := map[string]int{}
	for _, r := range rows {
		got[r.Check]++
		if r.Result == "fail" {
			t.Errorf("check --pre: %s %s failed: %s", r.Check, r.Object, r.Detail)
		}
	}
	if got["kubernetes version"] != 1 || got["permission"] != 7 {
		t.Errorf("check --pre checked %v, want the version and 7 permissions", got)
	}
}
