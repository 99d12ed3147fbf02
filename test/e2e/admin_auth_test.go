package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAdminNonLoopbackWithoutTokensRefused: a non-loopback admin.listen
// without admin.tokens_file stops the start, naming both keys, before
// anything listens (the address is never bound: the check is the config's).
func TestAdminNonLoopbackWithoutTokensRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cfgOpts{dns: "127.0.0.1:1", port: 1})
	setAdmin(t, e, "  listen: 0.0.0.0:0\n")
	cmd := exec.Command(mtadBin, "--config", e.cfgPath, "--allow-root")
	cmd.Dir = e.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("mtad still running 30s after a start it must refuse: %s", out.String())
	}
	msg := out.String()
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(msg, `admin.listen: "0.0.0.0:0" is not a loopback address`) ||
		!strings.Contains(msg, "admin.tokens_file") {
		t.Fatalf("exit %d, output %q; want non-zero naming admin.listen and admin.tokens_file", cmd.ProcessState.ExitCode(), msg)
	}
	if b, err := os.ReadFile(e.logPath); err == nil && strings.Contains(string(b), "admin API listening") {
		t.Fatalf("the admin API listened before the refusal:\n%s", b)
	}
}

// TestAdminTokens: with admin.tokens_file, mtactl without a token gets 401,
// with --token or MTAD_ADMIN_TOKEN it works, and a SIGHUP applies an
// edited file (the revoked token is refused, the new one accepted).
func TestAdminTokens(t *testing.T) {
	t.Parallel()
	ctl := buildMtactl(t)
	e := newEnv(t, cfgOpts{dns: "127.0.0.1:1", port: 1})
	oldTok, newTok := strings.Repeat("0123456789abcdef", 2), strings.Repeat("fedcba9876543210", 3)
	tokens := filepath.Join(e.dir, "admin-tokens")
	if err := os.WriteFile(tokens, []byte("# e2e\nalice:"+oldTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setAdmin(t, e, "  listen: 127.0.0.1:0\n  tokens_file: "+tokens+"\n")
	d := start(t, e)

	run := func(env []string, args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(ctl, append([]string{"--admin", "http://" + d.admin}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		err := cmd.Run()
		if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
			t.Fatalf("run mtactl %v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), o.String()
	}
	noEnv := []string{"MTAD_ADMIN_TOKEN="}
	if code, out := run(noEnv, "status"); code != 1 || !strings.Contains(out, "401") || !strings.Contains(out, "bearer token is required") {
		t.Fatalf("status without a token: exit %d %q; want 1 and 401", code, out)
	}
	if code, out := run(noEnv, "--token", newTok, "status"); code != 1 || !strings.Contains(out, "401") {
		t.Fatalf("status with an unknown token: exit %d %q; want 1 and 401", code, out)
	}
	// The probes need no token (a load balancer cannot send one).
	if code, out := run(noEnv, "health"); code != 0 {
		t.Fatalf("health without a token: exit %d %q; want 0", code, out)
	}
	if code, out := run(noEnv, "--token", oldTok, "status"); code != 0 || !strings.Contains(out, "version:") {
		t.Fatalf("status with --token: exit %d %q", code, out)
	}
	if code, out := run([]string{"MTAD_ADMIN_TOKEN=" + oldTok}, "health"); code != 0 {
		t.Fatalf("health with MTAD_ADMIN_TOKEN: exit %d %q", code, out)
	}
	// Ready once the scheduler has ticked (100ms here).
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := run(noEnv, "--token", oldTok, "ready")
		if code == 0 && strings.Contains(out, `"ready"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: exit %d %q", code, out)
		}
		time.Sleep(50 * time.Millisecond) // polling the daemon: no event to wait on
	}
	// A refused request is logged; the token is not.
	d.waitLog("of the refused request", 10*time.Second, func(r record) bool {
		return r.str("msg") == "admin request refused: not authenticated" && r.str("path") == "/api/v1/status"
	})
	if b, _ := os.ReadFile(e.logPath); strings.Contains(string(b), oldTok) || strings.Contains(string(b), newTok) {
		t.Fatal("a token is in the log")
	}

	// Rotate: bob's token in, alice's out, SIGHUP.
	if err := os.WriteFile(tokens, []byte("bob:"+newTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitLog("of the reload", 20*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "configuration reloaded") && r.num("admin_tokens") == 1
	})
	if code, out := run(noEnv, "--token", oldTok, "status"); code != 1 || !strings.Contains(out, "401") {
		t.Fatalf("revoked token after SIGHUP: exit %d %q; want 401", code, out)
	}
	if code, out := run(noEnv, "--token", newTok, "status"); code != 0 {
		t.Fatalf("new token after SIGHUP: exit %d %q", code, out)
	}
	// A broken file is refused and the tokens in force stay.
	if err := os.WriteFile(tokens, []byte("bob:short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitLog("of the refused reload", 20*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "reload refused") && strings.Contains(r.str("error"), "admin.tokens_file")
	})
	if code, out := run(noEnv, "--token", newTok, "status"); code != 0 {
		t.Fatalf("token after a refused reload: exit %d %q", code, out)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// setAdmin replaces the harness config's admin section body.
func setAdmin(t *testing.T, e *env, section string) {
	t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "admin:\n  listen: 127.0.0.1:0\n", "admin:\n"+section, 1)
	if s == string(b) {
		t.Fatal("the harness's config has no admin section to replace")
	}
	if err := os.WriteFile(e.cfgPath, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
