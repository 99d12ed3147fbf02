package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// dkimKey is a private key written to a 0600 PEM file, with the TXT
// record that publishes it.
type dkimKey struct {
	file, txt string
}

func newDKIMKey(t *testing.T, dir, name string, k crypto.Signer) dkimKey {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	var txt string
	switch pub := k.Public().(type) {
	case *rsa.PublicKey:
		spki, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		txt = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(spki)
	case ed25519.PublicKey:
		txt = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	}
	return dkimKey{file: file, txt: txt}
}

// publish adds the key's TXT record at name, in strings of at most 255
// octets as DNS requires.
func (k dkimKey) publish(t *testing.T, z *loopbacktest.DNS, name string) {
	t.Helper()
	var parts []string
	for rec := k.txt; rec != ""; {
		n := min(len(rec), 255)
		parts = append(parts, `"`+rec[:n]+`"`)
		rec = rec[n:]
	}
	z.Add(t, name+". 300 IN TXT "+strings.Join(parts, " "))
}

// dnsTXT asks the test DNS server, over UDP then TCP if truncated: the
// verifier's lookups go through real DNS on loopback, like a receiver's.
func dnsTXT(server string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, server)
		if err == nil && r.Truncated {
			c.Net = "tcp"
			r, _, err = c.Exchange(m, server)
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no TXT for %s (rcode %s)", name, dns.RcodeToString[r.Rcode])
		}
		return out, nil
	}
}

// writeDKIMConfig appends a dkim: section to e's config.
func writeDKIMConfig(t *testing.T, e *env, section string) {
	t.Helper()
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(section); err != nil {
		t.Fatal(err)
	}
}

// TestDKIMEndToEnd (issue 10, "How it is shown"): the daemon signs at
// injection with the configured keys (checked against DNS at start-up),
// and the sink's copies verify with go-msgauth against the keys served by
// the test DNS server: RSA-2048, Ed25519, and both on one message. A
// message from a domain without a key arrives unsigned and its received
// record says so. A SIGHUP with a broken key file keeps the old keys.
func TestDKIMEndToEnd(t *testing.T) {
	t.Parallel()
	const sinkIP = "127.0.11.1"
	z, sinks, port := remote(t, []string{sinkIP}, nil)
	addMX(t, z, "dest.e2e", sinkIP)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk := newDKIMKey(t, e.dir, "rsa", rsaKey)
	ek := newDKIMKey(t, e.dir, "ed", edPriv)
	rk.publish(t, z, "s2026._domainkey.rsa.e2e")
	ek.publish(t, z, "ed2026._domainkey.ed.e2e")
	rk.publish(t, z, "s2026._domainkey.both.e2e")
	ek.publish(t, z, "ed2026._domainkey.both.e2e")
	writeDKIMConfig(t, e, fmt.Sprintf(`dkim:
  - {domain: rsa.e2e, selector: s2026, key_file: %[1]s, dns_check: true}
  - {domain: ed.e2e, selector: ed2026, key_file: %[2]s, dns_check: true}
  - {domain: both.e2e, selector: s2026, key_file: %[1]s, dns_check: true}
  - {domain: both.e2e, selector: ed2026, key_file: %[2]s, dns_check: true}
`, rk.file, ek.file))
	d := start(t, e)

	cases := []struct {
		from string
		want []string // the signatures, as the received record names them
	}{
		{"app@rsa.e2e", []string{"d=rsa.e2e s=s2026 a=rsa-sha256"}},
		{"app@ed.e2e", []string{"d=ed.e2e s=ed2026 a=ed25519-sha256"}},
		{"app@both.e2e", []string{"d=both.e2e s=s2026 a=rsa-sha256", "d=both.e2e s=ed2026 a=ed25519-sha256"}},
		{"app@nokey.e2e", nil},
	}
	for i, c := range cases {
		sendRaw(t, d.smtpAddr, c.from, "user@dest.e2e", fmt.Sprintf(
			"From: App <%s>\r\nTo: user@dest.e2e\r\nSubject: dkim %d\r\nMessage-ID: <dkim-%d@e2e>\r\nDate: %s\r\n\r\nHello  from %s.\r\n",
			c.from, i, i, time.Now().Format(time.RFC1123Z), c.from))
	}
	got := sinks[0].WaitMessages(t, len(cases))
	byFrom := map[string][]byte{}
	for _, m := range got {
		byFrom[m.From] = m.Data
	}
	lookup := dnsTXT(z.Addr)
	for _, c := range cases {
		data, ok := byFrom[c.from]
		if !ok {
			t.Fatalf("no message from %s at the sink", c.from)
		}
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(data), &msgauth.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(vs) != len(c.want) {
			t.Fatalf("%s: %d signatures (%v), want %d:\n%s", c.from, len(vs), err, len(c.want), data)
		}
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("%s: signature d=%s does not verify at the sink: %v", c.from, v.Domain, v.Err)
			}
		}
		if len(c.want) > 0 {
			msg, err := mail.ReadMessage(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			domain := c.from[strings.IndexByte(c.from, '@')+1:]
			if sig := msg.Header.Get("DKIM-Signature"); !strings.Contains(sig, "d="+domain+";") {
				t.Errorf("%s: DKIM-Signature %q lacks d=%s", c.from, sig, domain)
			}
		}
		r := d.waitLog("received from "+c.from, 10*time.Second, func(r record) bool {
			return r.str("event") == "received" && r.str("sender") == c.from
		})
		var logged []string
		switch v := r["dkim"].(type) {
		case []any:
			for _, s := range v {
				logged = append(logged, fmt.Sprint(s))
			}
		case string:
			logged = []string{v}
		}
		want := c.want
		if want == nil {
			want = []string{"unsigned: no key for nokey.e2e"}
		}
		if strings.Join(logged, "|") != strings.Join(want, "|") {
			t.Errorf("%s: received record dkim %v, want %v", c.from, r["dkim"], want)
		}
	}

	// A key file gone bad: the reload is refused naming it, and the old
	// key still signs.
	if err := os.WriteFile(rk.file, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r := d.waitLog("reload refused", 10*time.Second, func(r record) bool { return strings.HasPrefix(r.str("msg"), "reload refused") })
	if want := `dkim[0].key_file "` + rk.file + `": no PEM block`; !strings.Contains(r.str("error"), want) {
		t.Errorf("reload refusal %q does not say %q", r.str("error"), want)
	}
	sendRaw(t, d.smtpAddr, "app@rsa.e2e", "user@dest.e2e", "From: app@rsa.e2e\r\nSubject: after reload\r\n\r\nstill signed\r\n")
	got = sinks[0].WaitMessages(t, len(cases)+1)
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(got[len(cases)].Data), &msgauth.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Errorf("after a refused reload: %v %+v", err, vs)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code %d: %s", code, d.output())
	}
}

