package inject

import (
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mtad/mtad/internal/spool"
)

// TestLowSpaceRefusedAtMail: with spool.min_free above the disk's free
// space (1<<62 bytes: more than any disk has), MAIL is answered 452 4.3.1
// before any RCPT or DATA, in every session, and an HTTP request gets 503;
// the spool logs its state once as a warning and the refusals add no
// warning or error line, only a "rejected" record each.
func TestLowSpaceRefusedAtMail(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 2 << 20, CacheSize: 2 << 20,
		MinFreeBytes: 1 << 62, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	e := startEnv(t, sp, func(o *Options) { o.Logger = zap.New(core) })

	const sessions, tries = 3, 2
	for range sessions {
		rc := e.raw(t, "127.0.0.1")
		if r := rc.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") {
			t.Fatalf("EHLO: %q", r)
		}
		for range tries {
			if r := rc.cmd("MAIL FROM:<app@origin.test>"); !strings.HasPrefix(r, "452 4.3.1 ") {
				t.Fatalf("MAIL below spool.min_free: %q, want 452 4.3.1", r)
			}
		}
		// No transaction was opened: RCPT is out of sequence.
		if r := rc.cmd("RCPT TO:<u@dest.test>"); !strings.HasPrefix(r, "503 5.5.1 ") {
			t.Fatalf("RCPT after a refused MAIL: %q", r)
		}
		if r := rc.cmd("QUIT"); !strings.HasPrefix(r, "221") {
			t.Fatalf("QUIT: %q", r)
		}
	}
	he := startHTTP(t, sp, func(o *HTTPOptions) { o.Logger = zap.New(core) })
	const req = `{"from": "app@example.com", "recipients": ["a@dest.test"], "content": "Subject: x\n\nbody\n"}`
	if code, out := he.post(t, req, ""); code != http.StatusServiceUnavailable || out["error"] != "spool full; retry later" {
		t.Fatalf("HTTP below spool.min_free: %d %v", code, out)
	}

	var warns []string
	for _, le := range logs.All() {
		if le.Level >= zapcore.WarnLevel {
			warns = append(warns, le.Message)
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "spool.min_free") {
		t.Fatalf("warning and error lines %q, want the spool's one low-space warning", warns)
	}
	rejected := 0
	for _, le := range logs.All() {
		f := le.ContextMap()
		if f["event"] == "rejected" && f["command"] == "MAIL" && f["code"] == int64(452) && f["enhanced_code"] == "4.3.1" {
			rejected++
		}
	}
	if rejected != sessions*tries {
		t.Errorf("%d rejected MAIL records, want %d", rejected, sessions*tries)
	}
	if got := e.stored(t); len(got) != 0 {
		t.Errorf("messages stored below spool.min_free: %v", got)
	}
}
