package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

// TestReloadInjectFiles (issue 11 point 6): SIGHUP applies an edited AUTH
// users file (a removed user gets 535 5.7.8, an added one gets in), a
// replaced certificate (a new STARTTLS session sees the new serial) and an
// edited HTTP tokens file (the revoked token gets 401), none of them
// reported as needing a restart; a broken users file refuses the reload
// and the users in force stay.
// The HTTP tokens, in the tokens-file format shared with admin.tokens_file
// ("name:token", a token of at least 32 characters).
const (
	oldHTTPToken = "old-http-token-0123456789abcdef0123"
	newHTTPToken = "new-http-token-0123456789abcdef0123"
)

func TestReloadInjectFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cfgOpts{dns: "127.0.0.1:1", port: 1})
	users := filepath.Join(e.dir, "users")
	certFile, keyFile := filepath.Join(e.dir, "cert.pem"), filepath.Join(e.dir, "key.pem")
	tokens := filepath.Join(e.dir, "http-tokens")
	writeAuthUsers(t, users, "ann")
	writeSerialCert(t, certFile, keyFile, 1001)
	writeText(t, tokens, "app:"+oldHTTPToken+"\n")
	withHTTPInject(t, e)
	replaceInConfig(t, e, "    shutdown_grace: 20s\n", fmt.Sprintf("    shutdown_grace: 20s\n    tls_cert: %s\n    tls_key: %s\n    auth_users_file: %s\n", certFile, keyFile, users))
	replaceInConfig(t, e, "  http:\n    listen: [\"127.0.0.1:0\"]\n", "  http:\n    listen: [\"127.0.0.1:0\"]\n    tokens_file: "+tokens+"\n")
	d := start(t, e)
	httpAddr := d.httpAddr()

	if err := tryAuth(d.smtpAddr, "ann"); err != nil {
		t.Fatalf("ann before any reload: %v", err)
	}
	if err := tryAuth(d.smtpAddr, "bob"); !isSMTPReply(err, 535, "5.7.8") {
		t.Fatalf("bob before any reload: %v, want 535 5.7.8", err)
	}
	if s := startTLSSerial(t, d.smtpAddr); s != 1001 {
		t.Fatalf("certificate serial %d at start, want 1001", s)
	}
	msg := map[string]any{"from": "app@e2e.test", "recipients": []string{"a@dest.e2e"}, "subject": "s", "text": "t"}
	if code := postBearer(t, httpAddr, oldHTTPToken, msg); code != http.StatusAccepted {
		t.Fatalf("HTTP with the old token before the reload: %d", code)
	}

	// Ann out, bob in, a new certificate, a new token; SIGHUP.
	writeAuthUsers(t, users, "bob")
	writeSerialCert(t, certFile, keyFile, 2002)
	writeText(t, tokens, "app:"+newHTTPToken+"\n")
	r := sighupAndWait(t, d, 1, "configuration reloaded")
	if r.num("auth_users") != 1 || r.num("http_inject_tokens") != 1 {
		t.Errorf("reload record %v: want auth_users 1 and http_inject_tokens 1", r)
	}
	if restart, _ := r["changed_needing_restart"].([]any); slices.Contains(restart, any("inject")) {
		t.Errorf("inject reported as needing a restart after a files-only change: %v", restart)
	}
	if err := tryAuth(d.smtpAddr, "ann"); !isSMTPReply(err, 535, "5.7.8") {
		t.Errorf("ann after the reload: %v, want 535 5.7.8", err)
	}
	if err := tryAuth(d.smtpAddr, "bob"); err != nil {
		t.Errorf("bob after the reload: %v", err)
	}
	if s := startTLSSerial(t, d.smtpAddr); s != 2002 {
		t.Errorf("certificate serial %d after the reload, want 2002", s)
	}
	if code := postBearer(t, httpAddr, oldHTTPToken, msg); code != http.StatusUnauthorized {
		t.Errorf("HTTP with the revoked token: %d, want 401", code)
	}
	if code := postBearer(t, httpAddr, newHTTPToken, msg); code != http.StatusAccepted {
		t.Errorf("HTTP with the new token: %d, want 202", code)
	}

	// A broken users file: refused, naming the key and the line; bob
	// still gets in, and the certificate replaced beside it is not applied
	// either (the reload is refused whole).
	writeText(t, users, "carol not-a-bcrypt-hash\n")
	writeSerialCert(t, certFile, keyFile, 3003)
	r = sighupAndWait(t, d, 1, "reload refused")
	if e := r.str("error"); !strings.Contains(e, "inject.smtp.auth_users_file") || !strings.Contains(e, ":1:") {
		t.Errorf("refusal %q does not name inject.smtp.auth_users_file and line 1", e)
	}
	if err := tryAuth(d.smtpAddr, "bob"); err != nil {
		t.Errorf("bob after the refused reload: %v", err)
	}
	if err := tryAuth(d.smtpAddr, "carol"); !isSMTPReply(err, 535, "5.7.8") {
		t.Errorf("carol after the refused reload: %v, want 535 5.7.8", err)
	}
	if s := startTLSSerial(t, d.smtpAddr); s != 2002 {
		t.Errorf("certificate serial %d after the refused reload, want 2002 still", s)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// sighupAndWait sends SIGHUP and waits for the n-th record (counting this run's)
// whose message starts with prefix.
func sighupAndWait(t *testing.T, d *daemon, n int, prefix string) record {
	t.Helper()
	seen := 0
	for _, r := range d.records() {
		if strings.HasPrefix(r.str("msg"), prefix) {
			seen++
		}
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var found record
	d.waitRecords(fmt.Sprintf("%q #%d", prefix, seen+n), 20*time.Second, func(recs []record) bool {
		k := 0
		for _, r := range recs {
			if strings.HasPrefix(r.str("msg"), prefix) {
				if k++; k == seen+n {
					found = r
					return true
				}
			}
		}
		return false
	})
	return found
}

func writeText(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func replaceInConfig(t *testing.T, e *env, old, new string) {
	t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), old, new, 1)
	if s == string(b) {
		t.Fatalf("config has no %q to replace", old)
	}
	writeText(t, e.cfgPath, s)
}

// writeAuthUsers writes an AUTH users file; each user's password is its name
// followed by "-pw".
func writeAuthUsers(t *testing.T, path string, names ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# e2e users\n")
	for _, n := range names {
		h, err := bcrypt.GenerateFromPassword([]byte(n+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %s\n", n, h)
	}
	writeText(t, path, b.String())
}

// writeSerialCert writes a self-signed certificate for 127.0.0.1 with the given
// serial number, and its key.
func writeSerialCert(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "mtad.e2e"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeText(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeText(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
}

// tryAuth opens a session, authenticates as user with user's password
// ("<user>-pw") by PLAIN (offered on loopback without TLS) and quits.
func tryAuth(addr, user string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.e2e"); err != nil {
		return err
	}
	if err := c.Auth(sasl.NewPlainClient("", user, user+"-pw")); err != nil {
		return err
	}
	return c.Quit()
}

func isSMTPReply(err error, code int, enh string) bool {
	se, ok := err.(*smtp.SMTPError)
	return ok && se.Code == code && fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]) == enh
}

// startTLSSerial runs STARTTLS on a new session and returns the serial of
// the certificate the daemon presented.
func startTLSSerial(t *testing.T, addr string) int64 {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if err := c.Hello("client.e2e"); err != nil { // the handshake is lazy: this makes it
		t.Fatalf("EHLO after STARTTLS: %v", err)
	}
	st, ok := c.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		t.Fatal("no peer certificate after STARTTLS")
	}
	return st.PeerCertificates[0].SerialNumber.Int64()
}

func postBearer(t *testing.T, addr, token string, body any) int {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/messages", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
