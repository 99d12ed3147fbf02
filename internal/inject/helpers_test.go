package inject

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/spool"
)

const (
	testMaxSize  = 64 << 10
	relayIP      = "127.0.0.1" // inside RelayNetworks
	outsideIP    = "127.0.0.9" // loopback, but outside RelayNetworks
	testUser     = "alice"
	testPassword = "secret"
)

// testEnv is one Server on loopback over a real spool in a temp dir.
type testEnv struct {
	srv  *Server
	addr string
	sp   *spool.Spool
	logs *observer.ObservedLogs
	subs chan *spool.Message
	tls  *tls.Config // client side: trusts the server's certificate
	ca   string      // the certificate as a PEM file, for Python
}

// chanHandoff is a real Handoff: it passes messages on a channel.
type chanHandoff chan *spool.Message

func (h chanHandoff) Submit(m *spool.Message) {
	select {
	case h <- m:
	default:
	}
}

func openSpool(t testing.TB, fs vfs.FS) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{FS: fs})
	if err != nil {
		t.Fatalf("spool.Open: %v", err)
	}
	t.Cleanup(func() {
		// A spool whose disk was made to fail reports that failure again
		// when closed; only a healthy one must close cleanly.
		if err := sp.Close(); err != nil && fs == nil {
			t.Errorf("spool close: %v", err)
		}
	})
	return sp
}

func testBindings(t testing.TB) *binding.Set {
	t.Helper()
	set, err := binding.New(
		[]binding.Config{{Name: "ip1", Address: "127.0.0.1"}, {Name: "ip2", Address: "127.0.0.2"}},
		[]binding.GroupConfig{{Name: "bulk", Members: []binding.Member{{Name: "ip1", Weight: 1}, {Name: "ip2", Weight: 1}}}},
		"mx.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatalf("binding.New: %v", err)
	}
	return set
}

func testUsers(t testing.TB) map[string][]byte {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{testUser: h}
}

// startEnv starts a Server with test defaults changed by mods. sp nil
// means a fresh spool.
func startEnv(t testing.TB, sp *spool.Spool, mods ...func(*Options)) *testEnv {
	t.Helper()
	if sp == nil {
		sp = openSpool(t, nil)
	}
	serverTLS, clientTLS, caFile := makeTLS(t)
	core, logs := observer.New(zap.DebugLevel)
	opts := Options{
		Listen:         []string{"127.0.0.1:0"},
		RelayNetworks:  []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Hostname:       "mx.test",
		MaxMessageSize: testMaxSize,
		MaxRecipients:  5,
		TLSConfig:      serverTLS,
		AuthUsers:      testUsers(t),
		ReadTimeout:    10 * time.Second,
		WriteTimeout:   10 * time.Second,
		DataTimeout:    10 * time.Second,
		AuthFailDelay:  time.Millisecond,
		Logger:         zap.New(core),
	}
	for _, m := range mods {
		m(&opts)
	}
	subs := make(chanHandoff, 100)
	srv, err := New(opts, sp, testBindings(t), subs)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Tests that shut down themselves make this a no-op error.
		srv.Shutdown(ctx)
	})
	return &testEnv{srv: srv, addr: srv.Addrs()[0].String(), sp: sp, logs: logs, subs: subs, tls: clientTLS, ca: caFile}
}

