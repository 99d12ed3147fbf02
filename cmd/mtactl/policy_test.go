package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/policy"
)

// adminPolicy is the admin.Policy behind the test server: policy's real
// Shaper, Suspensions and Overrides, with MX sets from a table.
type adminPolicy struct {
	shaper *policy.Shaper
	susp   *policy.Suspensions
	ovr    *policy.Overrides
}

var testMX = map[string][]string{"pa.test": {"mx1.bigmail.test"}}

func (p *adminPolicy) ResolveShaping(domain, b string) (admin.Shaping, error) {
	return admin.Shaping{Domain: domain, Binding: b, MX: testMX[domain], Shaping: p.shaper.Resolve(domain, testMX[domain], b)}, nil
}
func (p *adminPolicy) HasBinding(name string) bool                    { return name == "b1" || name == "b2" }
func (p *adminPolicy) HasProvider(name string) bool                   { return p.shaper.HasProvider(name) }
func (p *adminPolicy) Suspend(sp policy.Suspension) policy.Suspension { return p.susp.Add(sp) }
func (p *adminPolicy) Suspensions(now time.Time) []policy.Suspension  { return p.susp.List(now) }
func (p *adminPolicy) Throttles(now time.Time) []policy.Override      { return p.ovr.List(now) }
func (p *adminPolicy) Resume(id, _, _ string) (policy.Suspension, bool) {
	return p.susp.Lift(id)
}
func (p *adminPolicy) Unthrottle(scope, _, _ string) (policy.Override, bool) {
	return p.ovr.Lift(scope)
}

// startAdmin runs the real admin server over adminPolicy.
func startAdmin(t *testing.T) (string, *adminPolicy) {
	t.Helper()
	p := testPolicy(t)
	return serveAdmin(t, admin.Options{Policy: p}), p
}

// serveAdmin runs the real admin server with opts on a loopback port.
func serveAdmin(t *testing.T, opts admin.Options) string {
	t.Helper()
	opts.Listen = "127.0.0.1:0"
	s := admin.New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr().String()
}

