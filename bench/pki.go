package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// serverName is the name the second hop's certificate carries and the first hop checks.
const serverName = "hop2.bench.test"

// pkiFiles are the PEM files of the reference proxies' mutual TLS: a CA, the
// second hop's server certificate and the first hop's client certificate, all
// ECDSA P-256. The .pem files hold certificate then key, as haproxy wants.
type pkiFiles struct {
	CA                               string
	ServerCert, ServerKey, ServerPEM string
	ClientCert, ClientKey, ClientPEM string
}

// writePKI makes a fresh CA and two leaf certificates in dir.
func writePKI(dir string) (pkiFiles, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pkiFiles{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trellis bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return pkiFiles{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return pkiFiles{}, err
	}
	f := pkiFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"), ServerPEM: filepath.Join(dir, "server.pem"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"), ClientPEM: filepath.Join(dir, "client.pem"),
	}
	if err := writePEM(f.CA, pemBlock("CERTIFICATE", caDER)); err != nil {
		return pkiFiles{}, err
	}
	leaves := []struct {
		serial         int64
		cn             string
		usage          x509.ExtKeyUsage
		cert, key, all string
	}{
		{2, serverName, x509.ExtKeyUsageServerAuth, f.ServerCert, f.ServerKey, f.ServerPEM},
		{3, "hop1.bench.test", x509.ExtKeyUsageClientAuth, f.ClientCert, f.ClientKey, f.ClientPEM},
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return pkiFiles{}, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(l.serial),
			Subject:      pkix.Name{CommonName: l.cn},
			DNSNames:     []string{l.cn},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{l.usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return pkiFiles{}, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return pkiFiles{}, err
		}
		cert, priv := pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER)
		for path, data := range map[string][]byte{l.cert: cert, l.key: priv, l.all: append(append([]byte{}, cert...), priv...)} {
			if err := writePEM(path, data); err != nil {
				return pkiFiles{}, err
			}
		}
	}
	return f, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePEM(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}
