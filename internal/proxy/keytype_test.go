package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Sidecars with different key types (--key-type) talk mutual TLS: the server
// sidecar presents a leaf of its own key type, and the client's request is
// served through it.
func TestMixedKeyTypes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ server, client spiffe.KeyType }{
		{spiffe.KeyP384, spiffe.KeyP256},
		{spiffe.KeyRSA3072, spiffe.KeyRSA2048},
		{spiffe.KeyRSA2048, spiffe.KeyP256},
		{spiffe.KeyP256, spiffe.KeyRSA3072},
	} {
		t.Run(string(tc.server)+" server, "+string(tc.client)+" client", func(t *testing.T) {
			t.Parallel()
			store := newApp(t, "bookstore-v1", nil)
			m := newMesh(t, permissiveMesh)
			server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: store.addr(), ready: true, keyType: tc.server})
			client := m.sidecar(sidecarSpec{reg: bookbuyerReg(), keyType: tc.client})
			client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))
			if resp, body := client.get(t, bookstoreURL+"/"); resp.StatusCode != http.StatusOK || string(body) != "bookstore-v1" {
				t.Fatalf("through a %s server sidecar: %d %q", tc.server, resp.StatusCode, body)
			}
			// What the server sidecar presents, read in a handshake it then
			// refuses (this client has no certificate).
			var leaf *x509.Certificate
			conn, err := tls.Dial("tcp", server.p.Inbound.String(), &tls.Config{
				InsecureSkipVerify: true, // only to read the certificate
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					leaf, _ = x509.ParseCertificate(raw[0])
					return nil
				},
			})
			if err == nil {
				conn.Close()
			}
			if leaf == nil {
				t.Fatalf("no certificate from the server sidecar (%v)", err)
			}
			if got, _ := spiffe.TypeOfKey(leaf.PublicKey); got != tc.server {
				t.Errorf("the server sidecar's leaf key is %q (%T), want %q", got, leaf.PublicKey, tc.server)
			}
			// The client's key type, as its /config shows it.
			var cfg struct {
				KeyType string `json:"certificate_key_type"`
			}
			if err := getJSON("http://"+client.p.Admin.String()+"/config", &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.KeyType != string(tc.client) {
				t.Errorf("the client sidecar's /config says certificate_key_type %q, want %q", cfg.KeyType, tc.client)
			}
		})
	}
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}
