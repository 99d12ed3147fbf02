package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// buildMtactl builds cmd/mtactl into dir, as TestMain builds mtad.
func buildMtactl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mtactl")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/mtactl")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/mtactl: %v\n%s", err, out)
	}
	return bin
}

// TestPolicyAdmin drives the running daemon with the real mtactl: the
// resolved shaping of a domain, with and without a binding narrowing,
// names where each value came from; a suspended domain's mail stays
// queued while another domain on the same MX host is delivered, and is
// delivered once the suspension is lifted; each change is one policy log
// record.
func TestPolicyAdmin(t *testing.T) {
	t.Parallel()
	ctl := buildMtactl(t)
	ty := newTally()
	z, _, port := remote(t, []string{"127.0.64.1"}, func(int) loopbacktest.Config { return loopbacktest.Config{Data: ty.add} })
	// Two domains on one MX host: one site, of provider bigmail.
	z.Add(t, "pa.e2e. 300 IN MX 10 mx1.bigmail.e2e.", "pb.e2e. 300 IN MX 10 mx1.bigmail.e2e.",
		"mx1.bigmail.e2e. 300 IN A 127.0.64.1")
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port, bindings: []string{"127.0.64.101", "127.0.64.102"}})
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	shaping := `shaping:
  providers:
    - name: bigmail
      match_mx: [".bigmail.e2e"]
      max_connections: 7
      provider_max_message_rate: "600/m"
  domains:
    - match: pa.e2e
      max_message_rate: "50/s"
      bindings:
        - binding: b102
          max_connections: 3
`
	withShaping := strings.Replace(string(cfg), "shaping:\n  domains:\n", shaping, 1)
	if withShaping == string(cfg) {
		t.Fatal("the harness's config has no shaping.domains to extend")
	}
	if err := os.WriteFile(e.cfgPath, []byte(withShaping), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, e)

	run := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(ctl, append([]string{"--admin", "http://" + d.admin, "--timeout", "20s"}, args...)...)
		var o, eb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &eb
		err := cmd.Run()
		if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
			t.Fatalf("run mtactl %v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), o.String(), eb.String()
	}
	rows := func(out string) map[string]string {
		m := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 {
				m[f[0]] = strings.Join(f[1:], " ")
			}
		}
		return m
	}

	// The shaping, resolved with the domain's MX set from DNS.
	code, out, errOut := run("shaping", "resolve", "PA.e2e")
	if code != 0 {
		t.Fatalf("shaping resolve: exit %d: %s", code, errOut)
	}
	got := rows(out)
	for k, want := range map[string]string{
		"domain":                    "pa.e2e",
		"mx":                        "mx1.bigmail.e2e",
		"site":                      "mx1.bigmail.e2e",
		"provider":                  "bigmail",
		"max_connections":           `5 domain *`, // the "*" domain entry beats the provider
		"max_message_rate":          "50/s domain pa.e2e",
		"provider_max_message_rate": "600/m provider bigmail",
		"retry_interval":            "1s delivery",
	} {
		if got[k] != want {
			t.Errorf("shaping resolve pa.e2e: %s = %q, want %q\n%s", k, got[k], want, out)
		}
	}
	_, out, _ = run("shaping", "resolve", "pa.e2e", "--binding", "b102")
	if got := rows(out); got["max_connections"] != "3 domain pa.e2e binding b102" || got["binding"] != "b102" {
		t.Errorf("shaping resolve pa.e2e from b102:\n%s", out)
	}
	_, out, _ = run("shaping", "resolve", "pa.e2e", "--binding", "b101")
	if got := rows(out); got["max_connections"] != "5 domain *" {
		t.Errorf("shaping resolve pa.e2e from b101: the b102 narrowing applied:\n%s", out)
	}
	code, _, errOut = run("shaping", "resolve", "pa.e2e", "--binding", "b9")
	if code != 1 || !strings.Contains(errOut, `404 Not Found: binding: no binding "b9"`) {
		t.Errorf("unknown binding: exit %d %q", code, errOut)
	}
	var raw map[string]any
	_, out, _ = run("shaping", "resolve", "pb.e2e", "--json")
	if err := json.Unmarshal([]byte(out), &raw); err != nil || raw["site"] != "mx1.bigmail.e2e" {
		t.Errorf("shaping resolve pb.e2e --json: %v %q", err, out)
	}

	// Suspend pa.e2e; its mail stays queued.
	code, out, errOut = run("suspend", "domain", "pa.e2e", "--duration", "1h", "--reason", "e2e hold", "--by", "tester")
	m := regexp.MustCompile(`^suspended (\S+): domain pa.e2e until `).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("suspend: exit %d %q %q", code, out, errOut)
	}
	id := m[1]
	d.waitLog("policy suspend", 10*time.Second, func(r record) bool {
		return r.str("event") == "policy" && r.str("action") == "suspend" && r.str("id") == id &&
			r.str("source") == "operator" && r.str("scope") == "domain" && r.str("name") == "pa.e2e" &&
			r.str("reason") == "e2e hold (by tester)"
	})
	_, out, _ = run("suspensions")
	if f := strings.Fields(rows(out)[id]); len(f) < 5 || f[0] != "domain" || f[1] != "pa.e2e" || f[4] != "operator" {
		t.Errorf("suspensions lists %q for %s:\n%s", f, id, out)
	}

	held := testMsg{id: "held-1@e2e", from: "app@e2e.test", to: []string{"user@pa.e2e"}}
	if in := inject(d.smtpAddr, 1, []testMsg{held}, nil); in.ackedCount() != 1 {
		t.Fatalf("injecting to pa.e2e: %v", in.errs)
	}
	// Mail to the other domain of the same site, injected after, goes.
	ctl1 := testMsg{id: "ctl-1@e2e", from: "app@e2e.test", to: []string{"user@pb.e2e"}}
	if in := inject(d.smtpAddr, 1, []testMsg{ctl1}, nil); in.ackedCount() != 1 {
		t.Fatalf("injecting to pb.e2e: %v", in.errs)
	}
	heldKey, ctlKey := tallyKey(held.id, "user@pa.e2e"), tallyKey(ctl1.id, "user@pb.e2e")
	ty.wait(t, 20*time.Second, "pb.e2e's delivery", func() bool { return ty.n[ctlKey] > 0 })
	// And once pb.e2e's message is done, pa.e2e's is the one left.
	d.waitRecords("pb.e2e's delivered record", 20*time.Second, func(recs []record) bool {
		for _, r := range recs {
			if r.str("event") == "delivered" && r.str("recipient") == "user@pb.e2e" {
				return true
			}
		}
		return false
	})
	for _, r := range d.records() {
		if ev := r.str("event"); r.str("recipient") == "user@pa.e2e" && ev != "received" {
			t.Errorf("pa.e2e's delivery went on while suspended: %v", r)
		}
	}
	ty.mu.Lock()
	n := ty.n[heldKey]
	ty.mu.Unlock()
	if n != 0 {
		t.Fatalf("pa.e2e got its message while suspended")
	}

	code, out, errOut = run("resume", id, "--reason", "e2e done")
	if code != 0 || out != "resumed "+id+": domain pa.e2e\n" {
		t.Fatalf("resume: exit %d %q %q", code, out, errOut)
	}
	d.waitLog("policy resume", 10*time.Second, func(r record) bool {
		return r.str("event") == "policy" && r.str("action") == "resume" && r.str("id") == id &&
			r.str("source") == "operator" && r.str("reason") == "e2e done"
	})
	ty.wait(t, 20*time.Second, "pa.e2e's delivery after resume", func() bool { return ty.n[heldKey] > 0 })
	code, out, _ = run("suspensions")
	if code != 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("suspensions after resume: exit %d\n%s", code, out)
	}
	code, _, errOut = run("resume", id)
	if code != 1 || !strings.Contains(errOut, "404 Not Found") {
		t.Errorf("resume again: exit %d %q", code, errOut)
	}

	// No rule fired: no throttles, and lifting one that is not there is 404.
	code, out, _ = run("throttles")
	if code != 0 || !strings.HasPrefix(out, "SCOPE ") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("throttles: exit %d\n%s", code, out)
	}
	code, _, errOut = run("unthrottle", "site:mx1.bigmail.e2e|b101")
	if code != 1 || !strings.Contains(errOut, "404 Not Found: scope: no throttle") {
		t.Errorf("unthrottle: exit %d %q", code, errOut)
	}

	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
}
