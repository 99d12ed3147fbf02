package inject

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/dkim"
)

// TestHTTPDKIMSigned: with a key for the sender's domain the stored
// message carries a signature that verifies, as over SMTP.
func TestHTTPDKIMSigned(t *testing.T) {
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
	e := startHTTP(t, nil, func(o *HTTPOptions) { o.DKIM = dkim.NewSigner(keys) })
	code, out := e.post(t, `{"from": "app@example.com", "recipients": ["a@dest.test"], "subject": "Grüße", "text": "Grüße aus Köln",
		"attachments": [{"name": "a.bin", "content_type": "application/octet-stream", "data": "AAECAw=="}]}`, "")
	if code != http.StatusAccepted {
		t.Fatalf("status %d: %v", code, out)
	}
	id := ids(t, out)[0]
	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	lookup := func(name string) ([]string, error) {
		if name == "ed._domainkey.example.com" {
			return []string{txt}, nil
		}
		return nil, fmt.Errorf("no record %s", name)
	}
	vs, err := msgauth.VerifyWithOptions(strings.NewReader(e.body(t, id)), &msgauth.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verifications %v (%v), want one good signature", vs, err)
	}
}

// FuzzParseTemplate: any template either parses or is refused; a parsed
// one renders without its variables' braces leaking out of them.
func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{"Hi {{name}}", "{{{raw}}}", "{{", "{{a b}}", "x}}y", "{{ a.b-c_d }}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tm, err := parseTemplate(src)
		if err != nil {
			return
		}
		out := tm.render(func(string) string { return "" }, true)
		if len(out) > len(src) {
			t.Errorf("%q rendered longer with empty values: %q", src, out)
		}
	})
}

// FuzzCheckContentHeader: any content is either refused naming content or
// accepted with a From field in its header section, and an accepted one
// without a Message-ID, as build makes it, has the one added, found by
// parseHeaders.
func FuzzCheckContentHeader(f *testing.F) {
	f.Add("From: a@example.com\nSubject: s\n\nbody\n")
	f.Add("no header here")
	f.Add("Subject: x\r\n folded\r\nFROM : a@b\r\n")
	f.Fuzz(func(t *testing.T, content string) {
		cf, e := checkContentHeader(content)
		if e != nil {
			if e.field != "content" || e.status != http.StatusBadRequest || e.msg == "" {
				t.Fatalf("refusal %+v", e)
			}
			return
		}
		head, _, _ := strings.Cut(strings.ReplaceAll(content, "\r\n", "\n"), "\n\n")
		if !strings.HasPrefix(strings.ToLower(head), "from") && !strings.Contains(strings.ToLower(head), "\nfrom") {
			t.Fatalf("accepted %q without a From field", content)
		}
		d := &draft{raw: true, addDate: !cf.date, addMessageID: !cf.messageID}
		msg := d.build(&rendered{content: content}, "ID", "h.test", time.Unix(0, 0))
		if h, err := parseHeaders(msg); !cf.messageID && err == nil && h.messageID != "<ID@h.test>" {
			t.Fatalf("built %q has no Message-ID", msg)
		}
	})
}
