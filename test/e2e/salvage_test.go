package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestStartsOnDamagedSpool: a spool whose table file is damaged on disk
// does not stop the daemon: it salvages the store at start (one
// spool_salvaged record), delivers every message it copied, sends the
// senders of the damaged ones a DSN, and keeps the damaged store aside.
func TestStartsOnDamagedSpool(t *testing.T) {
	t.Parallel()
	const n = 300
	var open atomic.Bool // the sink defers every RCPT until the test opens it
	ty := newTally()
	z, _, port := remote(t, []string{"127.0.1.1"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{
			Rcpt: func(string) error {
				if !open.Load() {
					return loopbacktest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "not yet")
				}
				return nil
			},
			Data: ty.add,
		}
	})
	addMX(t, z, "rcpt.e2e", "127.0.1.1")
	addMX(t, z, "snd1.e2e", "127.0.1.1")
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	msgs := make([]testMsg, n)
	for i := range msgs {
		msgs[i] = testMsg{id: fmt.Sprintf("salvage-%d@e2e", i), from: "app@snd1.e2e", to: []string{fmt.Sprintf("u%d@rcpt.e2e", i)}}
	}

	d := start(t, e)
	in := inject(d.smtpAddr, 10, msgs, nil)
	if len(in.errs) > 0 || in.ackedCount() != n {
		t.Fatalf("injection: %d of %d acked, errors %v", in.ackedCount(), n, in.errs)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code %d: %s", code, d.output())
	}
	// A second start replays the WAL and flushes it to a table.
	d = start(t, e)
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code %d: %s", code, d.output())
	}
	tables, _ := filepath.Glob(filepath.Join(e.dir, "spool", "db", "*.sst"))
	var table string
	var size int64
	for _, p := range tables {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			table, size = p, fi.Size()
		}
	}
	if table == "" {
		t.Fatal("no table in the spool after two starts")
	}
	f, err := os.OpenFile(table, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("\xa5", 64)), size/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	d = start(t, e)
	rec := d.waitLog("spool_salvaged", 10*time.Second, func(r record) bool { return r.str("event") == "spool_salvaged" })
	// A DSN, or a damage notice when no recipient could be read.
	copied, quarantined, owed := rec.num("copied"), rec.num("quarantined"), rec.num("dsn_owed")+rec.num("notice_owed")
	t.Logf("spool_salvaged: %v", rec)
	if copied == n || copied < n/2 || quarantined != owed || !strings.HasPrefix(rec.str("damaged_dir"), filepath.Join(e.dir, "spool", "damaged-")) {
		t.Fatalf("spool_salvaged = %v; want some of %d copied, every quarantined message owed a DSN or a notice", rec, n)
	}
	if fi, err := os.Stat(filepath.Join(rec.str("damaged_dir"), "db")); err != nil || !fi.IsDir() {
		t.Fatalf("damaged store not kept: %v", err)
	}

	open.Store(true)
	countOf := func() (orig, dsns int) {
		for k, c := range ty.n {
			switch {
			case c == 0:
			case strings.HasPrefix(k, "salvage-"):
				orig++
			case strings.HasSuffix(k, " app@snd1.e2e") && (strings.Contains(k, ".dsn.") || strings.Contains(k, ".notice.")):
				dsns++
			}
		}
		return orig, dsns
	}
	ty.wait(t, 60*time.Second, fmt.Sprintf("%d salvaged messages and %d DSNs delivered", copied, owed), func() bool {
		orig, dsns := countOf()
		return orig >= copied && dsns >= owed
	})
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d; output: %s", code, d.output())
	}
	ty.mu.Lock()
	orig, dsns := countOf()
	ty.mu.Unlock()
	if orig != copied || dsns != owed {
		t.Errorf("delivered %d originals and %d DSNs, want %d and %d", orig, dsns, copied, owed)
	}
	if extra, keys := ty.dups(); extra != 0 {
		t.Errorf("%d duplicate deliveries: %v", extra, keys[:min(len(keys), 5)])
	}

	// A restart sends no DSN again and finds nothing to salvage.
	d = start(t, e)
	rec = d.waitLog("spool_recovered", 10*time.Second, func(r record) bool { return r.str("event") == "spool_recovered" })
	if rec.num("messages") != 0 {
		t.Errorf("after delivery, spool_recovered = %v; want no message", rec)
	}
	for _, r := range d.records() {
		if r.str("event") == "spool_salvaged" || r.str("event") == "dsn" {
			t.Errorf("second start logged %v", r)
		}
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code %d: %s", code, d.output())
	}
}

// TestSpoolDirMissing: a spool.dir whose parent does not exist either
// stops start-up with one line naming the key and a non-zero exit code.
func TestSpoolDirMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cfgOpts{dns: "127.0.0.1:1", port: 1})
	missing := filepath.Join(e.dir, "no", "spool")
	e.environ = []string{"MTAD_SPOOL_DIR=" + missing}
	cmd := exec.Command(mtadBin, "--config", e.cfgPath, "--allow-root")
	cmd.Env = append(os.Environ(), e.environ...)
	cmd.Dir = e.dir
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("mtad with a missing spool.dir: %v, output %q", err, out)
	}
	want := "mtad: spool.dir " + missing + ": does not exist (nor does its parent " + filepath.Dir(missing) + ")\n"
	if string(out) != want {
		t.Errorf("output %q, want the one line %q", out, want)
	}
}