func dialFrom(t testing.TB, addr, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// client is a go-smtp client from the local address local, after
// STARTTLS when startTLS is set.
func (e *testEnv) client(t testing.TB, local string, startTLS ...bool) *smtp.Client {
	t.Helper()
	conn := dialFrom(t, e.addr, local)
	c := smtp.NewClient(conn)
	if len(startTLS) > 0 && startTLS[0] {
		var err error
		if c, err = smtp.NewClientStartTLS(conn, e.tls); err != nil {
			t.Fatalf("starttls: %v", err)
		}
		if _, ok := c.TLSConnectionState(); !ok {
			t.Fatal("no TLS after STARTTLS")
		}
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return c
}

// send runs one transaction and returns the queue id from the 250.
func send(c *smtp.Client, from string, to []string, body string, mo *smtp.MailOptions) (string, error) {
	if err := c.Mail(from, mo); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_, id, ok := strings.Cut(resp.StatusText, "Ok: queued as ")
	if !ok || id == "" {
		return "", fmt.Errorf("250 without queue id: %q", resp.StatusText)
	}
	return id, nil
}

// wantSMTPError checks err is the reply code/enhanced code given.
func wantSMTPError(t testing.TB, what string, err error, code int, enh string) {
	t.Helper()
	se, ok := err.(*smtp.SMTPError)
	if !ok {
		t.Fatalf("%s: error %v (%T), want %d %s", what, err, err, code, enh)
	}
	if se.Code != code || enhancedString(se.EnhancedCode) != enh {
		t.Fatalf("%s: got %d %s %q, want %d %s", what, se.Code, enhancedString(se.EnhancedCode), se.Message, code, enh)
	}
}

// stored returns the ids of every message in the spool.
func (e *testEnv) stored(t testing.TB) []string {
	t.Helper()
	var ids []string
	if _, err := e.sp.Recover(func(m *spool.Message) error {
		ids = append(ids, m.ID)
		return nil
	}); err != nil {
		t.Fatalf("spool recover: %v", err)
	}
	return ids
}

// records returns the log records of an event whose fields include all of
// match (compared as printed).
func (e *testEnv) records(event string, match map[string]any) []map[string]any {
	var out []map[string]any
	for _, le := range e.logs.All() {
		f := le.ContextMap()
		if f["event"] != event {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(f[k]) != fmt.Sprint(v) {
				ok = false
			}
		}
		if ok {
			out = append(out, f)
		}
	}
	return out
}

// rawConn speaks SMTP line by line, to see replies exactly as sent.
type rawConn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func (e *testEnv) raw(t testing.TB, local string) *rawConn {
	t.Helper()
	c := dialFrom(t, e.addr, local)
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	if g := rc.reply(); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q", g)
	}
	return rc
}

// reply reads one reply, multi-line replies joined with "\n".
func (rc *rawConn) reply() string {
	rc.t.Helper()
	var lines []string
	for range 100 {
		l, err := rc.r.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("read reply (after %q): %v", lines, err)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	return strings.Join(lines, "\n")
}

func (rc *rawConn) write(s string) {
	rc.t.Helper()
	if _, err := rc.c.Write([]byte(s)); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

func (rc *rawConn) cmd(line string) string {
	rc.t.Helper()
	rc.write(line + "\r\n")
	return rc.reply()
}

// makeTLS makes a self-signed certificate for 127.0.0.1 and localhost:
// the server config, a client config trusting it, and its PEM file.
func makeTLS(t testing.TB) (*tls.Config, *tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mx.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              []string{"localhost", "mx.test"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	server := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client, caFile
}

// wantTrace is what the Received field at the head of a stored body must
// say. ip is written plain ("::1"); the helper adds "IPv6:".
type wantTrace struct {
	id, ip, helo, proto string
	from                string // as written inside the envelope-from comment
	rcpt                string // the "for" address; "" means no "for" clause
}

// splitReceived checks that body starts with the Received field startEnv's
// server writes (hostname mx.test), saying exactly w, dated within the
// hour, and readable by net/mail as one Received field whose date follows
// the last ';'. It returns the rest of the body, as the client sent it
// less the X-Binding fields.
func splitReceived(t testing.TB, body []byte, w wantTrace) string {
	t.Helper()
	s := string(body)
	if !strings.HasPrefix(s, "Received: ") {
		t.Fatalf("stored body does not start with a Received field: %q", s)
	}
	// The field is its first line and the lines that start with WSP.
	var lines []string
	rest := s
	for len(lines) == 0 || strings.HasPrefix(rest, "\t") || strings.HasPrefix(rest, " ") {
		line, after, ok := strings.Cut(rest, "\r\n")
		if !ok || strings.ContainsAny(line, "\r\n") {
			t.Fatalf("Received field line not ended by CRLF: %q", s)
		}
		lines = append(lines, line)
		rest = after
	}
	field := s[:len(s)-len(rest)]
	ipLit := w.ip
	if strings.Contains(ipLit, ":") {
		ipLit = "IPv6:" + ipLit
	}
	forClause := ""
	if w.rcpt != "" {
		forClause = " for <" + w.rcpt + ">"
	}
	want := []string{
		"Received: from " + w.helo + " (unknown [" + ipLit + "])",
		"\tby mx.test (mtad) with " + w.proto + " id " + w.id,
		"\t(envelope-from <" + w.from + ">)" + forClause + ";",
	}
	if len(lines) != 4 {
		t.Fatalf("Received field has %d lines, want 4:\n%s", len(lines), field)
	}
	for i, l := range want {
		if lines[i] != l {
			t.Errorf("Received line %d:\n got %q\nwant %q", i+1, lines[i], l)
		}
	}
	date := strings.TrimPrefix(lines[3], "\t")
	d, err := time.Parse(time.RFC1123Z, date)
	if err != nil || lines[3][0] != '\t' {
		t.Errorf("Received date line %q: %v", lines[3], err)
	} else if age := time.Since(d); age < -time.Hour || age > time.Hour {
		t.Errorf("Received date %s is %v from now", date, age)
	}
	msg, err := mail.ReadMessage(strings.NewReader(field + "\r\n"))
	if err != nil {
		t.Fatalf("net/mail cannot read the Received field: %v\n%s", err, field)
	}
	if v := msg.Header["Received"]; len(v) != 1 {
		t.Errorf("net/mail sees %d Received fields in %q", len(v), field)
	} else if i := strings.LastIndexByte(v[0], ';'); i < 0 {
		t.Errorf("Received value %q has no ';'", v[0])
	} else if pd, err := mail.ParseDate(strings.TrimSpace(v[0][i+1:])); err != nil || !pd.Equal(d) {
		t.Errorf("Received value %q: date after the last ';' is %v, %v", v[0], pd, err)
	}
	return rest
}
