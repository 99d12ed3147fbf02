package main

// Tests of the new-user trial's findings (issue 11): each fails without
// its fix.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/scheduler"
)

// TestInjectHeaderInjection: a CR, LF or other control character in a
// value mtactl writes into a header is a usage error naming the flag, and
// nothing reaches the daemon.
func TestInjectHeaderInjection(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	for _, c := range []struct {
		flag string
		args []string
	}{
		{"--subject", []string{"--to", "ann@a.test", "--subject", "x\r\nBcc: evil@example.test"}},
		{"--subject", []string{"--to", "ann@a.test", "--subject", "x\nBcc: evil@example.test"}},
		{"--subject", []string{"--to", "ann@a.test", "--subject", "bell\a"}},
		{"--from", []string{"--to", "ann@a.test", "--from", "me@src.test>\r\nBcc: <evil@example.test"}},
		{"--to", []string{"--to", "ann@a.test>\nBcc: <evil@example.test"}},
		{"--to", []string{"--to", "ann@a.test\x7f"}},
	} {
		code, out, errOut := mtactl(t, "127.0.0.1:1", append([]string{"inject", "--smtp", e.smtp}, c.args...)...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.flag+" ") || !strings.Contains(errOut, "control character") {
			t.Errorf("%q: exit %d %q %q; want 2 naming %s", c.args, code, out, errOut, c.flag)
		}
	}
	if ids := e.h.all(); len(ids) != 0 {
		t.Errorf("%d messages stored, want none", len(ids))
	}
}

// TestInjectSMTPUTF8: a non-ASCII recipient or subject is sent with
// MAIL ... SMTPUTF8, so the real injection server takes it; the stored
// message says SMTPUTF8 and keeps the subject as written.
func TestInjectSMTPUTF8(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	code, out, errOut := mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "user@bücher.test", "--subject", "Grüße")
	m := regexp.MustCompile(`^queued as (\S+)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("inject: exit %d %q %q", code, out, errOut)
	}
	msg, err := e.sp.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if !msg.SMTPUTF8 || len(msg.Recipients) != 1 {
		t.Errorf("stored SMTPUTF8=%v recipients %+v", msg.SMTPUTF8, msg.Recipients)
	}
	if b := e.body(t, m[1]); !strings.Contains(b, "Subject: Grüße\r\n") {
		t.Errorf("stored body:\n%s", b)
	}
	// ASCII only: no SMTPUTF8, as before.
	_, out, _ = mtactl(t, "127.0.0.1:1", "inject", "--smtp", e.smtp, "--to", "ann@a.test")
	if m := regexp.MustCompile(`^queued as (\S+)\n$`).FindStringSubmatch(out); m == nil {
		t.Fatalf("inject ascii: %q", out)
	} else if msg, err := e.sp.Get(m[1]); err != nil || msg.SMTPUTF8 {
		t.Errorf("ascii message stored with SMTPUTF8=%v (%v)", msg != nil && msg.SMTPUTF8, err)
	}
}

// TestInjectJSON: --json prints one JSON object on stdout with the
// counts, the refusals as recipient and reason, and the queue ids the
// daemon gave; the exit code still says a refusal.
func TestInjectJSON(t *testing.T) {
	t.Parallel()
	e := startInject(t)
	dir := t.TempDir()
	for name, text := range map[string]string{
		"a.eml": "From: a@src.test\nTo: ann@a.test\nSubject: a\n\nbody a\n",
		"b.eml": "From: b@src.test\nTo: bob@b.test\nCc: x@[192.0.2.1]\nSubject: b\n\nbody b\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := mtactl(t, "127.0.0.1:1", "--json", "inject", "--smtp", e.smtp, "--dir", dir)
	var got struct {
		Accepted *int `json:"accepted"`
		Refused  []struct {
			Recipient string `json:"recipient"`
			Reason    string `json:"reason"`
		} `json:"refused"`
		QueueIDs []string `json:"queue_ids"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 1 {
		t.Fatalf("exit %d, stdout %q (%v), stderr %q", code, out, err, errOut)
	}
	stored := e.h.all()
	if got.Accepted == nil || *got.Accepted != 2 || len(got.Refused) != 1 || got.Refused[0].Recipient != "x@[192.0.2.1]" ||
		!regexp.MustCompile(`^5\d\d 5\.\d\.\d+ `).MatchString(got.Refused[0].Reason) || len(got.QueueIDs) != 2 || len(stored) != 2 {
		t.Fatalf("--json: %s (stored %q)", out, stored)
	}
	for _, id := range got.QueueIDs {
		if _, err := e.sp.Get(id); err != nil {
			t.Errorf("queue id %q printed is not spooled: %v", id, err)
		}
	}
	if strings.Contains(errOut, "accepted 2") {
		t.Errorf("--json also printed the human count: %q", errOut)
	}
}

