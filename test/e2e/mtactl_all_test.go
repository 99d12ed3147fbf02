package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// rcptLog counts the RCPT TO commands a sink sees per domain (each one is
// a delivery attempt) and decides them: 451 for the domains in deferring
// until accept is set for one.
type rcptLog struct {
	mu       sync.Mutex
	n        map[string]int
	accept   map[string]bool
	deferred map[string]bool
	notify   chan struct{} // closed and replaced on every attempt
}

func newRcptLog(deferring ...string) *rcptLog {
	l := &rcptLog{n: map[string]int{}, accept: map[string]bool{}, deferred: map[string]bool{}, notify: make(chan struct{})}
	for _, d := range deferring {
		l.deferred[d] = true
	}
	return l
}

func (l *rcptLog) rcpt(to string) error {
	_, dom, _ := strings.Cut(strings.ToLower(to), "@")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n[dom]++
	close(l.notify)
	l.notify = make(chan struct{})
	if l.deferred[dom] && !l.accept[dom] {
		return loopbacktest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try again later")
	}
	return nil
}

func (l *rcptLog) count(dom string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[dom]
}

func (l *rcptLog) setAccept(dom string) {
	l.mu.Lock()
	l.accept[dom] = true
	l.mu.Unlock()
}

// waitCount blocks until dom has seen at least n attempts (bounded).
func (l *rcptLog) waitCount(t *testing.T, dom string, n int, what string) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got, ch := l.n[dom], l.notify
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s: %s saw %d attempts after 20s, want %d", what, dom, got, n)
		}
	}
}

// holdGate blocks a sink's DATA while closed, so sessions stay open and
// the sink's high-water mark is the daemon's concurrency.
type holdGate struct {
	mu   sync.Mutex
	hold bool
	open chan struct{}
}

func (g *holdGate) data(string, []string, []byte) error {
	g.mu.Lock()
	hold, ch := g.hold, g.open
	g.mu.Unlock()
	if hold {
		select {
		case <-ch:
		case <-time.After(20 * time.Second): // never hold a session past the test's bounds
		}
	}
	return nil
}

func (g *holdGate) close() {
	g.mu.Lock()
	g.hold, g.open = true, make(chan struct{})
	g.mu.Unlock()
}

func (g *holdGate) release() {
	g.mu.Lock()
	if g.hold {
		g.hold = false
		close(g.open)
	}
	g.mu.Unlock()
}

// row finds the table row whose first cell is first and returns its cells.
func row(out, first string) []string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

// ctlRun runs the mtactl binary against the daemon's admin listener
// (given as host:port, as an operator types it).
// ctlToken is the admin token TestMtactlEveryCommand's daemon accepts.
var ctlToken = strings.Repeat("e2e-token-", 4)

