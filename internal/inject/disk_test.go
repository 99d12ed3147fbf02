package inject

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/sys/unix"

	"github.com/mtad/mtad/internal/spool"
)

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory and
// unmounts it at cleanup (registered first, so it runs after the spool
// is closed). It skips the test when mounting is not permitted.
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

// diskClient sends messages over one session until refused or max, and
// returns the queue ids it got 250 for and the refusal.
func diskClient(addr string, n, max int, body string) (ids []string, err error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return nil, err
	}
	for i := range max {
		id, err := send(c, "app@origin.test", []string{fmt.Sprintf("c%d-%d@dest.test", n, i)}, body, nil)
		if err != nil {
			return ids, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// TestDiskFullUnderInjection fills a 64 MiB tmpfs spool from eight SMTP
// clients at once. Each client is answered 452 4.3.1 once the free space
// falls below the spool's reserve (never a 5xx, never another 4xx, never
// a hang: every client ends); a new session is refused the same way while
// the disk stays full; when a filler file is deleted injection resumes by
// itself; and after the spool is closed and opened again every message
// that got a 250 is there.
func TestDiskFullUnderInjection(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t, 64<<20)
	// The filler takes most of the disk so that injection fills the rest
	// quickly; deleting it is "space returns".
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 32<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	sdir := filepath.Join(dir, "spool")
	sopts := spool.Options{MemTableSize: 2 << 20, CacheSize: 2 << 20, MinFreeBytes: 12 << 20}
	sp, err := spool.Open(sdir, sopts)
	if err != nil {
		t.Fatal(err)
	}
	spClosed := false
	t.Cleanup(func() {
		if !spClosed {
			sp.Close()
		}
	})
	srv, err := New(Options{Listen: []string{"127.0.0.1:0"}, RelayNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname: "mx.test", MaxMessageSize: 1 << 20, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second,
		DataTimeout: 20 * time.Second}, sp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
	t.Cleanup(stop)
	addr := srv.Addrs()[0].String()

	// 88 KiB bodies: 20 MiB of room above the reserve (less pebble's WAL
	// and flushed tables, which hold the same bytes twice) is about a
	// hundred of them; each client is bounded at 1000, far past what fits.
	// Random base64, as pebble compresses its blocks: a body of repeated
	// letters would take almost no room.
	var b strings.Builder
	b.WriteString("Subject: fill\r\n\r\n")
	line := make([]byte, 57)
	for range 1150 {
		rand.Read(line)
		b.WriteString(base64.StdEncoding.EncodeToString(line))
		b.WriteString("\r\n")
	}
	body := b.String()
	const clients = 8
	var (
		mu       sync.Mutex
		accepted []string
		refusals []error
		wg       sync.WaitGroup
	)
	for n := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := diskClient(addr, n, 1000, body)
			mu.Lock()
			defer mu.Unlock()
			accepted = append(accepted, ids...)
			refusals = append(refusals, err)
		}()
	}
	wg.Wait()
	if len(accepted) == 0 {
		t.Fatal("nothing accepted before the disk filled")
	}
	for _, err := range refusals {
		wantSMTPError(t, "a client on a full disk", err, 452, "4.3.1")
	}
	t.Logf("%d messages accepted before the disk filled", len(accepted))

	// Still full: a new session is refused the same way, and the
	// listener stays up; HTTP injection gets 503 with a JSON error. The
	// free space hovers at the reserve (pebble deletes obsolete WALs and
	// tables, refused bodies are dropped), so a second filler first
	// leaves 4 MiB free, well under it.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free > 4<<20 {
		if err := os.WriteFile(filepath.Join(dir, "filler2"), make([]byte, free-4<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err = diskClient(addr, 99, 1, body)
	wantSMTPError(t, "a new session on a full disk", err, 452, "4.3.1")
	he := startHTTP(t, sp)
	const req = `{"from": "app@example.com", "recipients": ["a@dest.test"], "content": "From: app@example.com\nSubject: http\n\nbody\n"}`
	if code, out := he.post(t, req, ""); code != http.StatusServiceUnavailable || out["error"] != "spool full; retry later" {
		t.Fatalf("HTTP on a full disk: %d %v", code, out)
	}

	// Space returns: injection resumes by itself, with no restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	got, err := diskClient(addr, 100, 3, body)
	if err != nil {
		t.Fatalf("injection after space returned: %v", err)
	}
	accepted = append(accepted, got...)
	code, out := he.post(t, req, "")
	if code != http.StatusAccepted {
		t.Fatalf("HTTP after space returned: %d %v", code, out)
	}
	accepted = append(accepted, ids(t, out)...)
	he.srv.Shutdown(context.Background())

	// Nothing acknowledged is lost: every 250'd id is in the spool
	// after a restart.
	stop()
	spClosed = true
	if err := sp.Close(); err != nil {
		t.Fatalf("spool close: %v", err)
	}
	sp2, err := spool.Open(sdir, sopts)
	if err != nil {
		t.Fatalf("spool reopen: %v", err)
	}
	defer sp2.Close()
	have := map[string]bool{}
	if _, err := sp2.Recover(func(m *spool.Message) error {
		have[m.ID] = true
		return nil
	}); err != nil {
		t.Fatalf("recover: %v", err)
	}
	var lost []string
	for _, id := range accepted {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged messages lost, e.g. %s", len(lost), len(accepted), lost[0])
	}
	if len(have) != len(accepted) {
		t.Errorf("%d messages in the spool, %d acknowledged: a refused message was kept", len(have), len(accepted))
	}
}
