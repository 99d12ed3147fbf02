package spool

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestSalvageKeepsQuarantine: a salvage of a store that already has a
// quarantine (from Recover) and a DSN-owed marker copies both as they
// were: the same messages are listed with the same reasons, a chunked
// body's quarantined chunks come along (it is restorable once mended),
// and the DSN is still owed.
func TestSalvageKeepsQuarantine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	small, big, live := testMessage(1, 2), testMessage(2, 1), testMessage(3, 1)
	bigBody := testBody(2, 2*ChunkSize+100)
	for _, c := range []struct {
		m *Message
		b []byte
	}{{small, testBody(1, 700)}, {big, bigBody}, {live, testBody(3, 10)}} {
		if err := s.Put(c.m, c.b); err != nil {
			t.Fatal(err)
		}
	}
	flipBit(t, s, rcptKey(small.ID, 1))
	chunkRec := rawValue(t, s, chunkKey(big.bodyID, 1))
	flipBit(t, s, chunkKey(big.bodyID, 1))
	if st, err := s.Recover(func(*Message) error { return nil }); err != nil || st.Quarantined != 2 {
		t.Fatalf("Recover: %+v, %v; want 2 quarantined", st, err)
	}
	rawSet(t, s, []byte(prefixSalvageDSN+small.ID), nil)
	before, err := s.QuarantineList(0, "")
	if err != nil || len(before.Items) != 2 {
		t.Fatalf("QuarantineList = %+v, %v; want 2", before, err)
	}
	records := quarantineKeys(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, st, err := Salvage(dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20, Logger: zap.NewNop()}, errors.New("damage elsewhere"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	if st.Copied != 1 || st.KeptQuarantined != 2 || st.KeptDSNOwed != 1 {
		t.Errorf("stats %+v, want 1 copied, 2 kept quarantined, 1 DSN owed kept", st)
	}
	after, err := s2.QuarantineList(0, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(before.Items, after.Items, func(a, b QuarantineEntry) bool {
		return a.ID == b.ID && a.Reason == b.Reason && a.Sender == b.Sender && a.Recipients == b.Recipients && a.Size == b.Size
	}) {
		t.Errorf("quarantine after salvage %+v, want %+v", after.Items, before.Items)
	}
	if n := quarantineKeys(t, s2); n != records {
		t.Errorf("%d q/ records after salvage, were %d", n, records)
	}
	owed, err := s2.SalvageOwed()
	if err != nil || len(owed) != 1 || owed[0].ID != small.ID {
		t.Fatalf("SalvageOwed = %v, %v; want the small message", owed, err)
	}
	e, err := s2.QuarantineGet(big.ID)
	if err != nil || !strings.HasPrefix(e.Reason, "body: body chunk 1: ") {
		t.Fatalf("QuarantineGet(big) = %+v, %v; want the same damaged chunk", e, err)
	}
	rawSet(t, s2, quarantineKey(chunkKey(big.bodyID, 1)), chunkRec)
	if _, err := s2.QuarantineRestore(big.ID); err != nil {
		t.Fatalf("restore of the mended chunked message: %v", err)
	}
	if b, err := s2.Body(big.ID); err != nil || len(b) != len(bigBody) {
		t.Fatalf("body after restore: %d bytes, %v", len(b), err)
	}
}

// quarantineN puts n one-recipient messages and has Recover quarantine
// them all (each meta record garbled), returning their ids in order.
func quarantineN(t *testing.T, s *Spool, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		m := testMessage(100+i, 1)
		if err := s.Put(m, testBody(i, 20)); err != nil {
			t.Fatal(err)
		}
		rawSet(t, s, metaKey(m.ID), []byte("garbage"))
		ids = append(ids, m.ID)
	}
	if st, err := s.Recover(func(*Message) error { return nil }); err != nil || st.Quarantined != n {
		t.Fatalf("Recover: %+v, %v; want %d quarantined", st, err, n)
	}
	return ids
}

// TestQuarantineListPages: pages of limit entries follow one another by
// next, with none lost or repeated; the last page's next is ""; a limit
// of 0 is the default and one past the maximum is cut to it.
func TestQuarantineListPages(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ids := quarantineN(t, s, 7)
	var got []string
	after := ""
	for range 10 { // bounded: 7 entries, 3 a page
		p, err := s.QuarantineList(3, after)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Items) > 3 {
			t.Fatalf("page of %d, limit 3", len(p.Items))
		}
		for _, e := range p.Items {
			got = append(got, e.ID)
		}
		if p.Next == "" {
			break
		}
		if p.Next != p.Items[len(p.Items)-1].ID {
			t.Fatalf("next %q, want the page's last id", p.Next)
		}
		after = p.Next
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("pages gave %v, want %v", got, ids)
	}
	for _, limit := range []int{0, MaxQuarantinePage + 1} {
		p, err := s.QuarantineList(limit, "")
		if err != nil || len(p.Items) != 7 || p.Next != "" {
			t.Errorf("QuarantineList(%d) = %d items, next %q, %v; want all 7", limit, len(p.Items), p.Next, err)
		}
	}
	if p, err := s.QuarantineList(7, ""); err != nil || len(p.Items) != 7 || p.Next != "" {
		t.Errorf("exactly a page: %d items, next %q, %v; want 7 and no next", len(p.Items), p.Next, err)
	}
	if p, err := s.QuarantineList(3, ids[6]); err != nil || len(p.Items) != 0 || p.Next != "" {
		t.Errorf("after the last: %+v, %v; want an empty last page", p, err)
	}
}

