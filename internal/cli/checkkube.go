package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// controlPlaneHealthPort is where the installed control plane serves /status.
const controlPlaneHealthPort = 9091

// runKube checks a mesh on Kubernetes: the control plane answers (each of its
// pods, read through the API server's pod proxy, or the one at
// --control-plane-health), every meshed pod's sidecar is connected, current
// and certified, and it lists resources with problems and services with
// endpoints outside the mesh.
func (o *checkOptions) runKube(ctx context.Context, w io.Writer) error {
	l, _, c, err := o.kubeCheck()
	if err != nil {
		return err
	}
	if c == nil {
		return o.report(w, l.res)
	}
	add := l.add
	st, where, err := o.kubeStatus(ctx, c)
	if err != nil {
		add("control plane", where, checkFail, "%v", err)
		return o.report(w, l.res)
	}
	connected := 0
	for _, wl := range st.Workloads {
		if wl.Connected {
			connected++
		}
	}
	add("control plane", where, checkOK, "serving snapshot %s: %d sidecar connections, %d of %d meshed pods connected, %d certificates issued",
		st.Snapshot, st.Server.Connections, connected, len(st.Workloads), st.Server.CertificatesIssued)
	l.res = append(l.res, statusWriterCheck(st.StatusWriter, where))
	l.res = append(l.res, meshChecks(st.Mesh)...)
	l.res = append(l.res, problemChecks(st.Problems)...)
	for _, wl := range st.Workloads {
		if !wl.Connected {
			add("sidecar", wl.ID, checkFail, "not connected to the control plane: is the pod running, and does its sidecar reach the control plane? (kubectl logs -c %s)", inject.ProxyContainer)
			continue
		}
		ns, pod, _ := strings.Cut(wl.ID, "/")
		l.res = append(l.res, o.sidecarChecks(wl.ID, wl.InboundVersion, func(sc *sidecarConfig) error {
			b, err := c.CoreV1().Pods(ns).ProxyGet("http", pod, strconv.Itoa(inject.AdminPort), "/config", nil).DoRaw(ctx)
			if err != nil {
				return fmt.Errorf("through the API server's pod proxy: %w", err)
			}
			return json.Unmarshal(b, sc)
		})...)
	}
	return o.report(w, l.res)
}

// kubeStatus reads the control plane's /status: at --control-plane-health
// when given, else from each ready pod of the control plane's Deployment
// through the API server (the first that answers).
func (o *checkOptions) kubeStatus(ctx context.Context, c kubernetes.Interface) (controlplane.KubeStatus, string, error) {
	var st controlplane.KubeStatus
	if o.cpHealth != "" {
		err := getJSON(o.httpClient, strings.TrimSuffix(o.cpHealth, "/")+"/status", &st)
		return st, o.cpHealth, err
	}
	pods, err := c.CoreV1().Pods(o.namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + controlplane.ServiceName})
	if err != nil {
		return st, o.namespace, fmt.Errorf("list the control plane's pods: %w", err)
	}
	if len(pods.Items) == 0 {
		return st, o.namespace, fmt.Errorf("no pod labelled app=%s in namespace %s: is Trellis installed (trellis install), or in another namespace (--namespace)?", controlplane.ServiceName, o.namespace)
	}
	var errs []string
	for _, p := range pods.Items {
		b, err := c.CoreV1().Pods(o.namespace).ProxyGet("http", p.Name, strconv.Itoa(controlPlaneHealthPort), "/status", nil).DoRaw(ctx)
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil {
			return st, o.namespace + "/" + p.Name, nil
		}
		errs = append(errs, p.Name+": "+err.Error())
	}
	return st, o.namespace, fmt.Errorf("no control-plane pod answers /status: %s", strings.Join(errs, "; "))
}

// problemChecks reports what the control plane found: Services with endpoints
// outside the mesh, and resources left out or in force with warnings.
func problemChecks(ps []model.Problem) []CheckResult {
	var res []CheckResult
	outside, other := 0, 0
	for _, p := range ps {
		switch {
		case strings.HasPrefix(p.Object, "Service "):
			outside++
			res = append(res, CheckResult{Check: "service", Object: p.Object, Result: checkWarn, Detail: p.Error()})
		case p.Warning:
			other++
			res = append(res, CheckResult{Check: "resources", Object: p.Object, Result: checkWarn, Detail: p.Error()})
		default:
			other++
			res = append(res, CheckResult{Check: "resources", Object: p.Object, Result: checkWarn, Detail: "left out: " + p.Error()})
		}
	}
	if other == 0 {
		res = append(res, CheckResult{Check: "resources", Result: checkOK, Detail: "no resource has problems"})
	}
	if outside == 0 {
		res = append(res, CheckResult{Check: "service", Result: checkOK, Detail: "no service has endpoints outside the mesh"})
	}
	return res
}

// statusWriterCheck says which control-plane replica writes status
// conditions, as the one at where sees it.
func statusWriterCheck(w kube.StatusWriter, where string) CheckResult {
	switch {
	case w.Lease == "":
		return CheckResult{Check: "status writer", Object: where, Result: checkWarn,
			Detail: "every replica writes status conditions, without leader election: the control plane may not read its Lease; apply its current Role (trellis install, or the chart) and restart it"}
	case w.Holder == "":
		return CheckResult{Check: "status writer", Object: w.Lease, Result: checkWarn,
			Detail: "no replica holds the Lease yet, so no status conditions are being written; they will be once one does"}
	case w.Holder == w.Self:
		return CheckResult{Check: "status writer", Object: w.Lease, Result: checkOK,
			Detail: "held by " + w.Holder + " (the replica answering), which writes status conditions"}
	}
	return CheckResult{Check: "status writer", Object: w.Lease, Result: checkOK,
		Detail: "held by " + w.Holder + ", which writes status conditions"}
}
