package inject

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/dkim"
)

// TestDKIMSignsStoredMessage: a message from a domain with a key is
// stored signed (after a long line was made conformant: the signature
// covers the rewritten body), one from another domain is stored as sent,
// and each received record says which.
func TestDKIMSignsStoredMessage(t *testing.T) {
	t.Parallel()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ed.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := dkim.Load([]config.DKIMKey{{Domain: "example.com", Selector: "ed", KeyFile: file}})
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, nil, func(o *Options) { o.DKIM = dkim.NewSigner(keys) })
	c := e.client(t, relayIP)
	long := strings.Repeat("long line ", 150)
	signedID, err := send(c, "app@example.com", []string{"u@dest.test"},
		"From: App <app@example.com>\r\nSubject: signed\r\n\r\n"+long+"\r\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	plainID, err := send(c, "app@example.org", []string{"u@dest.test"}, "From: app@example.org\r\nSubject: plain\r\n\r\nhi\r\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Declared 8-bit: made 7-bit before it is signed, so that no
	// receiver without 8BITMIME makes delivery rewrite (and break) it.
	eightID, err := send(c, "app@example.com", []string{"u@dest.test"},
		"From: app@example.com\r\nSubject: eight\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"+
			"Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n", &smtp.MailOptions{Body: smtp.Body8BitMIME})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := e.sp.Get(eightID); err != nil || m.EightBit {
		t.Errorf("8-bit message stored with EightBit %v (%v), want a 7-bit body", m != nil && m.EightBit, err)
	}
	if r, err := e.sp.OpenBody(eightID); err == nil {
		b, _ := io.ReadAll(r)
		_ = r.Close()
		if i := bytes.IndexFunc(b, func(r rune) bool { return r >= 0x80 }); i >= 0 {
			t.Errorf("signed 8-bit message stored with 8-bit octets at %d:\n%s", i, b)
		}
	}

	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	lookup := func(name string) ([]string, error) {
		if name == "ed._domainkey.example.com" {
			return []string{txt}, nil
		}
		return nil, fmt.Errorf("no record %s", name)
	}
	for _, tc := range []struct {
		id     string
		sigs   int
		record any
	}{
		{signedID, 1, []any{"d=example.com s=ed a=ed25519-sha256"}},
		{plainID, 0, "unsigned: no key for example.org"},
		{eightID, 1, []any{"d=example.com s=ed a=ed25519-sha256"}},
	} {
		r, err := e.sp.OpenBody(tc.id)
		if err != nil {
			t.Fatal(err)
		}
		vs, err := msgauth.VerifyWithOptions(r, &msgauth.VerifyOptions{LookupTXT: lookup})
		_ = r.Close()
		if err != nil || len(vs) != tc.sigs {
			t.Fatalf("%s: %d verifications (%v), want %d", tc.id, len(vs), err, tc.sigs)
		}
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("%s: stored signature does not verify: %v", tc.id, v.Err)
			}
		}
		if recs := e.records("received", map[string]any{"queue_id": tc.id, "dkim": tc.record}); len(recs) != 1 {
			t.Errorf("%s: no received record with dkim %v: %v", tc.id, tc.record, e.records("received", map[string]any{"queue_id": tc.id}))
		}
	}
}