// TestQuarantineDeleteOwedDSN: deleting a quarantined message still owed a
// DSN removes its s/ marker in the same batch (so no DSN is built later
// from records that are gone) and logs that the DSN will not be sent.
func TestQuarantineDeleteOwedDSN(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.WarnLevel)
	s := openTest(t, "", Options{Logger: zap.New(core)})
	m := testMessage(1, 2)
	if err := s.Put(m, testBody(1, 100)); err != nil {
		t.Fatal(err)
	}
	flipBit(t, s, rcptKey(m.ID, 0))
	if _, err := s.Recover(func(*Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	rawSet(t, s, []byte(prefixSalvageDSN+m.ID), nil)
	if owed, err := s.SalvageOwed(); err != nil || len(owed) != 1 {
		t.Fatalf("SalvageOwed = %v, %v; want one", owed, err)
	}
	if err := s.QuarantineDelete(m.ID); err != nil {
		t.Fatal(err)
	}
	if owed, err := s.SalvageOwed(); err != nil || len(owed) != 0 {
		t.Fatalf("SalvageOwed after delete = %v, %v; want none", owed, err)
	}
	err := s.withDB(func(db *pebble.DB) error {
		_, found, err := getCopy(db, []byte(prefixSalvageDSN+m.ID))
		if err == nil && found {
			err = errors.New("s/ marker left")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessageSnippet("owed a DSN").FilterField(zap.String("id", m.ID)).Len(); n != 1 {
		t.Errorf("%d warnings of the DSN not sent, want 1: %v", n, logs.All())
	}
}

// TestQuarantineRestoreLive: restoring an id that a live message has is
// refused with ErrLive (a conflict, not a store failure), nothing moved.
func TestQuarantineRestoreLive(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 1)
	if err := s.Put(m, testBody(1, 100)); err != nil {
		t.Fatal(err)
	}
	// A readable copy of its records under q/, as an operator's restore
	// of an older copy would meet.
	for _, k := range [][]byte{metaKey(m.ID), bodyKey(m.ID), rcptKey(m.ID, 0)} {
		rawSet(t, s, quarantineKey(k), rawValue(t, s, k))
	}
	before := quarantineKeys(t, s)
	_, err := s.QuarantineRestore(m.ID)
	if !errors.Is(err, ErrLive) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("QuarantineRestore of a live id: %v, want ErrLive", err)
	}
	if n := quarantineKeys(t, s); n != before {
		t.Fatalf("a refused restore moved records: %d, was %d", n, before)
	}
}
