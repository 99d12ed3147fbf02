package inject

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/tokens"
)

// certWithSerial is a self-signed server certificate for 127.0.0.1 with
// the given serial number, which is how the tests tell certificates apart.
func certWithSerial(t testing.TB, serial int64) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "mx.test"},
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
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func usersOf(t testing.TB, names ...string) map[string][]byte {
	t.Helper()
	m := make(map[string][]byte)
	for _, n := range names {
		h, err := bcrypt.GenerateFromPassword([]byte(n+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = h
	}
	return m
}

// startTLSClient is a go-smtp session after STARTTLS, its handshake done
// (the client's TLS handshake is lazy: the EHLO after STARTTLS makes it).
func startTLSClient(t testing.TB, addr string) (*smtp.Client, error) {
	c, err := smtp.NewClientStartTLS(dialFrom(t, addr, outsideIP), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	if err := c.Hello("client.test"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// servedSerial runs STARTTLS on a new session and returns the serial of
// the certificate the server presented.
func servedSerial(t testing.TB, addr string) int64 {
	t.Helper()
	c, err := startTLSClient(t, addr)
	if err != nil {
		t.Fatalf("starttls: %v", err)
	}
	defer c.Close()
	st, ok := c.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		t.Fatal("no peer certificate after STARTTLS")
	}
	return st.PeerCertificates[0].SerialNumber.Int64()
}

// TestSetAuthUsers: after the swap, a removed user is refused (535 5.7.8)
// on new sessions and on sessions opened before it; an added user works;
// a session authenticated before it stays authenticated; a bad hash is
// refused and changes nothing; no users stops offering AUTH.
func TestSetAuthUsers(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.AuthUsers = usersOf(t, "ann") })
	before := e.client(t, outsideIP)
	if err := before.Auth(sasl.NewPlainClient("", "ann", "ann-pw")); err != nil {
		t.Fatalf("ann before the swap: %v", err)
	}
	opened := e.client(t, outsideIP) // connected, not yet authenticated

	if err := e.srv.SetAuthUsers(usersOf(t, "bob")); err != nil {
		t.Fatalf("SetAuthUsers: %v", err)
	}
	if _, err := send(before, "app@example.com", []string{"x@example.net"}, "Subject: x\r\n\r\nb\r\n", nil); err != nil {
		t.Errorf("relay on the session authenticated before the swap: %v", err)
	}
	wantSMTPError(t, "ann on a session opened before the swap", opened.Auth(sasl.NewPlainClient("", "ann", "ann-pw")), 535, "5.7.8")
	wantSMTPError(t, "ann after the swap", e.client(t, outsideIP).Auth(sasl.NewPlainClient("", "ann", "ann-pw")), 535, "5.7.8")
	if err := e.client(t, outsideIP).Auth(sasl.NewLoginClient("bob", "bob-pw")); err != nil {
		t.Errorf("bob after the swap: %v", err)
	}

	bad := usersOf(t, "carol")
	bad["dave"] = []byte("not-bcrypt")
	if err := e.srv.SetAuthUsers(bad); err == nil || !strings.Contains(err.Error(), `"dave"`) {
		t.Errorf("SetAuthUsers with a bad hash: %v, want an error naming dave", err)
	}
	if err := e.client(t, outsideIP).Auth(sasl.NewPlainClient("", "bob", "bob-pw")); err != nil {
		t.Errorf("bob after a refused swap: %v", err)
	}

	if err := e.srv.SetAuthUsers(nil); err != nil {
		t.Fatalf("SetAuthUsers(nil): %v", err)
	}
	c := e.client(t, outsideIP)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH still advertised with no users")
	}
	wantSMTPError(t, "auth with no users", c.Auth(sasl.NewPlainClient("", "bob", "bob-pw")), 502, "5.7.0")
}

// TestSetTLSConfig: a new handshake presents the new certificate, a
// session already under TLS goes on, nil stops STARTTLS, and nil is
// refused where implicit TLS listens.
func TestSetTLSConfig(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.TLSConfig = certWithSerial(t, 101) })
	if got := servedSerial(t, e.addr); got != 101 {
		t.Fatalf("serial before the swap %d, want 101", got)
	}
	old, err := startTLSClient(t, e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	if err := e.srv.SetTLSConfig(certWithSerial(t, 202)); err != nil {
		t.Fatalf("SetTLSConfig: %v", err)
	}
	if got := servedSerial(t, e.addr); got != 202 {
		t.Errorf("serial after the swap %d, want 202", got)
	}
	if err := old.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("auth on the session under the old certificate: %v", err)
	}
	if _, err := send(old, "app@example.com", []string{"x@example.net"}, "Subject: x\r\n\r\nb\r\n", nil); err != nil {
		t.Errorf("send on the session under the old certificate: %v", err)
	}

	if err := e.srv.SetTLSConfig(nil); err != nil {
		t.Fatalf("SetTLSConfig(nil): %v", err)
	}
	rc := e.raw(t, outsideIP)
	if ehlo := rc.cmd("EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("STARTTLS still offered: %q", ehlo)
	}
	if got := rc.cmd("STARTTLS"); got != "502 5.5.1 STARTTLS not available" {
		t.Errorf("STARTTLS after TLS was removed: %q", got)
	}

	implicit := startEnv(t, nil, func(o *Options) { o.TLSListen = []string{"127.0.0.1:0"} })
	if err := implicit.srv.SetTLSConfig(nil); err == nil {
		t.Error("SetTLSConfig(nil) accepted with implicit TLS listening")
	}
}

