package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// notifySocket is the service manager's end of sd_notify(3): a unixgram
// socket the daemon is pointed at with $NOTIFY_SOCKET. Each datagram is
// one notification ("READY=1\nSTATUS=...").
type notifySocket struct {
	path string
	conn *net.UnixConn
	msgs chan string
	wg   sync.WaitGroup
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock"), msgs: make(chan string, 1000)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = conn
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(n.msgs)
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return // closed by the cleanup below
			}
			select {
			case n.msgs <- string(buf[:k]):
			default:
				t.Errorf("notification dropped: the test reads too slowly")
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		n.wg.Wait()
	})
	return n
}

// next returns the next notification whose variables include want
// ("READY=1"), with every notification read before it.
func (n *notifySocket) next(t *testing.T, d *daemon, want string) (vars map[string]string, skipped []string) {
	t.Helper()
	deadline := time.After(30 * time.Second) // a hang guard, not a timing assertion
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %s", want)
			}
			vars = map[string]string{}
			for _, line := range strings.Split(m, "\n") {
				k, v, _ := strings.Cut(line, "=")
				vars[k] = v
			}
			k, v, _ := strings.Cut(want, "=")
			if got, ok := vars[k]; ok && got == v {
				return vars, skipped
			}
			skipped = append(skipped, m)
		case <-d.done:
			t.Fatalf("mtad exited while waiting for %s: %s\nlog:\n%s", want, d.stderr.String(), tail(d.env.logPath, 20))
		case <-deadline:
			t.Fatalf("no %s on the notify socket; log:\n%s", want, tail(d.env.logPath, 20))
		}
	}
}

// TestSystemdNotify runs the daemon as systemd would with Type=notify and
// WatchdogSec=: READY=1 once it is up, WATCHDOG=1 pings while its
// scheduler ticks, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a
// SIGHUP reload, the log file reopened at its path on SIGUSR1 after a
// logrotate-style rename, and STOPPING=1 at SIGTERM.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	z := loopbacktest.StartDNS(t)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: 25})
	ns := listenNotify(t)
	// One second: pings every 500ms, five scheduler ticks (100ms) apart.
	d := startEnv(t, e, []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=1000000"})

	ns.next(t, d, "READY=1")
	for range 3 {
		ns.next(t, d, "WATCHDOG=1")
	}

	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	vars, _ := ns.next(t, d, "RELOADING=1")
	if us, err := strconv.ParseUint(vars["MONOTONIC_USEC"], 10, 64); err != nil || us == 0 {
		t.Errorf("RELOADING=1 with MONOTONIC_USEC=%q, want a positive number of microseconds", vars["MONOTONIC_USEC"])
	}
	_, between := ns.next(t, d, "READY=1")
	for _, m := range between {
		if !strings.HasPrefix(m, "WATCHDOG=1") {
			t.Errorf("%q between RELOADING=1 and READY=1", m)
		}
	}
	d.waitLog("configuration reloaded", 20*time.Second, func(r record) bool {
		return strings.HasPrefix(r.str("msg"), "configuration reloaded")
	})
	ns.next(t, d, "WATCHDOG=1") // still pinging after the reload

	// logrotate: rename, then postrotate's SIGUSR1.
	rotated := e.logPath + ".1"
	if err := os.Rename(e.logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitReopened(t, d, e.logPath)
	if recs := readRecords(t, rotated, d.logStart); len(recs) == 0 || recs[0].str("msg") != "starting" {
		t.Errorf("the rotated file does not hold this run's start: %v", recs)
	}

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ns.next(t, d, "STOPPING=1")
	if code := d.wait(60 * time.Second); code != 0 {
		t.Fatalf("mtad exited %d after SIGTERM: %s", code, d.stderr.String())
	}
	// The records of the shutdown went to the new file too.
	var stopped bool
	for _, r := range readRecords(t, e.logPath, 0) {
		stopped = stopped || r.str("msg") == "stopping"
	}
	if !stopped {
		t.Errorf("no stopping record in the reopened log:\n%s", tail(e.logPath, 10))
	}
}

// waitReopened polls for a "log file reopened" record in a new file at path.
func waitReopened(t *testing.T, d *daemon, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			for _, r := range readRecords(t, path, 0) {
				if r.str("msg") == "log file reopened" && r.str("file") == path {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"log file reopened\" record at %s after SIGUSR1", path)
		}
		select {
		case <-d.done:
			t.Fatalf("mtad exited after SIGUSR1: %s", d.stderr.String())
		case <-time.After(20 * time.Millisecond): // polling a file: no event to wait on
		}
	}
}

// A watchdog shorter than two scheduler ticks would have systemd kill a
// healthy daemon: mtad refuses to start and says which settings clash.
func TestSystemdWatchdogTooShort(t *testing.T) {
	t.Parallel()
	z := loopbacktest.StartDNS(t)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: 25}) // maintain_interval: 100ms
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, mtadBin, "--config", e.cfgPath, "--allow-root")
	cmd.Env = append(os.Environ(), "WATCHDOG_USEC=150000")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("mtad ended with %v, want exit code 1; output:\n%s", err, out)
	}
	if want := "delivery.maintain_interval (100ms) under half of it"; !strings.Contains(string(out), want) {
		t.Errorf("output %q does not say %q", out, want)
	}
}
