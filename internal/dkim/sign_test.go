package dkim

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

const testMsg = "Received: from client.example ([127.0.0.1]) by mtad.test with ESMTP id 01J; Mon, 1 Jan 2026 00:00:00 +0000\r\n" +
	"From: \"App\" <app@example.com>\r\n" +
	"To: user@dest.example\r\n" +
	"Subject: hello\r\n" +
	"Date: Mon, 1 Jan 2026 00:00:00 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"List-Unsubscribe: <https://example.com/u>\r\n" +
	"\r\n" +
	"Hello,  world.  \r\n" +
	"\r\n"

// signAndVerify signs msg with keys and verifies the result with
// go-msgauth against the keys' TXT records; it returns the result and the
// verifications.
func signAndVerify(t *testing.T, keys *Keys, msg string) (Result, []*dkim.Verification, []byte) {
	t.Helper()
	res, err := NewSigner(keys).Sign(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	signed := append(append([]byte(nil), res.Header...), msg...)
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: lookup(keys)})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res, vs, signed
}

// TestSignVerifies signs with RSA-2048, with Ed25519 and with both, and
// go-msgauth verifies every signature.
func TestSignVerifies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys func(t *testing.T) *Keys
		want []string
	}{
		{"rsa", func(t *testing.T) *Keys { return mustLoad(t, rsaEntry(t, "example.com", "s2026")) },
			[]string{"d=example.com s=s2026 a=rsa-sha256"}},
		{"ed25519", func(t *testing.T) *Keys { return mustLoad(t, edEntry(t, "example.com", "ed2026")) },
			[]string{"d=example.com s=ed2026 a=ed25519-sha256"}},
		{"both", func(t *testing.T) *Keys {
			return mustLoad(t, rsaEntry(t, "example.com", "s2026"), edEntry(t, "example.com", "ed2026"))
		}, []string{"d=example.com s=s2026 a=rsa-sha256", "d=example.com s=ed2026 a=ed25519-sha256"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, vs, signed := signAndVerify(t, tc.keys(t), testMsg)
			if strings.Join(res.Signatures, "|") != strings.Join(tc.want, "|") || res.Unsigned != "" {
				t.Errorf("signatures %q unsigned %q, want %q", res.Signatures, res.Unsigned, tc.want)
			}
			if len(vs) != len(tc.want) {
				t.Fatalf("%d verifications, want %d:\n%s", len(vs), len(tc.want), signed)
			}
			for _, v := range vs {
				if v.Err != nil {
					t.Errorf("signature d=%s does not verify: %v\n%s", v.Domain, v.Err, signed)
				}
				if v.Domain != "example.com" {
					t.Errorf("d=%s", v.Domain)
				}
				// The default list, less the absent fields, From twice.
				want := "From:From:To:Subject:Date:Message-ID:List-Unsubscribe"
				if got := strings.Join(v.HeaderKeys, ":"); got != want {
					t.Errorf("h=%s, want %s", got, want)
				}
			}
			if !bytes.HasPrefix(signed, []byte("DKIM-Signature: ")) || !bytes.Contains(signed, []byte("c=relaxed/relaxed")) {
				t.Errorf("signed message does not start with the signature in relaxed/relaxed:\n%s", signed)
			}
		})
	}
}

// TestSignatureBreaks: a changed body, a changed Subject and an added
// From all fail verification (the last through From's oversigning).
func TestSignatureBreaks(t *testing.T) {
	t.Parallel()
	keys := mustLoad(t, rsaEntry(t, "example.com", "s1"), edEntry(t, "example.com", "e1"))
	res, err := NewSigner(keys).Sign(strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(string) string{
		"body":       func(m string) string { return strings.Replace(m, "Hello", "Jello", 1) },
		"subject":    func(m string) string { return strings.Replace(m, "Subject: hello", "Subject: win", 1) },
		"added From": func(m string) string { return strings.Replace(m, "To:", "From: evil@example.net\r\nTo:", 1) },
	} {
		signed := string(res.Header) + change(testMsg)
		vs, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{LookupTXT: lookup(keys)})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Err == nil {
				t.Errorf("%s: signature s=%v still verifies", name, v.HeaderKeys)
			}
		}
	}
}

