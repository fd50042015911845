package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// CASecretName is the Secret, in the control plane's namespace, that keeps the
// built-in CA on Kubernetes, so that a new control-plane pod signs with the
// same root as the one before and no sidecar loses trust in its peers.
const CASecretName = "trellis-ca"

// caFiles are the files of the CA's directory the Secret carries.
var caFiles = []string{identity.RootCertFile, identity.RootKeyFile, identity.IntermediateCertFile, identity.IntermediateKeyFile, identity.RotationFile}

// restoreCA writes the CA kept in the Secret into dir, unless dir holds a CA
// already; no Secret means a first start.
func restoreCA(ctx context.Context, c kubernetes.Interface, ns, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, identity.RootCertFile)); err == nil {
		return nil
	}
	sec, err := c.CoreV1().Secrets(ns).Get(ctx, CASecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the CA from Secret %s/%s: %w", ns, CASecretName, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range caFiles {
		if b, ok := sec.Data[f]; ok {
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// saveCA keeps dir's CA in the Secret, creating or updating it when it
// differs (a first start, or an intermediate renewed at load).
func saveCA(ctx context.Context, c kubernetes.Interface, ns, dir string) error {
	data := map[string][]byte{}
	for _, f := range caFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		data[f] = b
	}
	secrets := c.CoreV1().Secrets(ns)
	cur, err := secrets.Get(ctx, CASecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: CASecretName, Labels: map[string]string{"app.kubernetes.io/part-of": "trellis"}},
			Type:       corev1.SecretTypeOpaque, Data: data,
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	same := len(cur.Data) == len(data)
	for k, v := range data {
		same = same && bytes.Equal(cur.Data[k], v)
	}
	if same {
		return nil
	}
	cur.Data = data
	_, err = secrets.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}
