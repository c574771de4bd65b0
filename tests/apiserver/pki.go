package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds every key and certificate the control plane and its clients use. All of it is minted
// locally on first start and reused on restart, so kubeconfigs stay valid across restarts.
type pki struct {
	dir string

	servingCA   *keyPair
	clientCA    *keyPair
	serving     *keyPair
	admin       *keyPair
	serviceAcct *ecdsa.PrivateKey
}

type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
	// PEM forms, as written to disk and embedded in kubeconfigs.
	certPEM []byte
	keyPEM  []byte
}

const validity = 10 * 365 * 24 * time.Hour

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// loadOrCreatePKI reads the PKI from dir, minting whatever is missing.
func loadOrCreatePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	var err error
	if p.servingCA, err = p.loadOrCreate("serving-ca", nil, caTemplate("kube-testenv-serving-ca")); err != nil {
		return nil, err
	}
	if p.clientCA, err = p.loadOrCreate("client-ca", nil, caTemplate("kube-testenv-client-ca")); err != nil {
		return nil, err
	}
	serving := leafTemplate("kube-apiserver", nil, x509.ExtKeyUsageServerAuth)
	serving.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	serving.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}
	if p.serving, err = p.loadOrCreate("apiserver", p.servingCA, serving); err != nil {
		return nil, err
	}
	if p.admin, err = p.clientCert("admin", "kube-testenv-admin", []string{"system:masters"}); err != nil {
		return nil, err
	}
	if p.serviceAcct, err = p.loadOrCreateServiceAccountKey(); err != nil {
		return nil, err
	}
	return p, nil
}

// clientCert returns a client certificate for user with groups, signed by the client CA.
func (p *pki) clientCert(file, user string, groups []string) (*keyPair, error) {
	return p.loadOrCreate(file, p.clientCA, leafTemplate(user, groups, x509.ExtKeyUsageClientAuth))
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func leafTemplate(cn string, orgs []string, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
}

// loadOrCreate reads NAME.crt/NAME.key, or mints them from tmpl, signed by parent (self-signed
// when parent is nil).
func (p *pki) loadOrCreate(name string, parent *keyPair, tmpl *x509.Certificate) (*keyPair, error) {
	certFile, keyFile := p.path(name+".crt"), p.path(name+".key")
	if kp, err := readKeyPair(certFile, keyFile); err == nil {
		return kp, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	return readKeyPair(certFile, keyFile)
}

func readKeyPair(certFile, keyFile string) (*keyPair, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	certBlock, _ := pem.Decode(certPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if certBlock == nil || keyBlock == nil {
		return nil, fmt.Errorf("%s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key cannot sign", keyFile)
	}
	return &keyPair{cert: cert, key: signer, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// loadOrCreateServiceAccountKey returns the key that signs service account tokens
// (sa.key, with its public half in sa.pub).
func (p *pki) loadOrCreateServiceAccountKey() (*ecdsa.PrivateKey, error) {
	keyFile, pubFile := p.path("sa.key"), p.path("sa.pub")
	if raw, err := os.ReadFile(keyFile); err == nil {
		block, _ := pem.Decode(raw)
		if block == nil {
			return nil, fmt.Errorf("%s is not PEM", keyFile)
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		ec, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s is not an ECDSA key", keyFile)
		}
		return ec, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return key, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
