package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestCheckOnCluster runs `trellis check --kubernetes` against a mesh on the
// test cluster: the control plane answers, the meshed pod's sidecar is
// connected, holds its current inbound policy and a valid certificate, an
// invalid resource is listed as left out, and a Service backed by a pod
// without a sidecar is reported as having endpoints outside the mesh.
func TestCheckOnCluster(t *testing.T) {
	if os.Getenv(ImagesEnv) == "" {
		t.Skipf("Trellis's images are not in the cluster: set $%s after test/cluster/images.sh (make e2e-kube does)", ImagesEnv)
	}
	c := kubetest.New(t)
	ns := c.Namespace(t, "checked", true)
	legacyNS := c.Namespace(t, "legacy", true) // meshed, but the webhook is not registered for it
	m := startMesh(t, c, ns)
	m.app(t, ns, "bookstore-v1", "bookstore", nil, 14001, "bookstore", "--listen", "127.0.0.1:14001", "--version", "v1")
	m.service(t, ns, "bookstore", map[string]string{"app": "bookstore-v1"}, 14001)
	m.waitRunning(t, ns, "bookstore-v1")
	legacy := c.Pod(t, legacyNS, "old", "default", "10.244.0.241")
	c.Service(t, legacyNS, "old-svc", corev1.ServicePort{Name: "http", Port: 8080}, true, legacy)
	c.Apply(t, fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: bad, namespace: %s}
spec:
  matches: [{name: books, pathRegex: /books, methods: [get]}]
`, ns))

	wl := ns + "/bookstore-v1"
	type key struct{ check, object string }
	var last string
	kubetest.Eventually(t, 60*time.Second, "trellis check --kubernetes reports the mesh", func() error {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), []string{"check", "--kubernetes", "--control-plane-health", "http://" + m.info.Health, "-o", "json",
			"--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb)
		last = out.String() + errb.String()
		var res []cli.CheckResult
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return fmt.Errorf("exit %d, output not JSON: %v", code, err)
		}
		got := map[key]cli.CheckResult{}
		for _, r := range res {
			got[key{r.Check, r.Object}] = r
		}
		for _, w := range []struct {
			k              key
			result, detail string
		}{
			{key{"sidecar", wl}, "ok", "is current"},
			{key{"certificate", wl}, "ok", "valid for"},
			{key{"service", "Service " + legacyNS + "/old-svc"}, "warn", "has endpoints outside the mesh: pod old has no sidecar"},
			{key{"resources", "HTTPRouteGroup " + ns + "/bad"}, "warn", `left out: HTTPRouteGroup ` + ns + `/bad: spec.matches[0].methods[0]: method "get" must be upper case: use "GET"`},
		} {
			r, ok := got[w.k]
			if !ok || r.Result != w.result || !strings.Contains(r.Detail, w.detail) {
				return fmt.Errorf("%s %s = %+v, want %s with %q", w.k.check, w.k.object, r, w.result, w.detail)
			}
		}
		// One replica, which holds the status writer's Lease.
		var writer *cli.CheckResult
		for i := range res {
			if res[i].Check == "status writer" {
				writer = &res[i]
			}
		}
		if writer == nil || writer.Result != "ok" || !strings.Contains(writer.Detail, "(the replica answering), which writes status conditions") {
			return fmt.Errorf("status writer = %+v, want this one replica holding the Lease", writer)
		}
		if r := res[0]; r.Check != "control plane" || r.Result != "ok" {
			return fmt.Errorf("first result %+v, want the control plane ok", r)
		}
		if code != 0 {
			return fmt.Errorf("exit %d with only warnings expected", code)
		}
		return nil
	})
	t.Logf("trellis check --kubernetes:\n%s", last)
}