// TestReloadSwapRace swaps users and certificates while sessions
// authenticate and handshake; run with -race. A user present in every
// set always gets in, and every handshake presents one of the two
// certificates.
func TestReloadSwapRace(t *testing.T) {
	t.Parallel()
	a, b := usersOf(t, "ann"), usersOf(t, "ann", "bob")
	ta, tb := certWithSerial(t, 1), certWithSerial(t, 2)
	e := startEnv(t, nil, func(o *Options) { o.AuthUsers = a; o.TLSConfig = ta })
	const swaps, clients, sessions = 40, 3, 8
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range swaps {
			users, conf := a, ta
			if i%2 == 0 {
				users, conf = b, tb
			}
			if err := e.srv.SetAuthUsers(users); err != nil {
				t.Error(err)
			}
			if err := e.srv.SetTLSConfig(conf); err != nil {
				t.Error(err)
			}
		}
	}()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range sessions {
				c, err := startTLSClient(t, e.addr)
				if err != nil {
					t.Errorf("starttls: %v", err)
					return
				}
				st, _ := c.TLSConnectionState()
				if s := st.PeerCertificates[0].SerialNumber.Int64(); s != 1 && s != 2 {
					t.Errorf("serial %d", s)
				}
				if err := c.Auth(sasl.NewPlainClient("", "ann", "ann-pw")); err != nil {
					t.Errorf("ann: %v", err)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
}

// TestHTTPSetTokens: a revoked token gets 401, a new one is accepted, and
// going without tokens is refused on a non-loopback listener.
func TestHTTPSetTokens(t *testing.T) {
	t.Parallel()
	oldTok, newTok := strings.Repeat("old-token", 4), strings.Repeat("new-token", 4)
	toks := func(line string) *tokens.Tokens {
		t.Helper()
		ts, err := tokens.Parse(strings.NewReader(line))
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	e := startHTTP(t, nil, func(o *HTTPOptions) { o.Tokens = toks("app:" + oldTok) })
	const msg = `{"from": "app@example.com", "recipients": ["a@dest.test"], "subject": "s", "text": "t"}`
	if code, out := e.post(t, msg, oldTok); code != http.StatusAccepted {
		t.Fatalf("old token before the swap: %d %v", code, out)
	}
	if err := e.srv.SetTokens(toks("app:" + newTok)); err != nil {
		t.Fatalf("SetTokens: %v", err)
	}
	if code, out := e.post(t, msg, oldTok); code != http.StatusUnauthorized {
		t.Errorf("old token after the swap: %d %v, want 401", code, out)
	}
	if code, out := e.post(t, msg, newTok); code != http.StatusAccepted {
		t.Errorf("new token after the swap: %d %v", code, out)
	}
	if code, out := e.post(t, msg, newTok); code != http.StatusAccepted {
		t.Errorf("new token after a refused swap: %d %v", code, out)
	}
	// Loopback: no tokens opens it.
	if err := e.srv.SetTokens(nil); err != nil {
		t.Fatalf("SetTokens(nil) on loopback: %v", err)
	}
	if code, out := e.post(t, msg, ""); code != http.StatusAccepted {
		t.Errorf("no token after tokens were removed: %d %v", code, out)
	}

	open, err := NewHTTP(HTTPOptions{Listen: []string{"0.0.0.0:0"}, Tokens: toks("t:" + oldTok), Hostname: "h", MaxMessageSize: 1}, openSpool(t, nil), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := open.SetTokens(nil); err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Errorf("SetTokens(nil) on 0.0.0.0: %v", err)
	}
}
