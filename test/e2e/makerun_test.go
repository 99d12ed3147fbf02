package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeRunReadme is a newcomer's first minutes: the shipped config, its
// routes pointed at a mtasink the test starts (the file's own port, 2526,
// replaced by the sink's, so no fixed port is needed), and README's "Try
// it" snippet run as written but for the injection port. The message must
// be logged delivered, be a file in the sink's directory, and mtactl must
// reach the daemon given admin.listen as host:port.
func TestMakeRunReadme(t *testing.T) {
	t.Parallel()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 not found (%v): run 'make deps' (as root it installs it with apt)", err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/mtasink", "./cmd/mtactl")
	build.Dir = moduleRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build mtasink mtactl: %v\n%s", err, out)
	}

	dir := t.TempDir()
	sinkDir := filepath.Join(dir, "sink")
	sinkAddr := startMtasink(t, filepath.Join(bin, "mtasink"), sinkDir)

	// The shipped config, routes and all, with the sink's port.
	shipped, err := os.ReadFile(filepath.Join(moduleRoot, "configs", "mtad.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const shippedSink = "host: 127.0.0.1:2526"
	for _, d := range []string{"example.test", "mtad.test"} {
		if !regexp.MustCompile(`(?m)^  - domain: ` + regexp.QuoteMeta(d) + `\n    ` + shippedSink + `$`).Match(shipped) {
			t.Fatalf("configs/mtad.yaml does not route %s to %s", d, shippedSink)
		}
	}
	e := &env{dir: dir, cfgPath: filepath.Join(dir, "mtad.yaml"), logPath: filepath.Join(dir, "mtad.log")}
	cfg := strings.ReplaceAll(string(shipped), shippedSink, "host: "+sinkAddr)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// What differs from make run, by MTAD_* overrides: free ports, files
	// in the test's directory, and a DNS server where nothing answers, so
	// that any lookup fails at once instead of leaving the machine (the
	// routed .test domains need none).
	e.environ = []string{
		"MTAD_SPOOL_DIR=" + filepath.Join(dir, "spool"),
		"MTAD_LOG_FILE=" + e.logPath,
		"MTAD_INJECT_SMTP_LISTEN=127.0.0.1:0",
		"MTAD_ADMIN_LISTEN=127.0.0.1:0",
		"MTAD_DNS_SERVERS=127.0.0.1:1",
		"MTAD_DNS_TIMEOUT=1s",
		"MTAD_RESPONSE_RULES_FILE=" + filepath.Join(moduleRoot, "configs", "response-rules.yaml"),
	}
	d := start(t, e)

	// README's snippet, with the daemon's injection port for 2525.
	readme, err := os.ReadFile(filepath.Join(moduleRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	try := string(readme)
	if i := strings.Index(try, "### Try it"); i >= 0 {
		try = try[i:]
	} else {
		t.Fatal(`README.md has no "### Try it" section`)
	}
	m := regexp.MustCompile(`(?s)python3 - <<'PY'\n(.*?)\nPY\n`).FindStringSubmatch(try)
	if m == nil {
		t.Fatal(`README.md's "Try it" has no python3 - <<'PY' ... PY snippet`)
	}
	const readmeInject = `smtplib.SMTP("127.0.0.1", 2525)`
	if !strings.Contains(m[1], readmeInject) || !strings.Contains(m[1], `"user@example.test"`) {
		t.Fatalf("README's snippet does not send to user@example.test through %s:\n%s", readmeInject, m[1])
	}
	host, port, _ := strings.Cut(d.smtpAddr, ":")
	script := strings.Replace(m[1], readmeInject, fmt.Sprintf("smtplib.SMTP(%q, %s)", host, port), 1)
	pycmd := exec.Command(py, "-")
	pycmd.Stdin = strings.NewReader(script)
	if out, err := pycmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "{}" {
		t.Fatalf("README's snippet: %v, output %q; want {} (every recipient accepted)", err, out)
	}

	rec := d.waitLog("delivered to user@example.test", 30*time.Second, func(r record) bool {
		return r.str("event") == "delivered" && r.str("recipient") == "user@example.test"
	})
	t.Logf("delivered record: %v", rec)

	// The sink answered 250 after its file was synced: it is there.
	ents, err := os.ReadDir(sinkDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || !strings.HasSuffix(ents[0].Name(), ".eml") {
		t.Fatalf("sink directory holds %v, want one .eml file", ents)
	}
	msg, err := os.ReadFile(filepath.Join(sinkDir, ents[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Return-Path: <app@mtad.test>\r\n", "Received: from ", "X-Envelope-To: user@example.test\r\n", "Subject: hi\r\n", "\r\n\r\nhello\r\n"} {
		if !strings.Contains(string(msg), want) {
			t.Errorf("sunk message lacks %q:\n%s", want, msg)
		}
	}

	// mtactl, given admin.listen as the config writes it.
	ctl := exec.Command(filepath.Join(bin, "mtactl"), "--admin", d.admin, "--json", "status")
	ctl.Env = append(os.Environ(), "MTAD_ADMIN=") // the flag, not an inherited setting
	out, err := ctl.Output()
	if err != nil {
		t.Fatalf("mtactl --admin %s status: %v\n%s", d.admin, err, out)
	}
	var st struct {
		State struct {
			Queues struct {
				Active  *int `json:"active"`
				Delayed *int `json:"delayed"`
			} `json:"queues"`
			Pending *int `json:"messages_pending"`
		} `json:"state"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.State.Queues.Active == nil || st.State.Pending == nil {
		t.Fatalf("mtactl status: %q: want state.queues.active and state.messages_pending (%v)", out, err)
	}
	if *st.State.Pending != 0 || *st.State.Queues.Active != 0 || *st.State.Queues.Delayed != 0 {
		t.Errorf("mtactl status after the delivery: %s; want nothing queued", out)
	}
	if k := nonSnakeKey(t, out); k != "" {
		t.Errorf("mtactl status: key %q is not snake_case: %s", k, out)
	}
	if code := d.stop(); code != 0 {
		t.Errorf("mtad exit %d after SIGTERM", code)
	}
}

// startMtasink runs the capture sink on a free loopback port, stopped with
// SIGTERM at the test's end, and returns its address.
func startMtasink(t *testing.T, bin, dir string) string {
	t.Helper()
	p := exec.Command(bin, "--listen", "127.0.0.1:0", "--dir", dir)
	p.Stderr = os.Stderr
	r, err := p.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan string, 1)
	drained := make(chan struct{})
	go func() { // owned by the cleanup below, which waits for it
		defer close(drained)
		sc := bufio.NewScanner(r)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		_, _ = io.Copy(io.Discard, r)
	}()
	t.Cleanup(func() {
		_ = p.Process.Signal(syscall.SIGTERM)
		select {
		case <-drained:
		case <-time.After(20 * time.Second):
			_ = p.Process.Kill()
			<-drained
		}
		if err := p.Wait(); err != nil {
			t.Errorf("mtasink after SIGTERM: %v", err)
		}
	})
	select {
	case l := <-first:
		m := regexp.MustCompile(`^mtasink listening on (127\.0\.0\.1:\d+), `).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("mtasink's first line %q, want its address", l)
		}
		return m[1]
	case <-time.After(20 * time.Second):
		t.Fatal("mtasink did not announce its address in 20s")
	}
	return ""
}

// nonSnakeKey returns the first object key in the JSON document b that is
// not lower-case snake_case, or "".
func nonSnakeKey(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	var walk func(any) string
	walk = func(v any) string {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if !snake.MatchString(k) {
					return k
				}
				if bad := walk(e); bad != "" {
					return bad
				}
			}
		case []any:
			for _, e := range v {
				if bad := walk(e); bad != "" {
					return bad
				}
			}
		}
		return ""
	}
	return walk(v)
}
