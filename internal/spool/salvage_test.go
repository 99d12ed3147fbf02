package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// randomBody is n bytes that do not compress, so each message's body
// takes its own room in the table's blocks.
func randomBody(i, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)}))
	b := make([]byte, n)
	for j := range b {
		b[j] = byte('a' + r.IntN(26))
	}
	return b
}

type salvageFixture struct {
	dir    string
	msgs   map[string]*Message
	bodies map[string][]byte
}

// writeFlushed puts n messages of 3 recipients each (one recipient of
// every third message delivered, so states must survive), one of them with
// a chunked body, flushes the memtable to a table and closes the spool.
func writeFlushed(t *testing.T, n int) salvageFixture {
	t.Helper()
	f := salvageFixture{dir: t.TempDir(), msgs: map[string]*Message{}, bodies: map[string][]byte{}}
	s := openTest(t, f.dir, Options{})
	for i := 0; i < n; i++ {
		m := testMessage(i, 3)
		size := 1500
		if i == n/2 {
			size = ChunkSize + 1000
		}
		body := randomBody(i, size)
		if err := s.Put(m, body); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			r := m.Recipients[1]
			r.State, r.Attempts, r.LastCode, r.LastText = Delivered, 1, 250, "ok"
			r.UpdatedAt = time.Unix(1700001000, 0)
			if err := s.Update(m.ID, map[int]Recipient{1: r}, false); err != nil {
				t.Fatal(err)
			}
			m.Recipients[1] = r
		}
		f.msgs[m.ID], f.bodies[m.ID] = m, body
	}
	if err := s.withDB(func(db *pebble.DB) error { return db.Flush() }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

// largestTable is the path of the biggest .sst file in the store.
func largestTable(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	var best string
	var size int64
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".sst") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > size {
			best, size = filepath.Join(dir, "db", e.Name()), fi.Size()
		}
	}
	if best == "" {
		t.Fatal("no table after the flush")
	}
	return best
}

// corruptAt overwrites 64 bytes of file at off with junk and syncs it.
func corruptAt(t *testing.T, file string, off int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), off); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		t.Fatal(err)
	}
}

// openOrRecover opens dir and recovers it, as the daemon does, and returns
// the first error.
func openOrRecover(t *testing.T, dir string) error {
	t.Helper()
	s, err := Open(dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		return err
	}
	_, err = s.Recover(func(*Message) error { return nil })
	return errors.Join(err, s.Close())
}