// TestDKIMBadKeyStopsStart: a key file with the wrong mode, the wrong
// content, or a public half DNS does not publish stops the start, and the
// error names the file (and the record).
func TestDKIMBadKeyStopsStart(t *testing.T) {
	t.Parallel()
	z := loopbacktest.StartDNS(t)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := newDKIMKey(t, dir, "good", edPriv)
	newDKIMKey(t, dir, "other", otherPriv).publish(t, z, "ed._domainkey.example.e2e")
	open := newDKIMKey(t, dir, "open", edPriv)
	if err := os.Chmod(open.file, 0o644); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, entry, want string
	}{
		{"mode 0644", "{domain: example.e2e, selector: ed, key_file: " + open.file + "}",
			`dkim[0].key_file "` + open.file + `": mode 0644 lets group or others read a private key`},
		{"certificate", "{domain: example.e2e, selector: ed, key_file: " + junk + "}",
			`dkim[0].key_file "` + junk + `": PEM block "CERTIFICATE"`},
		{"dns mismatch", "{domain: example.e2e, selector: ed, key_file: " + good.file + ", dns_check: true}",
			`dkim[0].key_file "` + good.file + `": dns_check of ed._domainkey.example.e2e TXT: p= publishes another key`},
	} {
		e := newEnv(t, cfgOpts{dns: z.Addr, port: 25})
		writeDKIMConfig(t, e, "dkim:\n  - "+tc.entry+"\n")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, mtadBin, "--config", e.cfgPath, "--allow-root").CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("%s: mtad ended with %v, want exit code 1; output:\n%s", tc.name, err, out)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: output %q does not say %q", tc.name, out, tc.want)
		}
	}
}