// TestProgressFinishes: the bar's last frame is 100%, n of n, not the
// last throttled frame short of it.
func TestProgressFinishes(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := newProgress(&buf, 200, "inject")
	for range 200 {
		p.add()
	}
	p.done()
	frames := strings.Split(buf.String(), "\r")
	last := strings.TrimSpace(frames[len(frames)-1])
	if !strings.Contains(last, "100%") || !strings.Contains(last, "(200/200") || !strings.HasSuffix(buf.String(), "\n") {
		t.Errorf("last frame %q (of %q)", last, cut(buf.String(), 300))
	}
}

// recorder is an admin API stand-in serving fixed answers in the
// scheduler's shapes, and recording the requests' URLs.
type recorder struct {
	mu   sync.Mutex
	urls []string
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.urls...)
}

func startRecorder(t *testing.T) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	answers := map[string]any{
		"/api/v1/messages": scheduler.MessagePage{Items: []scheduler.MessageItem{
			{QueueID: "01A", Sender: "s@x.test", Domain: "xn--bcher-kva.test", Arrival: at, Size: 10, Recipients: []string{"u@xn--bcher-kva.test"}, State: "active"},
			{QueueID: "01A", Sender: "s@x.test", Domain: "b.test", Arrival: at, Size: 10, Recipients: []string{"v@b.test"}, State: "active"},
		}},
		"/api/v1/messages/01A": scheduler.MessageDetail{QueueID: "01A", Sender: "s@x.test", Size: 1234567, Arrival: at, Binding: "b1",
			Recipients: []scheduler.MessageRecipient{
				{Addr: "u@xn--bcher-kva.test", State: "delayed", Attempts: 2, LastCode: 451, LastEnh: "4.3.0", LastText: "try\nlater"},
				{Addr: "v@b.test", State: "queued"},
			},
			Headers: "From: s@x.test\r\nSubject: hi\r\n"},
		"/api/v1/quarantine/01Q": map[string]any{"queue_id": "01Q", "readable": true, "sender": "q@x.test", "recipients": 1,
			"rcpts": []map[string]any{{"address": "r@c.test", "state": "queued", "attempts": 0}}},
		"/api/v1/status": map[string]any{"state": "running", "uptime_seconds": 12, "queue": map[string]any{"messages": 3}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.urls = append(rec.urls, r.URL.String())
		rec.mu.Unlock()
		v, ok := answers[r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"not here"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, rec
}

// TestHumanDocs: status, message show and quarantine show print aligned
// key/value lines and a recipients table by default, the API's JSON with
// --json.
func TestHumanDocs(t *testing.T) {
	t.Parallel()
	base, _ := startRecorder(t)
	code, out, errOut := mtactl(t, base, "message", "show", "01A")
	if code != 0 || strings.HasPrefix(out, "{") {
		t.Fatalf("message show: exit %d %q %q", code, out, errOut)
	}
	for _, want := range []string{"queue_id:           01A\n", "size:               1234567\n", "binding:            b1\n",
		"\nrecipients:\nADDR ", "\nheaders:\n  From: s@x.test\n  Subject: hi\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("message show: no %q in\n%s", want, out)
		}
	}
	if r := row(out, "u@xn--bcher-kva.test"); len(r) < 7 || r[1] != "delayed" || r[2] != "2" || r[3] != "451" || r[4] != "4.3.0" || r[5] != "try" || r[6] != "later" {
		t.Errorf("recipient row %q in\n%s", r, out)
	}
	code, out, _ = mtactl(t, base, "quarantine", "show", "01Q")
	if code != 0 || !strings.Contains(out, "readable:    yes\n") || row(out, "r@c.test") == nil {
		t.Errorf("quarantine show: exit %d\n%s", code, out)
	}
	code, out, _ = mtactl(t, base, "status")
	if code != 0 || !strings.Contains(out, "state:           running\n") || !strings.Contains(out, "queue.messages:  3\n") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"status"}, {"message", "show", "01A"}, {"quarantine", "show", "01Q"}} {
		code, out, _ := mtactl(t, base, append([]string{"--json"}, args...)...)
		if code != 0 || !json.Valid([]byte(out)) || !strings.HasPrefix(out, "{\n") {
			t.Errorf("--json %q: exit %d %q", args, code, out)
		}
	}
}

