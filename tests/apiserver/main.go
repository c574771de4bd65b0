// kube-testenv runs a real kube-apiserver with an embedded etcd in one process, on loopback only,
// for tests and demos that need a Kubernetes control plane without a cluster.
//
// It writes an admin kubeconfig to DIR/kubeconfig (atomically) and prints exactly one line to
// stdout once the API server is ready:
//
//	KUBE_TESTENV_READY {"kubeconfig":"DIR/kubeconfig","server":"https://127.0.0.1:PORT","pid":N}
//
// or KUBE_TESTENV_FAILED <reason> if it never gets there. It stops cleanly on SIGTERM, SIGINT or
// (by default) when its stdin reaches EOF, so a parent that dies takes the control plane with it.
// Logs go to stderr.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const readyTimeout = 120 * time.Second

type userFlag []string

func (u *userFlag) String() string     { return strings.Join(*u, " ") }
func (u *userFlag) Set(v string) error { *u = append(*u, v); return nil }

func main() {
	dir := flag.String("dir", "", "state directory (PKI, etcd data, kubeconfigs); required")
	port := flag.Int("port", 0, "secure port of the API server on 127.0.0.1; 0 picks a free one")
	exitOnEOF := flag.Bool("exit-on-stdin-eof", true, "shut down when stdin reaches EOF")
	verbosity := flag.Int("v", 0, "kube-apiserver log verbosity")
	var users userFlag
	flag.Var(&users, "user", "extra client-certificate user as NAME[:GROUP,GROUP...], written to DIR/NAME.kubeconfig (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s --dir DIR [flags] [-- extra kube-apiserver flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *dir == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*dir, *port, *exitOnEOF, *verbosity, users, flag.Args()); err != nil {
		fmt.Printf("KUBE_TESTENV_FAILED %v\n", err)
		os.Exit(1)
	}
}

func run(dir string, port int, exitOnEOF bool, verbosity int, users []string, extraArgs []string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	p, err := loadOrCreatePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}

	etcd, etcdURL, err := startEtcd(dir)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()
	go func() {
		if err, ok := <-etcd.Err(); ok && err != nil {
			fmt.Fprintf(os.Stderr, "kube-testenv: etcd failed: %v\n", err)
			genericapiserver.RequestShutdown()
		}
	}()

	if port == 0 {
		if port, err = freePort(); err != nil {
			return err
		}
	}
	server := "https://127.0.0.1:" + strconv.Itoa(port)
	args := apiserverArgs(p, etcdURL, port, verbosity)
	args = append(args, extraArgs...)

	go awaitReady(dir, server, p, users)
	if exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			fmt.Fprintln(os.Stderr, "kube-testenv: stdin closed, shutting down")
			genericapiserver.RequestShutdown()
		}()
	}

	// The API server installs its own SIGTERM/SIGINT handling; shutdown from code goes through
	// RequestShutdown, never a second signal handler.
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(args)
	if code := cli.Run(cmd); code != 0 {
		return fmt.Errorf("kube-apiserver exited with code %d (see its log on stderr)", code)
	}
	return nil
}

func apiserverArgs(p *pki, etcdURL string, port int, verbosity int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses loopback addresses, and nothing here routes to the
		// kubernetes Service anyway.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + p.dir,
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("client-ca.crt"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--authorization-mode=RBAC",
		// No controller-manager creates default ServiceAccounts, so Pods would be refused.
		"--disable-admission-plugins=ServiceAccount",
		"--service-account-issuer=https://127.0.0.1:" + strconv.Itoa(port),
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--v=" + strconv.Itoa(verbosity),
	}
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}

	cfg := embed.NewConfig()
	cfg.Name = "kube-testenv"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true // test data; durability is not wanted and fsync dominates latency
	cfg.EnableGRPCGateway = false
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, clientURL.String(), nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready after 60s")
	}
}

// freePort asks the kernel for a free loopback port. Another process may take it before we bind
// it; callers retry the whole start on failure.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// awaitReady waits until the API server answers /readyz and serves the default namespace, writes
// the kubeconfigs and announces readiness on stdout.
func awaitReady(dir, server string, p *pki, users []string) {
	fail := func(err error) {
		fmt.Printf("KUBE_TESTENV_FAILED %v\n", err)
		genericapiserver.RequestShutdown()
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	client := adminHTTPClient(p)
	for _, path := range []string{"/readyz", "/api/v1/namespaces/default"} {
		if err := pollOK(ctx, client, server+path); err != nil {
			fail(fmt.Errorf("waiting for %s: %w", path, err))
			return
		}
	}

	for _, u := range users {
		name, groups, _ := strings.Cut(u, ":")
		var groupList []string
		if groups != "" {
			groupList = strings.Split(groups, ",")
		}
		kp, err := p.clientCert("user-"+safeFileName(name), name, groupList)
		if err != nil {
			fail(fmt.Errorf("user %s: %w", name, err))
			return
		}
		if err := writeKubeconfig(filepath.Join(dir, safeFileName(name)+".kubeconfig"), server, p.servingCA, kp); err != nil {
			fail(err)
			return
		}
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, p.servingCA, p.admin); err != nil {
		fail(err)
		return
	}
	ready, _ := json.Marshal(map[string]any{"kubeconfig": kubeconfig, "server": server, "pid": os.Getpid()})
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "KUBE_TESTENV_READY %s\n", ready)
	_ = w.Flush()
}

func safeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ':' || r == os.PathSeparator {
			return '_'
		}
		return r
	}, s)
}

func adminHTTPClient(p *pki) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(p.servingCA.cert)
	cert := tls.Certificate{Certificate: [][]byte{p.admin.cert.Raw}, PrivateKey: p.admin.key}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      roots,
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}},
	}
}

func pollOK(ctx context.Context, client *http.Client, target string) error {
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, server string, ca *keyPair, user *keyPair) error {
	b64 := base64.StdEncoding.EncodeToString
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kube-testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: kube-testenv
  context:
    cluster: kube-testenv
    user: %s
    namespace: default
current-context: kube-testenv
`, server, b64(ca.certPEM), user.cert.Subject.CommonName, b64(user.certPEM), b64(user.keyPEM), user.cert.Subject.CommonName)
	return writeFileAtomic(path, []byte(content), 0o600)
}
