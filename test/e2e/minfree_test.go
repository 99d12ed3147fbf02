package e2e

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// TestSpoolMinFree: spool.min_free reaches the spool. Set above any disk's
// free space, the daemon starts, says so in one warning, and refuses new
// mail with 452 4.3.1 at MAIL, before the body is sent (the sender keeps
// it and retries); set below the least (one fresh WAL file), start-up
// stops with one line naming the key.
func TestSpoolMinFree(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cfgOpts{dns: "127.0.0.1:1", port: 1})
	e.environ = []string{"MTAD_SPOOL_MIN_FREE=1000000TiB"}
	d := start(t, e)
	c, err := smtp.Dial(d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.e2e"); err != nil {
		t.Fatal(err)
	}
	_, step, err := send(c, testMsg{id: "minfree@e2e", from: "app@src.e2e", to: []string{"u@dq.e2e"}})
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) || step != "mail" {
		t.Fatalf("injection with spool.min_free above the free space: step %q, %v; want 452 4.3.1 at MAIL", step, err)
	}
	// One warning naming the key, with the figures; no error line per
	// refused message.
	var warns, errs int
	for _, r := range d.records() {
		switch {
		case strings.Contains(r.str("msg"), "spool.min_free") && r.str("level") == "warn" && r["free_bytes"] != nil && r["min_free_bytes"] != nil:
			warns++
		case r.str("level") == "error":
			errs++
		}
	}
	if warns != 1 || errs != 0 {
		t.Errorf("%d spool.min_free warnings and %d error lines, want 1 and 0", warns, errs)
	}
	if code := d.stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}

	cmd := exec.Command(mtadBin, "--config", e.cfgPath, "--allow-root")
	cmd.Env = append(os.Environ(), "MTAD_SPOOL_MIN_FREE=1MiB")
	cmd.Dir = e.dir
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), "spool.min_free: 1MiB is below the least, 80MiB") {
		t.Fatalf("mtad with spool.min_free 1MiB: %v, output %q; want an exit naming the key", err, out)
	}
}
