package e2e

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestBounceClassReload: the daemon classifies a bounce with the built-in
// rules, takes an operator's rules file on SIGHUP (a bad one is refused
// naming the line, rule and key), classifies the next bounce by it, and
// serves both on /metrics.
func TestBounceClassReload(t *testing.T) {
	t.Parallel()
	z, _, port := remote(t, []string{"127.0.61.1"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			return loopbacktest.Reply(550, smtp.EnhancedCode{5, 0, 0}, "Envelope blocked - User Entry")
		}}
	})
	addMX(t, z, "blk.e2e", "127.0.61.1")
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	d := start(t, e)

	bounceOf := func(id string) {
		t.Helper()
		// The sender's domain has no MX: the DSN to it bounces too (21),
		// and a bounce of a DSN gets none.
		msgs := []testMsg{{id: id, from: "app@nomx.e2e", to: []string{"user@blk.e2e"}}}
		if in := inject(d.smtpAddr, 1, msgs, nil); len(in.errs) > 0 || in.ackedCount() != 1 {
			t.Fatalf("injection of %s: %v", id, in.errs)
		}
	}
	bounced := func(i, class int) {
		t.Helper()
		var got []record
		d.waitRecords("bounce of user@blk.e2e", 10*time.Second, func(recs []record) bool {
			got = got[:0]
			for _, r := range recs {
				if r.str("event") == "bounced" && r.str("recipient") == "user@blk.e2e" {
					got = append(got, r)
				}
			}
			return len(got) > i
		})
		if c := got[i].num("bounce_class"); c != class {
			t.Errorf("bounce %d: bounce_class %d, want %d (%v)", i+1, c, class, got[i])
		}
	}
	bounceOf("bc-1@e2e")
	bounced(0, 50) // built-in: a policy block

	rules := filepath.Join(e.dir, "bounce-classes.yaml")
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	withRules := strings.Replace(string(cfg), "\ndelivery:\n", "\ndelivery:\n  bounce_classes_file: "+rules+"\n", 1)
	if err := os.WriteFile(e.cfgPath, []byte(withRules), 0o600); err != nil {
		t.Fatal(err)
	}
	reloads := func(msg string, n int) record {
		t.Helper()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var r record
		d.waitRecords(msg, 10*time.Second, func(recs []record) bool {
			seen := 0
			for _, rec := range recs {
				if strings.HasPrefix(rec.str("msg"), msg) {
					if seen++; seen == n {
						r = rec
						return true
					}
				}
			}
			return false
		})
		return r
	}

	if err := os.WriteFile(rules, []byte("rules:\n  - name: mimecast\n    code: 550\n    text: 'envelope blocked'\n    class: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := reloads("reload refused", 1)
	if want := "bounce classes file " + rules + ": line 5: rule 1 (\"mimecast\"): class: 5 is not a bounce class"; !strings.Contains(r.str("error"), want) {
		t.Errorf("refusal %q does not say %q", r.str("error"), want)
	}

	if err := os.WriteFile(rules, []byte("rules:\n  - name: mimecast\n    code: 550\n    text: 'envelope blocked'\n    class: 51\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := reloads("configuration reloaded", 1); r.str("bounce_classes_file") != rules {
		t.Errorf("reload record %v does not name the rules file", r)
	}
	bounceOf("bc-2@e2e")
	bounced(1, 51)

	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + d.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && strings.HasPrefix(k, "mtad_bounce_class_total{") {
			got[k] = v
		}
	}
	for _, series := range []string{
		`mtad_bounce_class_total{class="50",event="bounced"}`,
		`mtad_bounce_class_total{class="51",event="bounced"}`,
	} {
		if got[series] != "1" {
			t.Errorf("%s = %q, want 1 (%v)", series, got[series], got)
		}
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
}
