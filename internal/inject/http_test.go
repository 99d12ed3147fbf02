package inject

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mtad/mtad/internal/spool"
)

type httpEnv struct {
	url  string
	sp   *spool.Spool
	logs *observer.ObservedLogs
	srv  *HTTPServer
}

func startHTTP(t *testing.T, sp *spool.Spool, mods ...func(*HTTPOptions)) *httpEnv {
	t.Helper()
	if sp == nil {
		sp = openSpool(t, nil)
	}
	core, logs := observer.New(zap.DebugLevel)
	opts := HTTPOptions{
		Listen:         []string{"127.0.0.1:0"},
		Hostname:       "mx.test",
		MaxMessageSize: testMaxSize,
		MaxRecipients:  5,
		Logger:         zap.New(core),
	}
	for _, m := range mods {
		m(&opts)
	}
	srv, err := NewHTTP(opts, sp, testBindings(t), make(chanHandoff, 100))
	if err != nil {
		t.Fatalf("NewHTTP: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &httpEnv{url: "http://" + srv.Addrs()[0].String() + HTTPPath, sp: sp, logs: logs, srv: srv}
}

// post sends body and returns the status and decoded JSON answer.
func (e *httpEnv) post(t *testing.T, body, token string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

func (e *httpEnv) body(t *testing.T, id string) string {
	t.Helper()
	r, err := e.sp.OpenBody(id)
	if err != nil {
		t.Fatalf("stored body %s: %v", id, err)
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return string(b)
}

func ids(t *testing.T, out map[string]any) []string {
	t.Helper()
	var s []string
	for _, v := range out["ids"].([]any) {
		s = append(s, v.(string))
	}
	return s
}

// TestHTTPSubstitutionsPerRecipient: one message per recipient, each stored
// (in the real spool) with its own values, the html part escaped, a bad
// address refused alone, metadata in the received record.
func TestHTTPSubstitutionsPerRecipient(t *testing.T) {
	t.Parallel()
	e := startHTTP(t, nil)
	code, out := e.post(t, `{"from": {"email": "app@example.com", "name": "App"},
		"recipients": [{"email": "a@dest.test", "name": "Ann", "substitutions": {"who": "Ann"}},
			{"email": "b@dest.test", "substitutions": {"who": "<Bob>"}}, "bad@@x", "c@-bad-.test"],
		"subject": "Hi {{who}}", "text": "Hello {{who}}, {{greeting}}", "html": "<p>{{who}}</p>",
		"substitutions": {"greeting": "welcome"}, "metadata": {"campaign": "c1"}}`, "")
	if code != http.StatusAccepted {
		t.Fatalf("status %d: %v", code, out)
	}
	if out["accepted"].(float64) != 2 || len(out["refused"].([]any)) != 2 {
		t.Fatalf("answer %v, want 2 accepted and 2 refused", out)
	}
	got := ids(t, out)
	if len(got) != 2 {
		t.Fatalf("ids %v, want one per recipient", got)
	}
	for i, want := range []struct{ rcpt, text, html string }{
		{"a@dest.test", "Hello Ann, welcome", "<p>Ann</p>"},
		{"b@dest.test", "Hello <Bob>, welcome", "<p>&lt;Bob&gt;</p>"},
	} {
		m, err := e.sp.Get(got[i])
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Recipients) != 1 || m.Recipients[0].Addr != want.rcpt {
			t.Errorf("message %d recipients %v, want %s", i, m.Recipients, want.rcpt)
		}
		b := e.body(t, got[i])
		for _, s := range []string{want.text, want.html, "with HTTP id " + got[i], "\r\nMIME-Version: 1.0\r\n", "multipart/alternative", "Message-ID: <"} {
			if !strings.Contains(b, s) {
				t.Errorf("message %d lacks %q:\n%s", i, s, b)
			}
		}
		if strings.Contains(strings.ReplaceAll(b, "\r\n", ""), "\n") {
			t.Errorf("message %d has a bare LF", i)
		}
		if recs := e.logs.FilterField(zap.String("queue_id", got[i])).FilterMessage("received").All(); len(recs) != 1 ||
			recs[0].ContextMap()["metadata"] == nil {
			t.Errorf("message %d: received records %v, want one with metadata", i, recs)
		}
	}
}

// TestHTTPOneMessageWithoutSubstitutions: raw content for two recipients
// is one message, LF made CRLF, binding group kept.
func TestHTTPOneMessageWithoutSubstitutions(t *testing.T) {
	t.Parallel()
	e := startHTTP(t, nil)
	code, out := e.post(t, `{"from": "app@example.com", "recipients": ["a@dest.test", "b@dest.test"],
		"content": "From: app@example.com\nSubject: raw\n\nbody\n", "binding_group": "bulk"}`, "")
	if code != http.StatusAccepted || out["accepted"].(float64) != 2 {
		t.Fatalf("status %d: %v", code, out)
	}
	got := ids(t, out)
	if len(got) != 1 {
		t.Fatalf("ids %v, want one message", got)
	}
	m, _ := e.sp.Get(got[0])
	if len(m.Recipients) != 2 || m.Group != "bulk" {
		t.Errorf("stored %+v", m)
	}
	if b := e.body(t, got[0]); !strings.HasSuffix(b, "\r\nFrom: app@example.com\r\nSubject: raw\r\n\r\nbody\r\n") {
		t.Errorf("stored body %q", b)
	}
}

// TestHTTPContentHeaderSection: content that is not a message (no header
// section, a stray line in it, no From) gets 400 naming content and what is
// missing, and nothing is stored; content without Date or Message-ID gets
// both added, as a built message has them, and one with them keeps its own.
func TestHTTPContentHeaderSection(t *testing.T) {
	t.Parallel()
	e := startHTTP(t, nil)
	post := func(content string) (int, map[string]any) {
		b, _ := json.Marshal(map[string]any{"from": "app@example.com", "recipients": []string{"a@dest.test"}, "content": content})
		return e.post(t, string(b), "")
	}
	for _, c := range []struct{ content, want string }{
		{"no header here", "content has no header section"},
		{"\nbody after an empty line\n", "content has no header section"},
		{" folded: nothing\n\nbody\n", "content line 1: starts with white space"},
		{"Subject: s\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nbody\n", "content has no From field"},
		{"From: app@example.com\nthis is not a field\n\nbody\n", "content line 2: neither a header field"},
		{"From app@example.com Mon Jan  1 00:00:00 2024\nFrom: app@example.com\n\nbody\n", "content has no header section"},
	} {
		code, out := post(c.content)
		if msg, _ := out["error"].(string); code != http.StatusBadRequest || out["field"] != "content" || !strings.Contains(msg, c.want) {
			t.Errorf("%q: %d %v, want 400 naming content and %q", c.content, code, out, c.want)
		}
	}
	if n := len(e.logs.FilterMessage("received").All()); n != 0 {
		t.Errorf("%d messages received from refused content", n)
	}

	code, out := post("From: app@example.com\nSubject: s\n\nbody\n")
	if code != http.StatusAccepted {
		t.Fatalf("From only: %d %v", code, out)
	}
	id := ids(t, out)[0]
	b := e.body(t, id)
	if !strings.Contains(b, "\r\nDate: ") || !strings.Contains(b, "\r\nMessage-ID: <"+id+"@mx.test>\r\nFrom: app@example.com\r\n") {
		t.Errorf("From only: stored %q, want Date and Message-ID added", b)
	}
	if m, _ := e.sp.Get(id); m == nil || m.MessageID != "<"+id+"@mx.test>" {
		t.Errorf("stored message id %+v", m)
	}
	const own = "From: app@example.com\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <own@example.com>\r\n\r\nbody\r\n"
	code, out = post(own)
	if code != http.StatusAccepted {
		t.Fatalf("complete: %d %v", code, out)
	}
	if b := e.body(t, ids(t, out)[0]); !strings.HasSuffix(b, "\r\n"+own) || strings.Count(b, "Date:") != 1 || strings.Count(b, "Message-ID:") != 1 {
		t.Errorf("complete: stored %q, want it as sent", b)
	}
}

// TestHTTPBadFields: each bad field gets 400 naming it, header injection
// included, and nothing is stored.
func TestHTTPBadFields(t *testing.T) {
	t.Parallel()
	e := startHTTP(t, nil)
	for _, tc := range []struct{ body, field string }{
		{`{"recipients": ["a@dest.test"], "text": "x"}`, "from"},
		{`{"from": "nope", "recipients": ["a@dest.test"], "text": "x"}`, "from"},
		{`{"from": "a@example.com", "text": "x"}`, "recipients"},
		{`{"from": "a@example.com", "recipients": ["1@d.test","2@d.test","3@d.test","4@d.test","5@d.test","6@d.test"], "text": "x"}`, "recipients"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"]}`, "text"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "content": "x", "subject": "y"}`, "content"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x", "bogus": 1}`, "bogus"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": 5}`, "text"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x", "binding_group": "nope"}`, "binding_group"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "{{#if}}"}`, "text"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x", "attachments": [{"name": "f", "data": "!!"}]}`, "attachments[0].data"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x", "headers": {"From": "x@y.test"}}`, "headers.From"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "content": "a\u0000b\n"}`, "content"},
		// header injection
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "subject": "x\r\nBcc: v@x.test", "text": "x"}`, "subject"},
		{`{"from": {"email": "a@example.com", "name": "A\nBcc: v@x.test"}, "recipients": ["a@dest.test"], "text": "x"}`, "from.name"},
		{`{"from": "a@example.com", "recipients": [{"email": "a@dest.test\nBcc: v@x.test"}], "text": "x"}`, "recipients[0].email"},
		{`{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x", "headers": {"X-A": "1\r\nBcc: v@x.test"}}`, "headers.X-A"},
		{`{"from": "a@example.com", "recipients": [{"email": "a@dest.test", "substitutions": {"s": "1\nBcc: v@x.test"}}], "subject": "{{s}}", "text": "x"}`, "subject"},
	} {
		code, out := e.post(t, tc.body, "")
		if code != http.StatusBadRequest || out["field"] != tc.field {
			t.Errorf("%s: %d %v, want 400 naming %s", tc.body, code, out, tc.field)
		}
	}
	if n := len(e.logs.FilterMessage("received").All()); n != 0 {
		t.Errorf("%d messages received from bad requests", n)
	}
}

// TestHTTPStatusCodes: 413, 415, 401, 405 and 503 on a closed spool. The
// tokens file is admin.tokens_file's format, "name:token": the token after
// the name is what a client sends, and the name is the received record's
// auth_user.
func TestHTTPStatusCodes(t *testing.T) {
	t.Parallel()
	tokFile := filepath.Join(t.TempDir(), "tokens")
	s3cret := strings.Repeat("s3cret", 6)
	if err := os.WriteFile(tokFile, []byte("# ops\nsvc:"+s3cret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("svc:tokenB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokens(short); err == nil || !strings.Contains(err.Error(), "line 1: token: 6 characters, fewer than 32") || strings.Contains(err.Error(), "tokenB") {
		t.Errorf("LoadTokens(6-character token) = %v, want the line named and not the token", err)
	}
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := startHTTP(t, sp, func(o *HTTPOptions) { o.Tokens = toks })
	good := `{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "x"}`
	if code, out := e.post(t, good, ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d %v", code, out)
	}
	if code, out := e.post(t, good, "wrong"); code != http.StatusUnauthorized {
		t.Errorf("bad token: %d %v", code, out)
	}
	if code, out := e.post(t, good, "svc:"+s3cret); code != http.StatusUnauthorized {
		t.Errorf("the whole line as a token: %d %v", code, out)
	}
	code, out := e.post(t, good, s3cret)
	if code != http.StatusAccepted {
		t.Fatalf("good token: %d %v", code, out)
	}
	id := ids(t, out)[0]
	if n := e.logs.FilterMessage("received").FilterField(zap.String("queue_id", id)).FilterField(zap.String("auth_user", "svc")).Len(); n != 1 {
		t.Errorf("%d received records of %s with auth_user svc, want 1: %v", n, id, e.logs.FilterMessage("received").All())
	}
	if m, err := sp.Get(id); err != nil || m.AuthUser != "svc" {
		t.Errorf("stored AuthUser: %+v %v", m, err)
	}
	big := `{"from": "a@example.com", "recipients": ["a@dest.test"], "text": "` + strings.Repeat("x", testMaxSize) + `"}`
	if code, out := e.post(t, big, s3cret); code != http.StatusRequestEntityTooLarge {
		t.Errorf("too big: %d %v", code, out)
	}
	req, _ := http.NewRequest(http.MethodPost, e.url, strings.NewReader(good))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+s3cret)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, err := http.Get(e.url); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	if code, out := e.post(t, good, s3cret); code != http.StatusServiceUnavailable {
		t.Errorf("closed spool: %d %v", code, out)
	}
}

// TestHTTPRefusesOpenListenWithoutTokens: no tokens, no non-loopback.
func TestHTTPRefusesOpenListenWithoutTokens(t *testing.T) {
	t.Parallel()
	_, err := NewHTTP(HTTPOptions{Listen: []string{"0.0.0.0:0"}, Hostname: "h", MaxMessageSize: 1}, openSpool(t, nil), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no tokens") {
		t.Errorf("NewHTTP on 0.0.0.0 without tokens: %v", err)
	}
}

// TestHTTPAddressLiterals: an address literal is refused alone, with RCPT
// TO's reply, unless allow_address_literals says otherwise, so both APIs
// take the same recipients.
func TestHTTPAddressLiterals(t *testing.T) {
	body := `{"from":"a@example.com","recipients":["x@[192.0.2.1]","y@example.net"],"subject":"s","text":"t"}`
	for _, allow := range []bool{false, true} {
		e := startHTTP(t, nil, func(o *HTTPOptions) { o.AllowAddressLiterals = allow })
		code, out := e.post(t, body, "")
		if code != http.StatusAccepted {
			t.Fatalf("allow=%v: status %d %v", allow, code, out)
		}
		refused, _ := out["refused"].([]any)
		if allow {
			if out["accepted"].(float64) != 2 || len(refused) != 0 {
				t.Fatalf("allowed: answer %v, want both accepted", out)
			}
			continue
		}
		if out["accepted"].(float64) != 1 || len(refused) != 1 {
			t.Fatalf("answer %v, want 1 accepted and the literal refused", out)
		}
		r := refused[0].(map[string]any)
		if r["recipient"] != "x@[192.0.2.1]" || !strings.HasPrefix(r["reason"].(string), "553 5.1.3 ") {
			t.Fatalf("refusal %v, want the literal with 553 5.1.3", r)
		}
	}
}
