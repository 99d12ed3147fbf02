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
