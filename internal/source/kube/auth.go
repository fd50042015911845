package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/model"
)

// Audience is the audience of the projected service-account token a sidecar
// presents: a token made for the API server, or for anyone else, is refused.
const Audience = "trellis"

// TokenReviewer authenticates sidecars on Kubernetes: the credential is the
// pod's projected service-account token (audience "trellis"), checked with a
// TokenReview, and the identity is its service account.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audience expected in the token; default Audience.
	Audience string
}

// ErrUnauthenticated is returned for a token the API server does not accept.
var ErrUnauthenticated = errors.New("service-account token not accepted")

// Authenticate reviews token and returns the service account it belongs to.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (model.Identity, error) {
	aud := r.Audience
	if aud == "" {
		aud = Audience
	}
	if token == "" {
		return model.Identity{}, fmt.Errorf("%w: no token: mount a projected service-account token with audience %q", ErrUnauthenticated, aud)
	}
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return model.Identity{}, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		msg := tr.Status.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return model.Identity{}, fmt.Errorf("%w: %s (want a projected service-account token with audience %q)", ErrUnauthenticated, msg, aud)
	}
	id, ok := serviceAccount(tr.Status.User.Username)
	if !ok {
		return model.Identity{}, fmt.Errorf("%w: %q is not a service account", ErrUnauthenticated, tr.Status.User.Username)
	}
	return id, nil
}

// serviceAccount parses "system:serviceaccount:<namespace>:<name>".
func serviceAccount(user string) (model.Identity, bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return model.Identity{}, false
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return model.Identity{}, false
	}
	return model.Identity{Namespace: ns, Account: sa}, true
}
