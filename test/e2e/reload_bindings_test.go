package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// apiReload asks the daemon's admin API for a reload.
func apiReload(t *testing.T, d *daemon, by, reason string) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"by": by, "reason": reason})
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post("http://"+d.admin+"/api/v1/reload", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("reload answer: %v", err)
	}
	return resp.StatusCode, v
}

// writeYAML replaces the daemon's config with base plus extra.
func writeYAML(t *testing.T, e *env, base, extra string) {
	t.Helper()
	if err := os.WriteFile(e.cfgPath, []byte(base+extra), 0o600); err != nil {
		t.Fatal(err)
	}
}

func groupedMsg(id, group, to string) string {
	return fmt.Sprintf("From: <app@snd.e2e>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\nX-Binding-Group: %s\r\n\r\nbody\r\n", to, id, id, group)
}

// TestReloadAddsBindingAndLogLevel: through the admin API (with systemd's
// RELOADING then READY on a notify socket of the test's own), a new
// binding 127.0.0.3 and a group using it apply at once, mail asking for
// that group leaves from 127.0.0.3, and log.level debug applies at once.
func TestReloadAddsBindingAndLogLevel(t *testing.T) {
	t.Parallel()
	z, sinks, port := remote(t, []string{"127.0.7.1"}, func(int) loopbacktest.Config { return loopbacktest.Config{} })
	addMX(t, z, "grp.e2e", "127.0.7.1")
	o := cfgOpts{dns: z.Addr, port: port, bindings: []string{"127.0.0.2"}}
	e := newEnv(t, o)
	base := e.yaml(o)
	ns := listenNotify(t)
	d := startEnv(t, e, []string{"NOTIFY_SOCKET=" + ns.path})
	ns.next(t, d, "READY=1")

	healthz := func() {
		resp, err := http.Get("http://" + d.admin + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	healthz()
	for _, r := range d.records() {
		if r.str("level") == "debug" {
			t.Fatalf("a debug record at log.level info: %v", r)
		}
	}

	// Before the reload the group does not exist: refused at injection.
	c, err := smtp.Dial(d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	err = c.SendMail("app@snd.e2e", []string{"u@grp.e2e"}, strings.NewReader(groupedMsg("g0@e2e", "g3", "u@grp.e2e")))
	c.Close()
	if !isSMTPReply(err, 550, "5.7.0") {
		t.Fatalf("a message for group g3 before the reload: %v, want 550 5.7.0", err)
	}

	writeYAML(t, e, strings.Replace(base, "level: info", "level: debug", 1),
		"  - name: b3\n    address: 127.0.0.3\n    ehlo: b3.mtad.e2e\nbinding_groups:\n  - name: g3\n    bindings:\n      - name: b3\n        weight: 1\n")
	code, v := apiReload(t, d, "alice", "new source address")
	if code != http.StatusOK || v["ok"] != true {
		t.Fatalf("reload: %d %v", code, v)
	}
	ns.next(t, d, "RELOADING=1")
	ns.next(t, d, "READY=1")
	applied := fmt.Sprint(v["applied"])
	if !strings.Contains(applied, "bindings: b3 added") || !strings.Contains(applied, "log.level=debug") {
		t.Errorf("applied = %s", applied)
	}
	rec := d.waitLog("reload record", 10*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "configuration reloaded")
	})
	if rec.str("by") != "alice" || rec.str("reason") != "new source address" || rec["ok"] != true {
		t.Errorf("reload record %v: want by alice, the reason, ok", rec)
	}

	healthz()
	d.waitLog("a debug record after the reload", 10*time.Second, func(r record) bool {
		return r.str("level") == "debug" && r.str("msg") == "admin request"
	})

	sendRaw(t, d.smtpAddr, "app@snd.e2e", "u@grp.e2e", groupedMsg("g1@e2e", "g3", "u@grp.e2e"))
	msgs := sinks[0].WaitMessages(t, 1)
	if msgs[0].RemoteIP != "127.0.0.3" || msgs[0].EHLO != "b3.mtad.e2e" {
		t.Errorf("group g3's mail came from %s (EHLO %s), want 127.0.0.3 (b3.mtad.e2e)", msgs[0].RemoteIP, msgs[0].EHLO)
	}
	if code := d.stop(); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestReloadRetiresBinding: a broken bindings section is refused with 422
// naming the key and the daemon keeps its bindings; then removing a
// binding that has mail queued (the sink defers) moves that mail to the
// default group's binding, from which it is delivered.
func TestReloadRetiresBinding(t *testing.T) {
	t.Parallel()
	var accept atomic.Bool
	z, sinks, port := remote(t, []string{"127.0.7.2"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			if !accept.Load() {
				return loopbacktest.Reply(451, smtp.EnhancedCode{4, 7, 1}, "try later")
			}
			return nil
		}}
	})
	addMX(t, z, "ret.e2e", "127.0.7.2")
	o := cfgOpts{dns: z.Addr, port: port, bindings: []string{"127.0.0.4", "127.0.0.5"}}
	e := newEnv(t, o)
	base := e.yaml(o)
	only := func(b string) string {
		return "binding_groups:\n  - name: default\n    bindings:\n      - name: " + b + "\n        weight: 1\n"
	}
	writeYAML(t, e, base, only("b4"))
	d := start(t, e)

	sendRaw(t, d.smtpAddr, "app@snd.e2e", "u@ret.e2e", groupedMsg("r1@e2e", "default", "u@ret.e2e"))
	d.waitLog("a deferral from b4", 20*time.Second, func(r record) bool {
		return r.str("event") == "deferred" && r.str("binding") == "b4"
	})

	// Broken: b6's address is not this host's. Refused whole, naming it.
	writeYAML(t, e, base+"  - name: b6\n    address: 192.0.2.7\n", only("b6"))
	code, v := apiReload(t, d, "", "")
	res, _ := v["result"].(map[string]any)
	if code != http.StatusUnprocessableEntity || !strings.Contains(errText(v), "bindings[2].address") || res == nil || res["ok"] != false {
		t.Fatalf("broken bindings: %d %v, want 422 naming bindings[2].address", code, v)
	}
	d.waitLog("refusal record", 10*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "reload refused") && strings.Contains(r.str("error"), "bindings[2].address")
	})

	// b4 removed, the default group is b5: the mail queued on b4 moves.
	writeYAML(t, e, strings.Replace(base, "  - name: b4\n    address: 127.0.0.4\n    ehlo: b4.mtad.e2e\n", "", 1), only("b5"))
	code, v = apiReload(t, d, "bob", "retire b4")
	if code != http.StatusOK || !strings.Contains(fmt.Sprint(v["applied"]), "bindings: b4 retired") {
		t.Fatalf("reload retiring b4: %d %v", code, v)
	}
	d.waitLog("retire record", 10*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "binding retired") && r.str("binding") == "b4"
	})
	// A session on b4 under way at the reload settles onto b5 too; once
	// a deferral comes from b5 the mail is there, and the sink accepts.
	d.waitLog("a deferral from b5", 20*time.Second, func(r record) bool {
		return r.str("event") == "deferred" && r.str("binding") == "b5"
	})
	accept.Store(true)
	msgs := sinks[0].WaitMessages(t, 1)
	if msgs[0].RemoteIP != "127.0.0.5" {
		t.Errorf("the retired binding's mail came from %s, want 127.0.0.5 (b5)", msgs[0].RemoteIP)
	}
	d.waitLog("delivered from b5", 20*time.Second, func(r record) bool {
		return r.str("event") == "delivered" && r.str("binding") == "b5"
	})
	if code := d.stop(); code != 0 {
		t.Errorf("exit %d", code)
	}
}

func errText(v map[string]any) string { s, _ := v["error"].(string); return s }