// TestMessageList: the domain is sent as its A-label, each row names its
// domain, and --limit below 1 is refused before any request.
func TestMessageList(t *testing.T) {
	t.Parallel()
	base, rec := startRecorder(t)
	code, out, errOut := mtactl(t, base, "message", "list", "--domain", "bücher.test")
	if code != 0 {
		t.Fatalf("exit %d %q", code, errOut)
	}
	if u := rec.seen(); len(u) != 1 || !strings.Contains(u[0], "domain=xn--bcher-kva.test") {
		t.Errorf("requests %q, want domain=xn--bcher-kva.test", u)
	}
	if !strings.HasPrefix(out, "QUEUE ID  DOMAIN ") {
		t.Errorf("no DOMAIN column:\n%s", out)
	}
	var domains []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "01A" {
			domains = append(domains, f[1])
		}
	}
	if strings.Join(domains, " ") != "xn--bcher-kva.test b.test" {
		t.Errorf("rows' domains %q in\n%s", domains, out)
	}
	for _, args := range [][]string{
		{"message", "list", "--domain", "a.test", "--limit", "0"},
		{"message", "list", "--sender", "s@x.test", "--limit", "-3"},
		{"queue-summary", "--limit", "0"},
		{"binding", "b1", "--limit", "0"},
		{"domain", "a.test", "--limit", "0"},
		{"queue-summary", "--offset", "-1"},
		{"domain", "*"},
		{"domain", "*.a.test"},
		{"domain", "a?.test"},
		{"top", "--json"},
	} {
		before := len(rec.seen())
		code, _, errOut := mtactl(t, base, args...)
		if code != 2 || !strings.Contains(errOut, "usage: ") || len(rec.seen()) != before {
			t.Errorf("%q: exit %d %q (requests %d→%d); want a usage error before any request", args, code, errOut, before, len(rec.seen()))
		}
	}
}

// TestTopJSON: top --json --once prints one JSON frame: the summary and
// the queue view, null while the daemon lacks it.
func TestTopJSON(t *testing.T) {
	t.Parallel()
	base := startSummaryAdmin(t, func() any { return testSummary() })
	code, out, errOut := mtactl(t, base, "--json", "top", "--once")
	var f struct {
		Summary *scheduler.Summary `json:"summary"`
		Queues  json.RawMessage    `json:"queues"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &f) != nil || f.Summary == nil || f.Summary.QueuedMessages != 12 || string(f.Queues) != "null" {
		t.Errorf("exit %d %q %q", code, out, errOut)
	}
}

// FuzzPrintDoc: whatever the daemon answers, printDoc does not panic; a
// JSON object is always rendered, anything else refused.
func FuzzPrintDoc(f *testing.F) {
	f.Add(`{"queue_id":"01A","recipients":[{"addr":"a@b.test","state":"queued"}],"headers":"A: b\r\nC: d\r\n"}`)
	f.Add(`{"a":{"b":{"c":[1,"x",null,{"d":true}]}},"e":[]}`)
	f.Add(`[1,2]`)
	f.Fuzz(func(t *testing.T, s string) {
		var out bytes.Buffer
		err := printDoc(&out, "fuzz", []byte(s))
		var o map[string]json.RawMessage
		if json.Unmarshal([]byte(s), &o) == nil && o != nil && err != nil && json.Valid([]byte(s)) {
			t.Fatalf("a JSON object refused: %v", err)
		}
	})
}
