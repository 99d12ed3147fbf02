package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/spool"
)

// handoff records the messages the injection servers stored.
type handoff struct {
	mu  sync.Mutex
	ids []string
}

func (h *handoff) Submit(m *spool.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ids = append(h.ids, m.ID)
}

func (h *handoff) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...)
}

// injectEnv is a real spool with the real SMTP and HTTP injection
// servers on it, over loopback.
type injectEnv struct {
	sp             *spool.Spool
	smtp, httpAddr string
	h              *handoff
}

func startInject(t *testing.T, mods ...func(*inject.Options)) *injectEnv {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	bs, err := binding.New([]binding.Config{{Name: "ip1", Address: "127.0.0.1"}}, nil, "mx.test",
		func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h := &handoff{}
	opts := inject.Options{Listen: []string{"127.0.0.1:0"}, Hostname: "mx.test", MaxMessageSize: 1 << 20,
		RelayNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	for _, m := range mods {
		m(&opts)
	}
	srv, err := inject.New(opts, sp, bs, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	hs, err := inject.NewHTTP(inject.HTTPOptions{Listen: []string{"127.0.0.1:0"}, Hostname: "mx.test", MaxMessageSize: 1 << 20}, sp, bs, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.Start(); err != nil {
		t.Fatal(err)
	}
	// Shut down before the spool closes (cleanups run last first).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		hs.Shutdown(ctx)
	})
	return &injectEnv{sp: sp, smtp: srv.Addrs()[0].String(), httpAddr: hs.Addrs()[0].String(), h: h}
}

// body reads a stored message's body back from the spool.
func (e *injectEnv) body(t *testing.T, id string) string {
	t.Helper()
	r, err := e.sp.OpenBody(id)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInjectOne: one generated message over SMTP; the printed queue id is
// the one the spool holds, with the envelope given.
func TestInjectOne(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	code, out, errOut := mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "ann@a.test", "--from", "me@src.test", "--subject", "hello there")
	m := regexp.MustCompile(`^queued as (\S+)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.Contains(errOut, "accepted 1, refused 0") {
		t.Fatalf("inject: exit %d %q %q", code, out, errOut)
	}
	msg, err := e.sp.Get(m[1])
	if err != nil {
		t.Fatalf("the printed id %q is not in the spool: %v", m[1], err)
	}
	if msg.Sender != "me@src.test" || len(msg.Recipients) != 1 || msg.Recipients[0].Addr != "ann@a.test" {
		t.Errorf("stored envelope %q %+v", msg.Sender, msg.Recipients)
	}
	if b := e.body(t, m[1]); !strings.Contains(b, "Subject: hello there\r\n") {
		t.Errorf("stored body has not the subject:\n%s", b)
	}
	// A refused recipient: exit 1 with the reply's codes.
	code, out, errOut = mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "x@[192.0.2.1]")
	if code != 1 || out != "" || !regexp.MustCompile(`refused: message: <x@\[192.0.2.1\]>: 5\d\d 5\.\d\.\d+ `).MatchString(errOut) ||
		!strings.Contains(errOut, "accepted 0, refused 1") {
		t.Errorf("refused recipient: exit %d %q %q", code, out, errOut)
	}
	// Nothing listening: every recipient refused with the reason.
	code, _, errOut = mtactl(t, "127.0.0.1:1", "inject", "--smtp", "127.0.0.1:1", "--to", "a@a.test")
	if code != 1 || !strings.Contains(errOut, "connection refused") || !strings.Contains(errOut, "accepted 0, refused 1") {
		t.Errorf("no listener: exit %d %q", code, errOut)
	}
	for _, args := range [][]string{
		{"inject"},
		{"inject", "--to", "a@a.test", "--jsonl", "f"},
		{"inject", "--to", "a@a.test", "--user", "u"},
		{"inject", "--dir", "d", "--concurrency", "0"},
	} {
		if code, _, errOut := mtactl(t, "127.0.0.1:1", args...); code != 2 || !strings.Contains(errOut, "usage: mtactl inject") {
			t.Errorf("%q: exit %d %q, want 2 with the usage", args, code, errOut)
		}
	}
}

// TestInjectDir: three .eml over two connections, envelopes from their
// headers; the one refused recipient is counted and named, exit 1, and
// Bcc is not sent on.
func TestInjectDir(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	dir := t.TempDir()
	for name, text := range map[string]string{
		"a.eml":    "From: A <a@src.test>\nTo: ann@a.test\nSubject: a\n\nbody a\n",
		"b.eml":    "From: b@src.test\nTo: bob@b.test\nCc: Lit <x@[192.0.2.1]>\nSubject: b\n\nbody b\n",
		"c.eml":    "From: c@src.test\nTo: cy@c.test\nBcc: hidden@d.test,\n  other@d.test\nSubject: c\n\nbody c\n",
		"skip.txt": "not a message",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--dir", dir, "--concurrency", "2")
	if code != 1 || out != "" || !strings.Contains(errOut, "accepted 5, refused 1\n") ||
		!regexp.MustCompile(`refused: b.eml: <x@\[192.0.2.1\]>: 5\d\d 5\.\d\.\d+ `).MatchString(errOut) {
		t.Fatalf("inject --dir: exit %d %q %q", code, out, errOut)
	}
	ids := e.h.all()
	if len(ids) != 3 {
		t.Fatalf("%d messages stored, want 3", len(ids))
	}
	rcpts := map[string]string{}
	for _, id := range ids {
		m, err := e.sp.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		var rs []string
		for _, r := range m.Recipients {
			rs = append(rs, r.Addr)
		}
		rcpts[m.Sender] = strings.Join(rs, " ")
		if b := e.body(t, id); m.Sender == "c@src.test" && (strings.Contains(b, "Bcc") || strings.Contains(b, "other@d.test") || !strings.Contains(b, "body c")) {
			t.Errorf("c.eml stored with its Bcc or without its body:\n%s", b)
		}
	}
	want := map[string]string{"a@src.test": "ann@a.test", "b@src.test": "bob@b.test", "c@src.test": "cy@c.test hidden@d.test other@d.test"}
	for k, v := range want {
		if rcpts[k] != v {
			t.Errorf("sender %s: recipients %q, want %q", k, rcpts[k], v)
		}
	}
}

// TestInjectJSONL: each line is one HTTP injection request to the real
// server; the counts are recipients, a refused request's reason is the
// API's error.
func TestInjectJSONL(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	file := filepath.Join(t.TempDir(), "req.jsonl")
	lines := `{"from":{"email":"app@src.test"},"recipients":["ann@a.test","bob@b.test"],"subject":"s1","text":"t1"}

{"from":{"email":"app@src.test"},"recipients":["cy@c.test","bad@@c.test"],"subject":"s2","text":"t2"}
{"from":{"email":"app@src.test"},"recipients":["dee@d.test"],"subject":"bad\nfield","text":"t3"}
`
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := mtactl(t, "127.0.0.1:1", "inject", "--jsonl", file, "--http", e.httpAddr)
	if code != 1 || out != "" || !strings.Contains(errOut, "accepted 3, refused 2\n") ||
		!strings.Contains(errOut, "refused: line 3: <bad@@c.test>: 5") ||
		!regexp.MustCompile(`refused: line 4: 400 Bad Request: \w+`).MatchString(errOut) {
		t.Fatalf("inject --jsonl: exit %d %q %q", code, out, errOut)
	}
	if n := len(e.h.all()); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
}

// FuzzDropBcc: whatever a .eml holds, dropBcc does not panic, leaves no
// Bcc field in the header block, and changes nothing from the blank line
// on (the body is sent as it is).
func FuzzDropBcc(f *testing.F) {
	for _, s := range []string{
		"From: a@x.test\nBcc: b@y.test\n\nbody\n",
		"Bcc: a@x.test,\r\n b@y.test\r\nTo: c@z.test\r\n\r\nBcc: in the body\r\n",
		"bcc:x\n\tfolded\n",
		"\nBcc: body only\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		out := dropBcc(msg)
		head, body := splitHead(msg)
		ohead, obody := splitHead(out)
		if !bytes.Equal(body, obody) {
			t.Fatalf("body changed: %q → %q", body, obody)
		}
		for _, l := range strings.Split(string(ohead), "\n") {
			if len(l) >= 4 && strings.EqualFold(l[:4], "bcc:") {
				t.Fatalf("Bcc left in %q (from %q)", ohead, head)
			}
		}
		if len(out) > len(msg) {
			t.Fatalf("grew: %q → %q", msg, out)
		}
	})
}

// splitHead splits a message at its first empty line (kept with the body).
func splitHead(msg []byte) (head, body []byte) {
	off := 0
	for _, line := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return msg[:off], msg[off:]
		}
		off += len(line)
	}
	return msg, nil
}

// selfSigned is a TLS certificate for 127.0.0.1 that no one trusts.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestInjectTLSAuth: STARTTLS when offered and AUTH with --user and
// --password-file, on a listener that relays for no network: without
// AUTH the recipient is refused with the reply, with it the message goes
// in over TLS and AUTH (ESMTPSA in its Received field); an untrusted
// certificate stops mtactl unless --tls-skip-verify.
func TestInjectTLSAuth(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	e := startInject(t, func(o *inject.Options) {
		o.RelayNetworks = nil
		o.TLSConfig = selfSigned(t)
		o.AuthUsers = map[string][]byte{"alice": hash}
	})
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "a@a.test", "--tls-skip-verify")
	if code != 1 || !strings.Contains(errOut, "refused: message: <a@a.test>: 550 5.7.1 Relaying denied") {
		t.Errorf("without AUTH: exit %d %q", code, errOut)
	}
	code, _, errOut = mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "a@a.test", "--user", "alice", "--password-file", pw)
	if code != 1 || !strings.Contains(errOut, "STARTTLS") || !strings.Contains(errOut, "certificate") {
		t.Errorf("untrusted certificate: exit %d %q", code, errOut)
	}
	code, out, errOut := mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "a@a.test", "--user", "alice", "--password-file", pw, "--tls-skip-verify")
	m := regexp.MustCompile(`^queued as (\S+)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("with AUTH: exit %d %q %q", code, out, errOut)
	}
	if b := e.body(t, m[1]); !strings.Contains(b, "with ESMTPSA") {
		t.Errorf("not sent over TLS with AUTH:\n%s", b)
	}
}