func TestSalvageDamagedTable(t *testing.T) {
	t.Parallel()
	const n = 300
	f := writeFlushed(t, n)
	table := largestTable(t, f.dir)
	fi, err := os.Stat(table)
	if err != nil {
		t.Fatal(err)
	}
	corruptAt(t, table, fi.Size()/2)

	cause := openOrRecover(t, f.dir)
	if !IsDamage(cause) {
		t.Fatalf("open+recover of a damaged table: %v, want a damage error", cause)
	}
	s, st, err := Salvage(f.dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20, Logger: zap.NewNop()}, cause)
	if err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	defer s.Close()
	t.Logf("salvage: %+v", st)
	if st.Quarantined+st.Orphans+st.DamagedRanges == 0 {
		t.Error("salvage found no damage")
	}
	if fi, err := os.Stat(filepath.Join(st.DamagedDir, "db")); err != nil || !fi.IsDir() {
		t.Errorf("damaged store not kept in %s: %v", st.DamagedDir, err)
	}
	// One 64-byte smear damages one or two blocks (≈4 KB): a handful of
	// 1.5 KB bodies, not the store.
	if lost := n - st.Copied; lost == 0 || lost > 12 {
		t.Errorf("%d of %d messages not copied, want 1..12", lost, n)
	}

	got := map[string]*Message{}
	rs, err := s.Recover(func(m *Message) error { got[m.ID] = m; return nil })
	if err != nil {
		t.Fatalf("Recover after salvage: %v", err)
	}
	if rs.Messages != st.Copied || rs.Quarantined != 0 {
		t.Errorf("recover after salvage: %+v, want %d messages, none quarantined", rs, st.Copied)
	}
	for id, m := range got {
		want, ok := f.msgs[id]
		if !ok {
			t.Fatalf("recovered %s, which was never put", id)
		}
		mustEqualMessage(t, m, want)
		body, err := s.Body(id)
		if err != nil || !bytes.Equal(body, f.bodies[id]) {
			t.Fatalf("body of %s after salvage: %d bytes, err %v", id, len(body), err)
		}
	}

	// Every message not copied has a record in the damaged range: reading
	// it whole from the damaged store fails.
	old, err := openDamaged(filepath.Join(st.DamagedDir, "db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	for id := range f.msgs {
		if got[id] != nil {
			continue
		}
		var scratch SalvageStats
		v, found, gerr := getCopy(old, metaKey(id))
		if gerr == nil && found {
			if _, _, whole, err := readWhole(old, id, v, &scratch); err != nil || whole {
				t.Errorf("message %s not copied, yet it reads whole from the damaged store (err %v)", id, err)
			}
		}
	}

	q, err := s.Quarantined()
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != st.Quarantined || st.Copied+st.Quarantined+st.Orphans < n-4 {
		t.Errorf("quarantined %d (%v), stats %+v", len(q), q, st)
	}
	owed, err := s.SalvageOwed()
	if err != nil {
		t.Fatal(err)
	}
	if len(owed) != st.DSNOwed || st.DSNOwed != st.Quarantined {
		t.Errorf("%d owed a DSN, stats %+v (every test sender is non-null)", len(owed), st)
	}
	for _, m := range owed {
		want := f.msgs[m.ID]
		if want == nil || m.Sender != want.Sender {
			t.Fatalf("owed %s from %q, not a message that was put", m.ID, m.Sender)
		}
		if err := s.SalvageDSNSent(m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if owed, err := s.SalvageOwed(); err != nil || len(owed) != 0 {
		t.Errorf("after SalvageDSNSent still owed: %d, %v", len(owed), err)
	}
}

// TestSalvageWalkSkipsDamage: the walk over a keyspace with a damaged block
// in the middle reads every key outside it, in order, and skips it.
func TestSalvageWalkSkipsDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := pebble.Open(filepath.Join(dir, "db"), &pebble.Options{FormatMajorVersion: pebble.FormatNewest})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := 0; i < n; i++ {
		k := binary.BigEndian.AppendUint32([]byte("k/"), uint32(i))
		if err := db.Set(k, randomBody(i, 200), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(db.Flush(), db.Close()); err != nil {
		t.Fatal(err)
	}
	table := largestTable(t, dir)
	fi, _ := os.Stat(table)
	corruptAt(t, table, fi.Size()/3)
	old, err := openDamaged(filepath.Join(dir, "db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	var keys []uint32
	skips, err := walk(old, []byte("k/"), prefixEnd("k/"), false, func(k, v []byte) error {
		keys = append(keys, binary.BigEndian.Uint32(k[2:]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if skips == 0 || len(keys) == n || len(keys) < n-60 {
		t.Fatalf("walk read %d of %d keys with %d skips", len(keys), n, skips)
	}
	for i := 1; i < len(keys); i++ {
		if keys[i] <= keys[i-1] {
			t.Fatalf("keys out of order: %d after %d", keys[i], keys[i-1])
		}
	}
	// The gap is one run: the damaged block's keys.
	gaps := 0
	for i := 1; i < len(keys); i++ {
		if keys[i] != keys[i-1]+1 {
			gaps++
		}
	}
	if keys[0] != 0 || keys[len(keys)-1] != n-1 || gaps != 1 {
		t.Fatalf("keys %d..%d with %d gaps, want 0..%d with one gap", keys[0], keys[len(keys)-1], gaps, n-1)
	}
}

func TestCheckDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	missing := filepath.Join(base, "no", "spool")
	err := CheckDir(missing)
	if err == nil || err.Error() != "spool.dir "+missing+": does not exist (nor does its parent "+filepath.Dir(missing)+")" {
		t.Errorf("missing dir: %v", err)
	}
	fresh := filepath.Join(base, "spool")
	if err := CheckDir(fresh); err != nil {
		t.Errorf("dir whose parent exists: %v", err)
	}
	if fi, err := os.Stat(fresh); err != nil || !fi.IsDir() {
		t.Errorf("dir not created: %v", err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file: %v", err)
	}

	ro := filepath.Join(base, "ro")
	if err := os.Mkdir(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	if f, err := os.CreateTemp(ro, "probe"); err == nil {
		// root (CAP_DAC_OVERRIDE) writes through mode bits: a read-only
		// file system stops it, as a spool on a volume mounted read-only.
		_ = f.Close()
		_ = os.Remove(f.Name())
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro).CombinedOutput(); err != nil {
			t.Skipf("skipping the read-only check: root writes into a 0555 directory and mounting a read-only tmpfs failed: %v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("umount", ro).Run() })
		err = CheckDir(ro)
		if err == nil || err.Error() != "spool.dir "+ro+": not writable: read-only file system" {
			t.Errorf("read-only file system: %v", err)
		}
		return
	}
	err = CheckDir(ro)
	if err == nil || err.Error() != "spool.dir "+ro+": not writable: permission denied" {
		t.Errorf("read-only dir: %v", err)
	}
}

// newestWAL is the path of the newest WAL file of the store.
func newestWAL(t *testing.T, dir string) string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "db", "*.log"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("no WAL in %s: %v", dir, err)
	}
	return logs[len(logs)-1] // names are zero-padded numbers: sorted by age
}

// startCount opens and recovers dir as the daemon does (salvaging on a
// damage error) and returns the ids of the messages recovered.
func startCount(t *testing.T, dir string) map[string]bool {
	t.Helper()
	opts := Options{MemTableSize: 4 << 20, CacheSize: 4 << 20}
	got := map[string]bool{}
	collect := func(m *Message) error { got[m.ID] = true; return nil }
	s, err := Open(dir, opts)
	if err == nil {
		if _, err = s.Recover(collect); err != nil {
			_ = s.Close()
		}
	}
	if err != nil {
		if !IsDamage(err) {
			t.Fatalf("start: %v, not a damage error", err)
		}
		clear(got)
		var st SalvageStats
		if s, st, err = Salvage(dir, opts, err); err != nil {
			t.Fatalf("salvage: %v", err)
		}
		t.Logf("salvaged: %+v", st)
		if _, err := s.Recover(collect); err != nil {
			t.Fatalf("recover after salvage: %v", err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestStartWithDamagedWALTail: a WAL whose tail was torn (cut inside the
// last record, or junk after it, as a crash in the middle of a write
// leaves it) or garbled starts, and holds every message whose record is
// whole: at most the last one is lost.
func TestStartWithDamagedWALTail(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		damage  func(t *testing.T, wal string, size int64)
		maxLost int
	}{
		{"junk after the last record", func(t *testing.T, wal string, size int64) {
			f, err := os.OpenFile(wal, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(bytes.Repeat([]byte{0x5A}, 3000)); err != nil {
				t.Fatal(err)
			}
			if err := errors.Join(f.Sync(), f.Close()); err != nil {
				t.Fatal(err)
			}
		}, 0},
		{"cut inside the last record", func(t *testing.T, wal string, size int64) {
			if err := os.Truncate(wal, size-700); err != nil {
				t.Fatal(err)
			}
		}, 1},
		{"last record garbled", func(t *testing.T, wal string, size int64) {
			corruptAt(t, wal, size-700)
		}, 1},
		// Salvage cuts the WAL before the damage: what follows is lost,
		// what precedes it is kept.
		{"record in the middle garbled", func(t *testing.T, wal string, size int64) {
			corruptAt(t, wal, size/2)
		}, 26},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := openTest(t, dir, Options{})
			var ids []string
			for i := 0; i < 50; i++ {
				m := testMessage(i, 2)
				if err := s.Put(m, randomBody(i, 1500)); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, m.ID)
			}
			wal := crashCopy(t, s) // as after kill -9: the WAL is not closed
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			w := newestWAL(t, wal)
			fi, err := os.Stat(w)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, w, fi.Size())
			got := startCount(t, wal)
			lost := 0
			for i, id := range ids {
				if !got[id] {
					lost++
					if i < len(ids)-tc.maxLost {
						t.Errorf("message %d of %d (%s) lost", i, len(ids), id)
					}
				}
			}
			t.Logf("%d of %d lost (WAL %d bytes)", lost, len(ids), fi.Size())
			for i := 1; i < len(ids); i++ {
				if got[ids[i]] && !got[ids[i-1]] {
					t.Errorf("message %d lost, yet %d after it kept: the loss is not a tail", i-1, i)
				}
			}
			if lost > tc.maxLost {
				t.Errorf("%d messages lost, want at most %d", lost, tc.maxLost)
			}
		})
	}
}

// TestCutDamagedWAL: a WAL with an unreadable record is cut before it, the
// original kept beside it, and the store opens with the records before it.
func TestCutDamagedWAL(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	for i := 0; i < 40; i++ {
		if err := s.Put(testMessage(i, 2), randomBody(i, 1500)); err != nil {
			t.Fatal(err)
		}
	}
	dir := crashCopy(t, s)
	w := newestWAL(t, dir)
	fi, err := os.Stat(w)
	if err != nil {
		t.Fatal(err)
	}
	corruptAt(t, w, fi.Size()/2)
	cut, err := cutDamagedWALs(filepath.Join(dir, "db"), zap.NewNop())
	if err != nil || cut != 1 {
		t.Fatalf("cut %d WALs, err %v; want 1", cut, err)
	}
	if orig, err := os.Stat(w + ".damaged"); err != nil || orig.Size() != fi.Size() {
		t.Fatalf("original WAL not kept whole: %v", err)
	}
	if now, err := os.Stat(w); err != nil || now.Size() >= fi.Size()/2 || now.Size() == 0 {
		t.Fatalf("WAL after the cut: %v, %v (was %d bytes, damaged at %d)", now, err, fi.Size(), fi.Size()/2)
	}
	db, err := openDamaged(filepath.Join(dir, "db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	metas := 0
	if _, err := walk(db, []byte(prefixMeta), prefixEnd(prefixMeta), true, func(k, v []byte) error { metas++; return nil }); err != nil {
		t.Fatal(err)
	}
	if metas == 0 || metas >= 40 {
		t.Fatalf("%d messages before the damage, want some and fewer than 40", metas)
	}
}

// TestSalvageCutShortIsDoneAgain: a salvage stopped after the damaged
// store was moved and part of the copy made (a crash) is seen at the next
// start and done again from the same damaged store, the partial copy
// dropped; a finished one leaves no trace.
func TestSalvageCutShortIsDoneAgain(t *testing.T) {
	t.Parallel()
	const n = 100
	f := writeFlushed(t, n)
	table := largestTable(t, f.dir)
	fi, err := os.Stat(table)
	if err != nil {
		t.Fatal(err)
	}
	corruptAt(t, table, fi.Size()/4) // among the small bodies: a damaged 256 KiB chunk costs seconds a read
	if SalvageUnfinished(f.dir) {
		t.Fatal("salvage unfinished before any salvage")
	}

	// The first salvage: moved aside, one message copied, then the crash.
	damaged, err := moveAside(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	partial := openTest(t, f.dir, Options{})
	stray := testMessage(9999, 1)
	if err := partial.Put(stray, []byte("partial copy\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := partial.Close(); err != nil {
		t.Fatal(err)
	}
	if !SalvageUnfinished(f.dir) {
		t.Fatal("a salvage cut short is not seen")
	}

	s, st, err := Salvage(f.dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20}, errors.New("cut short"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st.DamagedDir != damaged {
		t.Errorf("resumed from %s, want the first salvage's %s", st.DamagedDir, damaged)
	}
	if SalvageUnfinished(f.dir) {
		t.Error("salvage marker left after a finished salvage")
	}
	if _, err := s.Get(stray.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("the partial copy's message is still there: %v", err)
	}
	got := 0
	if _, err := s.Recover(func(m *Message) error {
		if f.msgs[m.ID] == nil {
			t.Errorf("recovered %s, never put", m.ID)
		}
		got++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got != st.Copied || got == 0 || n-got > 12 {
		t.Errorf("recovered %d, copied %d, of %d", got, st.Copied, n)
	}
	if dirs, _ := filepath.Glob(filepath.Join(f.dir, "damaged-*")); len(dirs) != 1 {
		t.Errorf("damaged dirs %v, want one", dirs)
	}
}

// TestBouncedReadable: a quarantined message whose readable recipient
// bounced (kept for its DSN) is owed one.
func TestBouncedReadable(t *testing.T) {
	t.Parallel()
	id := "01M8TEST00000000000000000"
	rec := func(i int, st State) kv {
		return kv{k: append(rcptPrefix(id), byte('0'+i)), v: encodeRecipient(&Recipient{Addr: "x@d.test", State: st})}
	}
	for _, tc := range []struct {
		states []State
		want   bool
	}{
		{[]State{Delivered}, false},
		{[]State{Delivered, Bounced}, true},
		{[]State{Expired}, true},
		{[]State{Pending}, false},
		{nil, false},
	} {
		var recs []kv
		for i, st := range tc.states {
			recs = append(recs, rec(i, st))
		}
		if got := bouncedReadable(recs, id); got != tc.want {
			t.Errorf("states %v: %v, want %v", tc.states, got, tc.want)
		}
	}
}
