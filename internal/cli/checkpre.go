package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/trellis-mesh/trellis/internal/manifests"
)

// minKubeMinor is the oldest Kubernetes minor whose API servers and kubelets
// run native sidecars (init containers with restartPolicy Always) by default.
const minKubeMinor = 29

// checkList collects the results of a check.
type checkList struct{ res []CheckResult }

func (l *checkList) add(check, object, result, format string, args ...any) {
	l.res = append(l.res, CheckResult{Check: check, Object: object, Result: result, Detail: fmt.Sprintf(format, args...)})
}

// kubeCheck starts a check of the cluster: its list of results and a client.
// When the kubeconfig does not load, that is the one result and the client is
// nil.
func (o *checkOptions) kubeCheck() (*checkList, *rest.Config, *kubernetes.Clientset, error) {
	l := &checkList{}
	cfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		l.add("kubernetes API", "", checkFail, "%v", err)
		return l, nil, nil, nil
	}
	c, err := kubernetes.NewForConfig(cfg)
	return l, cfg, c, err
}

// runPre checks, before `trellis install`, that the cluster can take Trellis:
// the API server answers, is recent enough for native sidecars, and lets the
// caller create what install creates.
func (o *checkOptions) runPre(ctx context.Context, w io.Writer) error {
	l, cfg, c, err := o.kubeCheck()
	if err != nil {
		return err
	}
	if c == nil {
		return o.report(w, l.res)
	}
	add := l.add
	v, err := c.Discovery().ServerVersion()
	if err != nil {
		add("kubernetes API", cfg.Host, checkFail, "does not answer: %v", err)
		return o.report(w, l.res)
	}
	add("kubernetes API", cfg.Host, checkOK, "answers, version %s", v.GitVersion)
	minor, err := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	switch {
	case err != nil || v.Major != "1":
		add("kubernetes version", "", checkWarn, "cannot read version %q.%q; Trellis needs 1.%d or later for native sidecars", v.Major, v.Minor, minKubeMinor)
	case minor < minKubeMinor:
		add("kubernetes version", "", checkFail, "1.%d is older than 1.%d: sidecars are injected as native sidecars (init containers with restartPolicy Always), which it does not run; upgrade the cluster", minor, minKubeMinor)
	default:
		add("kubernetes version", "", checkOK, "1.%d runs native sidecars", minor)
	}
	ns := manifests.DefaultValues().Namespace
	for _, a := range []authzv1.ResourceAttributes{
		{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Verb: "create"},
		{Resource: "namespaces", Verb: "create"},
		{Group: "apps", Resource: "deployments", Verb: "create", Namespace: ns},
	} {
		what := a.Verb + " " + a.Resource
		if a.Group != "" {
			what += "." + a.Group
		}
		r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &a}}, metav1.CreateOptions{})
		switch {
		case err != nil:
			add("permission", what, checkWarn, "cannot ask the API server: %v", err)
		case !r.Status.Allowed:
			add("permission", what, checkFail, "not allowed for your credentials; trellis install needs it (ask a cluster admin)")
		default:
			add("permission", what, checkOK, "allowed")
		}
	}
	if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		add("namespace", ns, checkWarn, "exists already: trellis install will apply over what is there")
	} else {
		add("namespace", ns, checkOK, "free")
	}
	return o.report(w, l.res)
}