func ctlRun(t *testing.T, ctl string, d *daemon, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(ctl, append([]string{"--admin", d.admin, "--timeout", "20s"}, args...)...)
	cmd.Env = append(os.Environ(), "MTAD_ADMIN_TOKEN="+ctlToken, "MTAD_ADMIN=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
		t.Fatalf("run mtactl %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// TestMtactlEveryCommand drives every mtactl command, and through them
// every admin endpoint, against the running daemon with mail kept queued
// by sinks that defer with 451 and retries an hour apart: counts shown
// match what was injected; flush retries now; suspend stops delivery and
// resume lets it go on; bounce sends a DSN; cancel writes `cancelled` and
// removes the message; cancel by pair; rebind moves mail to the other
// source address; reload applies a domain's max_connections, which the
// sink's concurrency follows; quarantine, throttles, top; and the API's
// 400s naming the field come through mtactl with exit 1; with
// admin.tokens_file every command carries MTAD_ADMIN_TOKEN and a wrong
// --token gets 401 and exit 1.
func TestMtactlEveryCommand(t *testing.T) {
	t.Parallel()
	ctl := buildMtactl(t)
	rl := newRcptLog("dq.e2e", "bo.e2e", "cp.e2e", "rb.e2e")
	gate := &holdGate{}
	z, sinks, port := remote(t, []string{"127.0.66.1", "127.0.66.2"}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{Data: gate.data}
		}
		return loopbacktest.Config{Rcpt: rl.rcpt}
	})
	for _, d := range []string{"dq.e2e", "bo.e2e", "cp.e2e", "rb.e2e", "ok.e2e", "src.e2e"} {
		addMX(t, z, d, "127.0.66.1")
	}
	addMX(t, z, "cc.e2e", "127.0.66.2")

	o := cfgOpts{dns: z.Addr, port: port, bindings: []string{"127.0.0.2", "127.0.0.3"}, retry: "1h", maxRetry: "2h", perDomain: 10}
	e := newEnv(t, o)
	base := e.yaml(o)
	groups := "binding_groups:\n  - name: default\n    bindings:\n      - name: b2\n        weight: 1\n" +
		"  - name: g3\n    bindings:\n      - name: b3\n        weight: 1\n"
	ccCap := func(n int) string {
		return strings.Replace(base, "shaping:\n  domains:\n", fmt.Sprintf("shaping:\n  domains:\n    - match: cc.e2e\n      max_connections: %d\n", n), 1)
	}
	writeYAML(t, e, ccCap(1), groups)
	withHTTPInject(t, e)
	// With a tokens file: every command below carries the token (from
	// MTAD_ADMIN_TOKEN), and a wrong one is refused.
	tokens := filepath.Join(e.dir, "admin-tokens")
	if err := os.WriteFile(tokens, []byte("ops:"+ctlToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setAdmin(t, e, "  listen: 127.0.0.1:0\n  tokens_file: "+tokens+"\n")
	withAdmin := func(s string) string {
		return strings.Replace(s, "admin:\n  listen: 127.0.0.1:0\n", "admin:\n  listen: 127.0.0.1:0\n  tokens_file: "+tokens+"\n", 1)
	}
	// withHTTPInject's edit, kept for the reload's rewrite below.
	withHTTP := func(s string) string {
		return strings.Replace(s, "inject:\n  smtp:\n", "inject:\n  http:\n    listen: [\"127.0.0.1:0\"]\n  smtp:\n", 1)
	}
	d := start(t, e)
	httpAddr := d.httpAddr()

	ok := func(want string, args ...string) string {
		t.Helper()
		code, out, errOut := ctlRun(t, ctl, d, args...)
		if code != 0 || !strings.Contains(out+errOut, want) {
			t.Fatalf("mtactl %q: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 0 and %q", args, code, out, errOut, want)
		}
		return out
	}
	fails := func(want string, args ...string) {
		t.Helper()
		code, out, errOut := ctlRun(t, ctl, d, args...)
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("mtactl %q: exit %d stdout %q stderr %q; want exit 1 and %q", args, code, out, errOut, want)
		}
	}

	fails("401", "--token", strings.Repeat("x", 40), "summary")

	// ---- inject: one message, a directory of .eml, a JSONL file over HTTP.
	out := ok("queued as ", "inject", "--smtp", d.smtpAddr, "--no-tls", "--from", "app@src.e2e", "--to", "u1@dq.e2e", "--subject", "single")
	id1 := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "queued as "))
	dir := t.TempDir()
	for i, to := range []string{"u2@dq.e2e", "u3@dq.e2e", "x@bo.e2e", "y@cp.e2e", "z@rb.e2e"} {
		eml := fmt.Sprintf("From: <app@src.e2e>\r\nTo: <%s>\r\nSubject: eml %d\r\nMessage-ID: <eml-%d@e2e>\r\n\r\nbody %d\r\n", to, i, i, i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("m%d.eml", i)), []byte(eml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ok("accepted 5, refused 0", "inject", "--smtp", d.smtpAddr, "--no-tls", "--dir", dir)
	jsonl := filepath.Join(t.TempDir(), "m.jsonl")
	if err := os.WriteFile(jsonl, []byte(`{"from":"app@src.e2e","recipients":["u4@dq.e2e"],"subject":"jsonl","text":"hello"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok("accepted 1, refused 0", "inject", "--http", httpAddr, "--jsonl", jsonl)

	// All 7 recipients deferred once: the mail stays queued (retry in 1h).
	queuedRcpts := []string{"u1@dq.e2e", "u2@dq.e2e", "u3@dq.e2e", "u4@dq.e2e", "x@bo.e2e", "y@cp.e2e", "z@rb.e2e"}
	d.waitRecords("of a deferral for each recipient", 30*time.Second, func(recs []record) bool {
		seen := map[string]bool{}
		for _, r := range recs {
			if r.str("event") == "deferred" {
				seen[r.str("recipient")] = true
			}
		}
		for _, r := range queuedRcpts {
			if !seen[r] {
				return false
			}
		}
		return true
	})

	// ---- reads.
	ok("version:", "status")
	ok(`"version"`, "--json", "status")
	ok("", "health")
	readyDeadline := time.Now().Add(20 * time.Second)
	for {
		if code, _, _ := ctlRun(t, ctl, d, "ready"); code == 0 {
			break
		}
		if time.Now().After(readyDeadline) {
			t.Fatal("mtactl ready never exited 0")
		}
		time.Sleep(50 * time.Millisecond) // polling the daemon: no event to wait on
	}
	ok("mtad_connection_attempts_total", "metrics")
	ok("7 messages, 7 recipients", "summary")
	var sum struct {
		QueuedMessages   int `json:"queued_messages"`
		QueuedRecipients int `json:"queued_recipients"`
	}
	if err := json.Unmarshal([]byte(ok("queued_messages", "--json", "summary")), &sum); err != nil || sum.QueuedMessages != 7 || sum.QueuedRecipients != 7 {
		t.Errorf("summary --json: %+v %v, want 7 messages and 7 recipients", sum, err)
	}
	qs := func(args ...string) map[string]map[string]any {
		t.Helper()
		var v struct {
			Items []map[string]any `json:"items"`
		}
		if err := json.Unmarshal([]byte(ok(`"items"`, append([]string{"--json", "queue-summary"}, args...)...)), &v); err != nil {
			t.Fatal(err)
		}
		m := map[string]map[string]any{}
		for _, it := range v.Items {
			k := fmt.Sprint(it["domain"], "/", it["site"], "/", it["binding"])
			m[k] = it
		}
		return m
	}
	if it := qs()["dq.e2e/<nil>/<nil>"]; it == nil || it["delayed"] != 4.0 || it["active"] != 0.0 {
		t.Errorf("queue-summary by domain: dq.e2e is %v, want 4 delayed", it)
	}
	if it := qs("--by", "pair")["dq.e2e/<nil>/b2"]; it == nil || it["delayed"] != 4.0 {
		t.Errorf("queue-summary by pair: dq.e2e/b2 is %v, want 4 delayed", it)
	}
	if it := qs("--by", "binding")["<nil>/<nil>/b2"]; it == nil || it["delayed"] != 7.0 {
		t.Errorf("queue-summary by binding: b2 is %v (%v), want 7 delayed", it, qs("--by", "binding"))
	}
	if m := qs("--by", "site"); len(m) == 0 {
		t.Errorf("queue-summary by site: no rows")
	}
	table := ok("dq.e2e", "queue-summary")
	if r := row(table, "dq.e2e"); r == nil || !strings.Contains(strings.Join(r, " "), "451") {
		t.Errorf("queue-summary's dq.e2e row %q lacks the last reply 451", r)
	}
	ok("mx.dq.e2e", "queue-summary", "--by", "site")
	ok("b2", "queue-summary", "--by", "pair", "--domain", "*.e2e")
	ok("b2", "queue-summary", "--by", "binding")
	ok("b2", "domain", "dq.e2e")
	ok("dq.e2e", "binding", "b2")
	list := ok("QUEUE ID", "message", "list", "--domain", "dq.e2e")
	if n := strings.Count(list, "\n") - 1; n != 4 || row(list, id1) == nil {
		t.Errorf("message list --domain dq.e2e: %d rows, want 4 with %s:\n%s", n, id1, list)
	}
	if list := ok("QUEUE ID", "message", "list", "--sender", "app@src.e2e"); strings.Count(list, "\n")-1 != 7 {
		t.Errorf("message list --sender: want 7 rows:\n%s", list)
	}
	ok("QUEUE ID", "message", "list", "--domain", "dq.e2e", "--binding", "b2", "--limit", "2")
	ok("u1@dq.e2e", "message", "show", id1)
	ok("Subject: single", "message", "show", id1, "--body")
	if r := row(ok("max_connections", "shaping", "resolve", "cc.e2e", "--binding", "b2"), "max_connections"); r == nil || r[1] != "1" {
		t.Errorf("shaping resolve cc.e2e: max_connections row %q, want 1", r)
	}
	ok("ID  META  SENDER  RCPTS  SIZE  REASON", "quarantine", "list")
	ok("ID  META  SENDER  RCPTS  SIZE  REASON", "quarantine", "list", "--limit", "5", "--after", "01A")
	fails("limit: 0 is not between 1 and 1000", "quarantine", "list", "--limit", "0")
	fails("404", "quarantine", "show", "01NOSUCH")
	ok("SCOPE", "throttles")
	fails("404", "unthrottle", "domain:nosuch.e2e")
	ok("dq.e2e", "top", "--once")

	// The API's refusals, named by field, come through with exit 1.
	fails("400 Bad Request: sort: ", "queue-summary", "--sort", "bogus")
	fails("400 Bad Request: by: ", "queue-summary", "--by", "continent")
	fails("400 Bad Request: binding: ", "queue-summary", "--binding", "nosuch")
	ok("SITE ", "queue-summary", "--by", "site", "--sort", "oldest", "--asc")
	if l := ok("QUEUE ID", "message", "list", "--sender", "app@src.e2e", "--after", id1); row(l, id1) != nil {
		t.Errorf("message list --after %s lists it:\n%s", id1, l)
	}
	fails("404 Not Found", "quarantine", "reinject", "01NOSUCH", "--reason", "r")
	fails("404 Not Found", "quarantine", "delete", "01NOSUCH", "--reason", "r")
	fails("400 Bad Request: binding: ", "bounce", "--domain", "dq.e2e", "--binding", "nosuch", "--reason", "r")
	fails("400 Bad Request: limit: ", "message", "list", "--domain", "dq.e2e", "--limit", "100000")
	fails("400 Bad Request: domain: ", "bounce", "--domain", "a..e2e", "--reason", "r")
	fails("400 Bad Request: binding: ", "cancel", "--domain", "dq.e2e", "--binding", "nosuch", "--reason", "r")
	fails("400 Bad Request: group: ", "rebind", "--domain", "dq.e2e", "--group", "nosuch", "--reason", "r")
	fails("400 Bad Request: duration: ", "rebind", "--domain", "dq.e2e", "--group", "g3", "--duration", "forever", "--reason", "r")

	// ---- flush: the retry interval is an hour; flushed mail is tried now.
	n := rl.count("dq.e2e")
	ok("flushed 4 delayed deliveries", "flush", "dq.e2e")
	rl.waitCount(t, "dq.e2e", n+4, "after flush")

	// ---- suspend: a flush of the suspended domain tries nothing, while
	// mail to another domain on the same host is delivered after it.
	out = ok("dq.e2e", "suspend", "domain", "dq.e2e", "--duration", "1h", "--reason", "maintenance")
	suspID := strings.TrimSuffix(strings.Fields(out)[1], ":")
	ok(suspID, "suspensions")
	d.waitRecords("of the 4 deferrals after the flush", 20*time.Second, func(recs []record) bool {
		c := 0
		for _, r := range recs {
			if r.str("event") == "deferred" && strings.HasSuffix(r.str("recipient"), "@dq.e2e") {
				c++
			}
		}
		return c >= 8
	})
	n = rl.count("dq.e2e")
	// The flush makes the mail due; the suspension holds it.
	ok("flushed 4 delayed deliveries", "flush", "dq.e2e")
	sendRaw(t, d.smtpAddr, "app@src.e2e", "v@ok.e2e", "From: <app@src.e2e>\r\nTo: <v@ok.e2e>\r\nSubject: ok\r\nMessage-ID: <ok-1@e2e>\r\n\r\nok\r\n")
	d.waitLog("the delivery to ok.e2e", 20*time.Second, func(r record) bool {
		return r.str("event") == "delivered" && r.str("recipient") == "v@ok.e2e"
	})
	if got := rl.count("dq.e2e"); got != n {
		t.Errorf("dq.e2e saw %d attempts while suspended (had %d)", got, n)
	}
	// Resumed, the held (due) mail is tried with no other nudge.
	ok("resumed "+suspID, "resume", suspID, "--reason", "done")
	rl.waitCount(t, "dq.e2e", n+4, "after resume")

	// ---- bounce: the sender's DSN reaches its sink.
	ok("bounced 1 recipient", "bounce", "--domain", "bo.e2e", "--reason", "complaint")
	sinks[0].Wait(t, 20*time.Second, "the DSN for x@bo.e2e", func(ms []loopbacktest.Message, _ int) bool {
		for _, m := range ms {
			if m.From == "" && len(m.To) == 1 && m.To[0] == "app@src.e2e" && bytes.Contains(m.Data, []byte("x@bo.e2e")) {
				return true
			}
		}
		return false
	})

	// ---- cancel by queue id: a cancelled record, the message gone.
	ok("cancelled 1 recipient", "cancel", "--queue-id", id1, "--reason", "wrong list")
	d.waitLog("the cancelled record", 10*time.Second, func(r record) bool {
		return r.str("event") == "cancelled" && r.str("recipient") == "u1@dq.e2e"
	})
	waitGone := time.Now().Add(10 * time.Second)
	for {
		code, _, errOut := ctlRun(t, ctl, d, "message", "show", id1)
		if code == 1 && strings.Contains(errOut, "404") {
			break
		}
		if time.Now().After(waitGone) {
			t.Fatalf("message show %s after cancel: exit %d %q, want 404", id1, code, errOut)
		}
		time.Sleep(50 * time.Millisecond) // the spool delete follows the record: polling, no event
	}
	fails("404", "message", "show", id1, "--body")

	// ---- cancel by pair.
	ok("cancelled 1 recipient", "cancel", "--domain", "cp.e2e", "--binding", "b2", "--reason", "pair")
	d.waitLog("the pair's cancelled record", 10*time.Second, func(r record) bool {
		return r.str("event") == "cancelled" && r.str("recipient") == "y@cp.e2e"
	})

	// ---- rebind: the next attempt leaves from b3's 127.0.0.3.
	ok("moved 1 queued delivery to group g3", "rebind", "--domain", "rb.e2e", "--group", "g3", "--reason", "move")
	rl.setAccept("rb.e2e")
	ok("flushed 1", "flush", "rb.e2e")
	sinks[0].Wait(t, 20*time.Second, "z@rb.e2e delivered", func(ms []loopbacktest.Message, _ int) bool {
		for _, m := range ms {
			if len(m.To) == 1 && m.To[0] == "z@rb.e2e" {
				if m.RemoteIP != "127.0.0.3" {
					t.Errorf("rebound mail came from %s, want 127.0.0.3", m.RemoteIP)
				}
				return true
			}
		}
		return false
	})

	// What is left: dq.e2e's 3 messages.
	d.waitLog("z@rb.e2e's delivered record", 10*time.Second, func(r record) bool {
		return r.str("event") == "delivered" && r.str("recipient") == "z@rb.e2e"
	})
	ok("3 messages, 3 recipients", "summary")
	if it := qs()["dq.e2e/<nil>/<nil>"]; it == nil || it["delayed"].(float64)+it["active"].(float64) != 3 {
		t.Errorf("queue-summary after the actions: dq.e2e is %v, want 3 queued", it)
	}

	// ---- reload: the API's result, then cc.e2e's max_connections 1 → 3
	// under load. The scheduler asks one connection per 8 waiting
	// deliveries, so 24 waiting want 3 and 40 want 5: the caps, not the
	// backlog, bound what the sink sees. DATA is held at the sink while
	// the load stands, so every session opened stays open.
	ok("applied", "reload", "--reason", "no change")
	ccLoad := func(prefix string, n, wantSessions int) {
		t.Helper()
		msgs := make([]testMsg, n)
		for i := range msgs {
			msgs[i] = testMsg{id: fmt.Sprintf("%s%d@e2e", prefix, i), from: "app@src.e2e", to: []string{fmt.Sprintf("%s%d@cc.e2e", prefix, i)}}
		}
		gate.close()
		defer gate.release()
		if in := inject(d.smtpAddr, 4, msgs, nil); len(in.errs) > 0 || in.ackedCount() != n {
			t.Fatalf("injection to cc.e2e: %v", in.errs)
		}
		// The daemon's own view shows the standing backlog under the cap.
		deadline := time.Now().Add(20 * time.Second)
		for {
			it := qs("--domain", "cc.e2e")["cc.e2e/<nil>/<nil>"]
			if it != nil && it["connections"] == float64(wantSessions) && it["active"].(float64) >= float64(n-wantSessions) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cc.e2e never showed %d connections with its backlog: %v", wantSessions, it)
			}
			time.Sleep(50 * time.Millisecond) // polling the daemon: no event to wait on
		}
		sinks[1].Wait(t, 20*time.Second, fmt.Sprintf("%d sessions at once", wantSessions),
			func(_ []loopbacktest.Message, sessions int) bool { return sessions >= wantSessions })
	}
	ccLoad("c", 24, 1)
	sinks[1].Wait(t, 30*time.Second, "cc.e2e's 24 messages", func(ms []loopbacktest.Message, _ int) bool { return len(ms) == 24 })
	if hw := sinks[1].HighWater(); hw != 1 {
		t.Errorf("cc.e2e at max_connections 1: the sink saw %d sessions at once", hw)
	}
	writeYAML(t, e, withAdmin(withHTTP(ccCap(3))), groups)
	if r := row(ok("applied", "reload", "--reason", "more connections"), "applied"); r == nil || !strings.Contains(strings.Join(r, " "), "shaping") {
		t.Errorf("reload's applied row %q does not name shaping", r)
	}
	ccLoad("d", 40, 3)
	sinks[1].Wait(t, 30*time.Second, "cc.e2e's 64 messages", func(ms []loopbacktest.Message, _ int) bool { return len(ms) == 64 })
	if hw := sinks[1].HighWater(); hw != 3 {
		t.Errorf("cc.e2e after the reload to max_connections 3: the sink's high water is %d, want 3", hw)
	}

	if code := d.stop(); code != 0 {
		t.Errorf("exit %d", code)
	}
}
