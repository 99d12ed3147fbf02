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

// TestHTTPWrongJSONTypes: every field given a JSON value of the wrong kind
// gets 400 naming it and saying, in the API's words, what it takes and
// what came: never a Go type name.
func TestHTTPWrongJSONTypes(t *testing.T) {
	t.Parallel()
	e := startHTTP(t, nil)
	const ok = `"from": "a@example.com", "recipients": ["a@dest.test"]`
	for _, c := range []struct{ body, field, msg string }{
		{`5`, "body", `body: want a JSON object, got a number`},
		{`{"from": 5, "recipients": ["a@dest.test"], "text": "x"}`, "from", `from: want an address string or {"email","name"}, got a number`},
		{`{"from": [], "recipients": ["a@dest.test"], "text": "x"}`, "from", `from: want an address string or {"email","name"}, got a list`},
		{`{"from": {"email": true}, "recipients": ["a@dest.test"], "text": "x"}`, "from.email", `from.email: want a string, got true or false`},
		{`{"from": {"email": "a@example.com", "name": {}}, "recipients": ["a@dest.test"], "text": "x"}`, "from.name", `from.name: want a string, got an object`},
		{`{"from": "a@example.com", "recipients": "a@dest.test", "text": "x"}`, "recipients", `recipients: want a list of addresses, got a string`},
		{`{"from": "a@example.com", "recipients": {"email": "a@dest.test"}, "text": "x"}`, "recipients", `recipients: want a list of addresses, got an object`},
		{`{"from": "a@example.com", "recipients": [5], "text": "x"}`, "recipients[0]", `recipients[0]: want an address string or {"email","name","substitutions"}, got a number`},
		{`{"from": "a@example.com", "recipients": ["a@dest.test", {"email": 1}], "text": "x"}`, "recipients[1].email", `recipients[1].email: want a string, got a number`},
		{`{"from": "a@example.com", "recipients": [{"email": "a@dest.test", "name": 1}], "text": "x"}`, "recipients[0].name", `recipients[0].name: want a string, got a number`},
		{`{"from": "a@example.com", "recipients": [{"email": "a@dest.test", "substitutions": []}], "text": "x"}`, "recipients[0].substitutions", `recipients[0].substitutions: want an object of variable names to strings, got a list`},
		{`{"from": "a@example.com", "recipients": [{"email": "a@dest.test", "substitutions": {"n": 1}}], "text": "x"}`, "recipients[0].substitutions", `recipients[0].substitutions: every value must be a string, got a number`},
		{`{` + ok + `, "content": 5}`, "content", `content: want a string, got a number`},
		{`{` + ok + `, "subject": 5, "text": "x"}`, "subject", `subject: want a string, got a number`},
		{`{` + ok + `, "text": ["x"]}`, "text", `text: want a string, got a list`},
		{`{` + ok + `, "html": {}}`, "html", `html: want a string, got an object`},
		{`{` + ok + `, "text": "x", "headers": ["X-A: 1"]}`, "headers", `headers: want an object of header field names to strings, got a list`},
		{`{` + ok + `, "text": "x", "headers": {"X-A": 1}}`, "headers", `headers: every value must be a string, got a number`},
		{`{` + ok + `, "text": "x", "attachments": {"name": "a"}}`, "attachments", `attachments: want a list of {"name","content_type","data"}, got an object`},
		{`{` + ok + `, "text": "x", "attachments": ["a.txt"]}`, "attachments[0]", `attachments[0]: want an object {"name","content_type","data"}, got a string`},
		{`{` + ok + `, "text": "x", "attachments": [{"name": "a", "data": ""}, {"name": 1}]}`, "attachments[1].name", `attachments[1].name: want a string, got a number`},
		{`{` + ok + `, "text": "x", "attachments": [{"name": "a", "content_type": 1}]}`, "attachments[0].content_type", `attachments[0].content_type: want a string, got a number`},
		{`{` + ok + `, "text": "x", "attachments": [{"name": "a", "data": false}]}`, "attachments[0].data", `attachments[0].data: want a string, got true or false`},
		{`{` + ok + `, "text": "x", "attachments": [{"name": "a", "size": 1}]}`, "attachments[0].size", `unknown field attachments[0].size`},
		{`{` + ok + `, "text": "x", "substitutions": "a=b"}`, "substitutions", `substitutions: want an object of variable names to strings, got a string`},
		{`{` + ok + `, "text": "x", "substitutions": {"a": true}}`, "substitutions", `substitutions: every value must be a string, got true or false`},
		{`{` + ok + `, "text": "x", "binding_group": 1}`, "binding_group", `binding_group: want a string, got a number`},
		{`{` + ok + `, "text": "x", "metadata": 1}`, "metadata", `metadata: want an object of keys to strings, got a number`},
		{`{` + ok + `, "text": "x", "metadata": {"k": 1.5}}`, "metadata", `metadata: every value must be a string, got a number`},
	} {
		code, out := e.post(t, c.body, "")
		if code != http.StatusBadRequest || out["field"] != c.field || out["error"] != c.msg {
			t.Errorf("%s:\n got %d %v\nwant 400 field %s error %s", c.body, code, out, c.field, c.msg)
		}
	}
}