// testPolicy is policy's real Shaper, Suspensions and Overrides over a
// small config.
func testPolicy(t *testing.T) *adminPolicy {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mtad.yaml")
	yaml := `
bindings: [{name: b1}, {name: b2}]
shaping:
  default: {max_connections: 8}
  providers:
    - name: bigmail
      match_mx: [".bigmail.test"]
      max_connections: 20
  domains:
    - match: pa.test
      max_message_rate: "10/s"
      bindings: [{binding: b2, max_connections: 3}]
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &adminPolicy{shaper: sh, susp: policy.NewSuspensions(), ovr: policy.NewOverrides()}
	return p
}

func mtactl(t *testing.T, base string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"--admin", base}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// row finds the table row starting with first and returns its cells.
func row(out, first string) []string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

func TestShapingResolve(t *testing.T) {
	t.Parallel()
	base, _ := startAdmin(t)
	code, out, errOut := mtactl(t, base, "shaping", "resolve", "pa.test", "--binding", "b2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range [][]string{
		{"domain", "pa.test"}, {"binding", "b2"}, {"mx", "mx1.bigmail.test"}, {"provider", "bigmail"},
		{"KEY", "VALUE", "SOURCE"},
		{"max_connections", "3", "domain", "pa.test", "binding", "b2"},
		{"max_message_rate", "10/s", "domain", "pa.test"},
		{"max_connection_rate", "unlimited", "built-in"},
		{"mx_rollup", "true", "built-in"},
	} {
		if got := row(out, want[0]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("row %q = %q, want %q\n%s", want[0], got, want, out)
		}
	}
	// Aligned: every row's value starts in VALUE's column.
	lines := strings.Split(out, "\n")
	col := -1
	for _, l := range lines {
		if col < 0 {
			col = strings.Index(l, "VALUE")
			continue
		}
		if l != "" && (len(l) <= col || l[col-1] != ' ' || l[col] == ' ') {
			t.Errorf("row %q: its value does not start at column %d\n%s", l, col, out)
		}
	}
	code, out, _ = mtactl(t, base, "shaping", "resolve", "--json", "pa.test")
	if code != 0 || !strings.HasPrefix(out, "{\n  \"domain\": \"pa.test\",\n") {
		t.Errorf("--json: %d %q", code, out)
	}
}

func TestSuspendResume(t *testing.T) {
	t.Parallel()
	base, p := startAdmin(t)
	code, out, errOut := mtactl(t, base, "suspend", "domain", "pa.test", "--duration", "2h", "--reason", "abuse desk", "--by", "alice")
	if code != 0 || !regexp.MustCompile(`^suspended s1: domain pa.test until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n$`).MatchString(out) {
		t.Fatalf("suspend: %d %q %q", code, out, errOut)
	}
	code, out, _ = mtactl(t, base, "suspend", "domain", "pa.test", "--duration", "1h", "--reason", "again")
	if code != 0 || !strings.HasPrefix(out, "already suspended until later, kept s1:") {
		t.Errorf("shorter suspend: %d %q", code, out)
	}
	code, out, _ = mtactl(t, base, "suspend", "binding", "b2", "--duration", "30m", "--reason", "ip warm-up")
	if code != 0 || !strings.HasPrefix(out, "suspended s2: binding from b2 until") {
		t.Errorf("suspend binding: %d %q", code, out)
	}

	code, out, _ = mtactl(t, base, "suspensions")
	if code != 0 {
		t.Fatalf("suspensions: %d", code)
	}
	if got := row(out, "ID"); strings.Join(got, " ") != "ID SCOPE NAME BINDING UNTIL SOURCE RULE REASON" {
		t.Errorf("header %q\n%s", got, out)
	}
	// The soonest to end first; blanks shown as "-".
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "s2 ") || !strings.HasPrefix(lines[2], "s1 ") {
		t.Fatalf("suspensions table:\n%s", out)
	}
	if f := row(out, "s1"); len(f) < 8 || f[1] != "domain" || f[2] != "pa.test" || f[3] != "-" || f[5] != "operator" ||
		f[6] != "-" || strings.Join(f[7:], " ") != "abuse desk (by alice)" {
		t.Errorf("s1 row %q", f)
	}
	if f := row(out, "s2"); len(f) < 4 || f[1] != "binding" || f[2] != "-" || f[3] != "b2" {
		t.Errorf("s2 row %q", f)
	}

	code, out, _ = mtactl(t, base, "resume", "s1", "--reason", "fixed")
	if code != 0 || out != "resumed s1: domain pa.test\n" {
		t.Errorf("resume: %d %q", code, out)
	}
	if n := len(p.susp.List(time.Now())); n != 1 {
		t.Errorf("%d suspensions after resume, want 1", n)
	}
	code, out, errOut = mtactl(t, base, "resume", "s1")
	if code != 1 || out != "" || !strings.Contains(errOut, "404 Not Found") || !strings.Contains(errOut, `no suspension "s1"`) {
		t.Errorf("resume again: %d %q %q, want exit 1 with the status and the API's error", code, out, errOut)
	}
	code, _, errOut = mtactl(t, base, "suspend", "continent", "europe", "--duration", "1h", "--reason", "r")
	if code != 1 || !strings.Contains(errOut, "400 Bad Request: scope: \"continent\" is not one of") {
		t.Errorf("bad scope: %d %q", code, errOut)
	}
	code, _, errOut = mtactl(t, base, "suspend", "domain", "pa.test", "--duration", "2h")
	if code != 2 || !strings.Contains(errOut, "--reason are required") {
		t.Errorf("no reason: %d %q", code, errOut)
	}
}

func TestThrottles(t *testing.T) {
	t.Parallel()
	base, p := startAdmin(t)
	now := time.Now()
	r := policy.Rate{N: 1, Per: time.Minute}
	scope := policy.ScopeKey(policy.ScopeSite, "mx1.bigmail.test", "b1")
	p.ovr.Set(policy.Override{Rule: "tss04", Scope: scope, MaxMessageRate: &r, Start: now, End: now.Add(time.Hour), Ramp: 30 * time.Minute})

	code, out, _ := mtactl(t, base, "throttles")
	f := row(out, scope)
	if code != 0 || len(f) != 7 || f[1] != "tss04" || f[2] != "1/m" || f[3] != "-" || f[5] != "30m0s" {
		t.Errorf("throttles: %d %q\n%s", code, f, out)
	}
	code, out, _ = mtactl(t, base, "unthrottle", scope, "--reason", "receiver fixed")
	if code != 0 || out != "unthrottled "+scope+" (rule tss04)\n" {
		t.Errorf("unthrottle: %d %q", code, out)
	}
	code, _, errOut := mtactl(t, base, "unthrottle", scope)
	if code != 1 || !strings.Contains(errOut, "404 Not Found: scope: no throttle") {
		t.Errorf("unthrottle again: %d %q", code, errOut)
	}
	code, out, _ = mtactl(t, base, "throttles", "--json")
	if code != 0 || compact(out) != `{"throttles":[]}` {
		t.Errorf("throttles --json: %d %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	base, _ := startAdmin(t)
	for _, args := range [][]string{
		{"shaping"},
		{"shaping", "show", "pa.test"},
		{"shaping", "resolve"},
		{"shaping", "resolve", "a.test", "b.test"},
		{"shaping", "resolve", "a.test", "--bindin", "b1"},
		{"suspend", "domain"},
		{"resume"},
		{"resume", "s1", "s2"},
		{"unthrottle"},
		{"suspensions", "extra"},
		{"status", "extra"},
	} {
		code, out, errOut := mtactl(t, base, args...)
		if code != 2 || out != "" || errOut == "" {
			t.Errorf("%q: exit %d stdout %q stderr %q, want 2 and a usage error", args, code, out, errOut)
		}
	}
	// An unreachable daemon is exit 1.
	code, _, errOut := mtactl(t, "http://127.0.0.1:1", "suspensions")
	if code != 1 || !strings.Contains(errOut, "mtactl:") {
		t.Errorf("unreachable: %d %q", code, errOut)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
