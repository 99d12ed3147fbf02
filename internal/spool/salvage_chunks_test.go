package spool

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// TestSalvageIntactBeforeDamage is the new-user report: damage in the
// block just after one message's last body chunk quarantined that
// message, intact, and told its sender it failed, while its recipient got
// it after a re-inject. A message whose every record reads is copied.
func TestSalvageIntactBeforeDamage(t *testing.T) {
	t.Parallel()
	const n = 6
	dir := t.TempDir()
	// A memtable holding all six bodies: one flush, one table.
	s := openTest(t, dir, Options{MemTableSize: 32 << 20})
	msgs := map[string]*Message{}
	bodies := map[string][]byte{}
	for i := 0; i < n; i++ {
		m := testMessage(i, 1)
		// Four chunks, the last nearly whole, as in the report (2,028,245
		// bytes: eight chunks): each chunk fills a block of its own, so the
		// damage below is in no block of the message before it.
		body := randomBody(100+i, 4*ChunkSize-1000)
		if err := s.Put(m, body); err != nil {
			t.Fatal(err)
		}
		msgs[m.ID], bodies[m.ID] = m, body
	}
	if err := s.withDB(func(db *pebble.DB) error { return db.Flush() }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The bodies in the order their chunks sit in a table (key order):
	// each one's first chunk found by its bytes, in the table holding
	// the most of them (pebble may flush more than one).
	type placed struct {
		id  string
		off int
	}
	tables, err := filepath.Glob(filepath.Join(dir, "db", "*.sst"))
	if err != nil {
		t.Fatal(err)
	}
	var table string
	var order []placed
	for _, tb := range tables {
		raw, err := os.ReadFile(tb)
		if err != nil {
			t.Fatal(err)
		}
		var here []placed
		for id, b := range bodies {
			if off := bytes.Index(raw, b[100:164]); off >= 0 {
				here = append(here, placed{id, off})
			}
		}
		if len(here) > len(order) {
			table, order = tb, here
		}
	}
	if len(order) < 3 {
		t.Fatalf("at most %d bodies found in one of %d tables, want 3", len(order), len(tables))
	}
	sort.Slice(order, func(i, j int) bool { return order[i].off < order[j].off })
	// Damage the first chunk of the third body: the second body's last
	// chunk is the key just before it.
	before, damaged := order[1].id, order[2].id
	corruptAt(t, table, int64(order[2].off+1000))

	cause := openOrRecover(t, dir)
	if !IsDamage(cause) {
		t.Fatalf("open+recover of a damaged table: %v, want a damage error", cause)
	}
	s2, st, err := Salvage(dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20, Logger: zap.NewNop()}, cause)
	if err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	defer s2.Close()
	t.Logf("salvage: %+v", st)
	if st.Copied != n-1 || st.Quarantined != 1 || st.DSNOwed != 1 {
		t.Errorf("copied %d, quarantined %d, dsn owed %d; want %d, 1, 1", st.Copied, st.Quarantined, st.DSNOwed, n-1)
	}
	got := map[string]*Message{}
	if _, err := s2.Recover(func(m *Message) error { got[m.ID] = m; return nil }); err != nil {
		t.Fatal(err)
	}
	if got[before] == nil {
		t.Fatalf("message %s, intact, just before the damage, not copied", before)
	}
	if got[damaged] != nil {
		t.Errorf("message %s, its first chunk damaged, copied", damaged)
	}
	for id, m := range got {
		mustEqualMessage(t, m, msgs[id])
		body, err := s2.Body(id)
		if err != nil || !bytes.Equal(body, bodies[id]) {
			t.Errorf("body of %s after salvage: %d bytes, err %v", id, len(body), err)
		}
	}
	owed, err := s2.SalvageOwed()
	if err != nil {
		t.Fatal(err)
	}
	if len(owed) != 1 || owed[0].ID != damaged {
		var ids []string
		for _, m := range owed {
			ids = append(ids, m.ID)
		}
		t.Errorf("DSNs owed for %v, want only %s", ids, damaged)
	}
	if _, err := os.Stat(filepath.Join(st.DamagedDir, "db")); err != nil {
		t.Errorf("damaged store not kept: %v", err)
	}
}

// A message whose sender reads but whose recipient records do not is
// owed a damage notice, not a DSN: a DSN needs a recipient to report on
// (found by the crash harness's salvage round, which then counted such
// senders as never told). One with a readable pending recipient is owed
// a DSN; SalvageHead reads the start of the body for the notice.
func TestSalvageUnreadableRecipients(t *testing.T) {
	t.Parallel()
	f := writeFlushed(t, 300)
	table := largestTable(t, f.dir)
	raw, err := os.ReadFile(table)
	if err != nil {
		t.Fatal(err)
	}
	// r/ is the last keyspace with data: the last recipient address in
	// the file is in a recipient record.
	at := bytes.LastIndex(raw, []byte("@example.net"))
	if at < 0 {
		t.Fatal("no recipient address in the table")
	}
	corruptAt(t, table, int64(max(0, at-32)))
	cause := openOrRecover(t, f.dir)
	if !IsDamage(cause) {
		t.Fatalf("open+recover with damaged recipients: %v, want a damage error", cause)
	}
	s, st, err := Salvage(f.dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20, Logger: zap.NewNop()}, cause)
	if err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	defer s.Close()
	t.Logf("salvage: %+v", st)
	if st.Quarantined == 0 || st.DSNOwed >= st.Quarantined {
		t.Errorf("quarantined %d, dsn owed %d: want some quarantined with no recipient to report on", st.Quarantined, st.DSNOwed)
	}
	if st.NoticeOwed == 0 || st.DSNOwed+st.NoticeOwed != st.Quarantined {
		t.Errorf("quarantined %d = dsn owed %d + notice owed %d? want every one owed one or the other, some a notice",
			st.Quarantined, st.DSNOwed, st.NoticeOwed)
	}
	owed, err := s.SalvageOwed()
	if err != nil {
		t.Fatal(err)
	}
	if len(owed) != st.DSNOwed+st.NoticeOwed {
		t.Errorf("%d owed, stats say %d DSNs and %d notices", len(owed), st.DSNOwed, st.NoticeOwed)
	}
	notices := 0
	for _, m := range owed {
		want := f.msgs[m.ID]
		if want == nil || m.Sender != want.Sender || m.MessageID != want.MessageID || m.Size != int64(len(f.bodies[m.ID])) {
			t.Fatalf("owed %s (%q, %q, %d bytes): not the envelope that was put", m.ID, m.Sender, m.MessageID, m.Size)
		}
		pending := 0
		for _, r := range m.Recipients {
			if r.State == Pending {
				pending++
			}
		}
		if pending > 0 {
			continue
		}
		// Owed a notice: fewer recipients read than were put, none
		// pending; the body (undamaged here) gives the notice its head.
		notices++
		if len(m.Recipients) >= len(want.Recipients) {
			t.Errorf("%s owed a notice with all %d recipients readable", m.ID, len(m.Recipients))
		}
		head, err := s.SalvageHead(m.ID, 512)
		if err != nil || !bytes.Equal(head, f.bodies[m.ID][:512]) {
			t.Errorf("SalvageHead(%s) = %d bytes, %v; want the body's first 512", m.ID, len(head), err)
		}
	}
	if notices != st.NoticeOwed {
		t.Errorf("%d owed with no pending recipient, stats say %d notices", notices, st.NoticeOwed)
	}
}