// TestSignOptions: configured headers, simple canonicalization, expiry.
func TestSignOptions(t *testing.T) {
	t.Parallel()
	e := rsaEntry(t, "example.com", "s1")
	e.Headers = []string{"From", "Subject", "X-Absent"}
	e.Canonicalization = "simple/simple"
	e.Expiry = 48 * time.Hour
	keys := mustLoad(t, e)
	s := NewSigner(keys)
	now := time.Unix(1_900_000_000, 0)
	s.now = func() time.Time { return now }
	res, err := s.Sign(strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(strings.NewReader(string(res.Header)+testMsg), &dkim.VerifyOptions{LookupTXT: lookup(keys)})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verify: %v %+v", err, vs)
	}
	if got := strings.Join(vs[0].HeaderKeys, ":"); got != "From:Subject:X-Absent" {
		t.Errorf("h=%s: a configured list is signed as written", got)
	}
	if want := now.Add(48 * time.Hour).Unix(); vs[0].Expiration.Unix() != want {
		t.Errorf("x=%d, want %d", vs[0].Expiration.Unix(), want)
	}
	if !strings.Contains(string(res.Header), "c=simple/simple") {
		t.Errorf("no c=simple/simple in %s", res.Header)
	}
}

// TestUnsigned: messages that cannot be signed say why, and Sign adds
// nothing to them.
func TestUnsigned(t *testing.T) {
	t.Parallel()
	keys := mustLoad(t, rsaEntry(t, "example.com", "s1"), rsaEntry(t, "*.example.com", "w1"))
	swap := func(from string) string {
		return strings.Replace(testMsg, "From: \"App\" <app@example.com>\r\n", from, 1)
	}
	tests := []struct{ name, msg, want string }{
		{"other domain", swap("From: a@example.org\r\n"), "no key for example.org"},
		{"wildcard is not the parent", swap("From: a@EXAMPLE.com.evil\r\n"), "no key for example.com.evil"},
		{"no From", swap(""), "no From field"},
		{"two From", swap("From: a@example.com\r\nFrom: b@example.com\r\n"), "2 From fields"},
		{"bad From", swap("From: <<<\r\n"), `From does not parse: "<<<"`},
		{"no header end", "From: a@example.com\r\nSubject: x\r\n", "no empty line ends the header section"},
	}
	for _, tc := range tests {
		res, err := NewSigner(keys).Sign(strings.NewReader(tc.msg))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if res.Unsigned != tc.want || res.Header != nil || res.Signatures != nil {
			t.Errorf("%s: %+v, want unsigned %q", tc.name, res, tc.want)
		}
	}
	// The first address of a From with several is the author domain;
	// a folded From and a subdomain under the wildcard sign.
	for _, from := range []string{"From: a@news.example.com, b@example.org\r\n", "From: \"Folded\"\r\n <a@example.com>\r\n"} {
		res, _, _ := signAndVerify(t, keys, swap(from))
		if len(res.Signatures) != 1 {
			t.Errorf("%q: %+v", from, res)
		}
	}
	// No keys at all: nothing read, nothing said.
	if res, err := NewSigner(nil).Sign(strings.NewReader(testMsg)); err != nil || res.Unsigned != "" || res.Header != nil {
		t.Errorf("no keys: %+v %v", res, err)
	}
}

// TestSetKeys: a reload's key set signs the next message.
func TestSetKeys(t *testing.T) {
	t.Parallel()
	s := NewSigner(mustLoad(t, rsaEntry(t, "example.com", "old")))
	s.SetKeys(mustLoad(t, edEntry(t, "example.com", "new")))
	res, err := s.Sign(strings.NewReader(testMsg))
	if err != nil || len(res.Signatures) != 1 || res.Signatures[0] != "d=example.com s=new a=ed25519-sha256" {
		t.Errorf("after SetKeys: %+v %v", res, err)
	}
}

// errReader fails after some bytes: a spool read error mid-body.
type errReader struct {
	r io.Reader
	n int
}

func (e *errReader) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	p = p[:min(len(p), e.n)]
	n, err := e.r.Read(p)
	e.n -= n
	return n, err
}

// TestSignReadError: a read error mid-body is an error, and every
// signer's goroutine ends (goleak in TestMain).
func TestSignReadError(t *testing.T) {
	t.Parallel()
	keys := mustLoad(t, rsaEntry(t, "example.com", "s1"), edEntry(t, "example.com", "e1"))
	msg := testMsg + strings.Repeat("x", 100000)
	_, err := NewSigner(keys).Sign(&errReader{r: strings.NewReader(msg), n: len(testMsg) + 50000})
	if err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("Sign over a failing reader: %v", err)
	}
}
