package controlplane

import (
	"encoding/json"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/source/translate"
)

// validator is the validating admission webhook for Trellis's custom
// resources: it runs the same decoding and translation as `trellis apply` and
// the Kubernetes source, and refuses what they would refuse, with their
// messages (object, field, fix). Warnings (settings accepted but not used yet)
// reach kubectl as admission warnings. Cross-object problems (a rule naming a
// missing HTTPRouteGroup) are not refused: objects may be applied in any order.
type validator struct{}

func (validator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	inject.ServeReview(w, r, validate)
}

func validate(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Operation == admissionv1.Delete || len(req.Object.Raw) == 0 {
		return allow
	}
	var obj map[string]any
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return deny(err.Error())
	}
	// What the user wrote: the server's own fields are not theirs to check.
	delete(obj, "status")
	if meta, ok := obj["metadata"].(map[string]any); ok {
		keep := map[string]any{"name": meta["name"], "namespace": req.Namespace}
		for _, k := range []string{"labels", "annotations", "creationTimestamp"} {
			if v, ok := meta[k]; ok {
				keep[k] = v
			}
		}
		if a, ok := keep["annotations"].(map[string]any); ok {
			delete(a, "kubectl.kubernetes.io/last-applied-configuration")
		}
		if keep["name"] == nil || keep["name"] == "" {
			keep["name"] = req.Name
		}
		obj["metadata"] = keep
	}
	raw, _ := json.Marshal(obj)
	rs, err := translate.Decode(raw, "")
	if err != nil {
		return deny(err.Error())
	}
	_, errs, warns := translate.Translate(rs)
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, p := range errs {
			msgs[i] = p.Error()
		}
		return deny(strings.Join(msgs, "; "))
	}
	for _, p := range warns {
		allow.Warnings = append(allow.Warnings, p.Error())
	}
	return allow
}

func deny(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Reason: metav1.StatusReasonInvalid, Code: http.StatusUnprocessableEntity,
		Message: "trellis: " + msg,
	}}
}
