package inject

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// NamespaceGetter returns a namespace by name (from an informer's cache).
type NamespaceGetter func(name string) (*corev1.Namespace, error)

// Webhook serves AdmissionReview v1 requests for pods.
type Webhook struct {
	Config     Config
	Namespaces NamespaceGetter
	// SidecarResources returns the mesh's current sidecar resources (the
	// MeshConfig's spec.sidecar.resources as JSON, model.MeshSettings), which
	// each pod injected from then on gets; nil or "": Config.Resources.
	SidecarResources func() string
	Logger           *slog.Logger
}

// maxReview bounds an AdmissionReview body; pods and Trellis's resources are
// far smaller.
const maxReview = 4 << 20

// ServeHTTP answers one AdmissionReview. The policy when injection cannot be
// done (a namespace that cannot be read, a configuration error) is to admit
// the pod unmeshed, with a warning the user sees in kubectl's output: a
// control-plane problem never blocks workloads, and a pod is never admitted
// half-injected.
func (wh *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := wh.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ServeReview(w, r, func(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse { return wh.review(req, log) })
}

// ServeReview reads one AdmissionReview from r, answers it with review's
// response (carrying the request's UID) and writes it to w: the plumbing of
// every Trellis admission webhook.
func ServeReview(w http.ResponseWriter, r *http.Request, review func(*admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReview+1))
	if err != nil || len(body) > maxReview {
		http.Error(w, "cannot read the AdmissionReview", http.StatusBadRequest)
		return
	}
	var ar admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &ar); err != nil || ar.Request == nil {
		http.Error(w, "the body is not an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	resp := review(ar.Request)
	resp.UID = ar.Request.UID
	ar.Response, ar.Request = resp, nil
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ar)
}

func (wh *Webhook) review(req *admissionv1.AdmissionRequest, log *slog.Logger) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		allow.Warnings = []string{"trellis: the pod could not be read, so it was admitted without the sidecar: " + err.Error()}
		return allow
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	var ns *corev1.Namespace
	if wh.Namespaces != nil {
		var err error
		if ns, err = wh.Namespaces(req.Namespace); err != nil {
			allow.Warnings = []string{fmt.Sprintf("trellis: namespace %s could not be read (%v), so pod %s was admitted without the sidecar", req.Namespace, err, name)}
			log.Warn("injection skipped", "pod", req.Namespace+"/"+name, "err", err)
			return allow
		}
	}
	d := Decide(&pod, ns)
	if !d.Inject {
		return allow
	}
	cfg := wh.Config
	if wh.SidecarResources != nil {
		if js := wh.SidecarResources(); js != "" {
			// A fresh value: decoding into cfg.Resources would write into the
			// maps it shares with wh.Config.
			var r corev1.ResourceRequirements
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				// The translator checked it; keep injecting without it.
				log.Error("the MeshConfig's sidecar resources do not parse; injecting without them", "err", err)
			} else {
				cfg.Resources = r
			}
		}
	}
	injected, err := Mutate(&pod, cfg)
	if err == nil && ns != nil && ns.Annotations[MetricsAnnotation] == "enabled" {
		for k, v := range ScrapeAnnotations() {
			injected.Annotations[k] = v
		}
	}
	if err == nil {
		var patch []byte
		if patch, err = Patch(&pod, injected); err == nil {
			pt := admissionv1.PatchTypeJSONPatch
			allow.Patch, allow.PatchType = patch, &pt
			log.Info("sidecar injected", "pod", req.Namespace+"/"+name, "why", d.Reason)
			return allow
		}
	}
	allow.Warnings = []string{fmt.Sprintf("trellis: pod %s was admitted without the sidecar: %v", name, err)}
	log.Error("injection failed", "pod", req.Namespace+"/"+name, "err", err)
	return allow
}
