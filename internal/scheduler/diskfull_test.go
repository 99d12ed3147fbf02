package scheduler

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted
// at cleanup (registered first, so after the spool is closed). It skips
// the test when mounting is not permitted.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("tmpfs: Linux only")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("mount tmpfs not permitted (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDSNOwedOnFullDisk: on a real tmpfs filled past the spool's reserve,
// a bounce's DSN cannot be spooled. The message keeps its final state, and
// the DSN is retried with back-off: over 60 ticks a second apart it is
// tried a handful of times (1, 2, 4, 8, ... seconds apart), not 60, each
// attempt logged. When a filler file is deleted the next due retry spools
// it, the DSN is delivered and the message leaves the spool.
func TestDSNOwedOnFullDisk(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t, 64<<20)
	const reserve = 16 << 20
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{MemTableSize: 2 << 20, CacheSize: 2 << 20, MinFreeBytes: reserve})
	if err != nil {
		t.Fatal(err)
	}
	sinks, port := loopbacktest.StartSinks(t, []string{ip(53, 10), ip(53, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(string) error { return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user") }}
	})
	h := newHarness(t, port, func(o *Options) {
		if err := o.Spool.(*spool.Spool).Close(); err != nil {
			t.Fatal(err)
		}
		o.Spool = sp
		o.MaintainInterval = time.Second
	})
	h.sp = sp // closed by the harness's cleanup, before the unmount
	h.mxFor("dest.test", ip(53, 10))
	h.mxFor("origin.test", ip(53, 11))
	m := &spool.Message{Sender: "alice@origin.test", Received: h.clock.Now(), Recipients: []spool.Recipient{{Addr: "nobody@dest.test"}}}
	if err := h.sp.Put(m, []byte("From: alice@origin.test\r\nSubject: full\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}

	// Fill the disk to half the reserve, then let the message bounce.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, free-reserve/2), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := h.sp.Put(&spool.Message{Sender: "x@origin.test", Recipients: []spool.Recipient{{Addr: "y@dest.test"}}}, []byte("x")); !errors.Is(err, spool.ErrNoSpace) {
		t.Fatalf("Put on the filled disk: %v, want ErrNoSpace", err)
	}
	if err := h.s.Submit(m); err != nil {
		t.Fatal(err)
	}
	failed := 0 // "spooling a DSN failed" records so far
	drain := func() {
		for {
			select {
			case e := <-h.events:
				if e.name == "spooling a DSN failed; it is retried" {
					failed++
				}
			default:
				return
			}
		}
	}
	if e := h.next(outcomeEvents...); e.name != "bounced" {
		t.Fatalf("outcome %s %v", e.name, e.fields)
	}
	const ticks = 60
	for range ticks {
		h.s.Tick(h.clock.Advance(time.Second))
		drain()
		got, err := h.sp.Get(m.ID)
		if err != nil {
			t.Fatalf("message left the spool before its DSN was written: %v", err)
		}
		if got.Recipients[0].State != spool.Bounced {
			t.Fatalf("kept recipient %+v, want bounced", got.Recipients[0])
		}
	}
	// The bounce's own attempt, then retries at 1, 2, 4, 8, 16, 32 s
	// (give or take the tick the back-off started on).
	if failed < 3 || failed > 8 {
		t.Fatalf("%d attempts to spool the DSN in %d ticks, want a back-off's handful (3-8)", failed, ticks)
	}
	t.Logf("%d attempts in %d ticks", failed, ticks)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	h.s.Tick(h.clock.Advance(owedMaxWait))
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("DSN outcome %s %v", e.name, e.fields)
	}
	h.gone(m.ID)
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil || len(p.Recipients) != 1 || p.Recipients[0].Get("Final-Recipient") != "rfc822; nobody@dest.test" {
		t.Fatalf("DSN %+v, %v", p, err)
	}
}
