package spool

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// quarantineKeys counts the records under q/.
func quarantineKeys(t *testing.T, s *Spool) int {
	t.Helper()
	n := 0
	err := s.withDB(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixQuarantine), UpperBound: prefixEnd(prefixQuarantine)})
		if err != nil {
			return err
		}
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		return it.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readAll(t *testing.T, rc io.ReadCloser) []byte {
	t.Helper()
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQuarantine: three messages damaged on disk the way a disk error
// would are set aside by Recover; the quarantine lists them with what is
// readable and why they are not; a message refuses to be restored until
// its records are sound again (nothing moves), then comes back whole —
// one-record and chunked bodies alike — and a delete leaves no q/ record.
func TestQuarantine(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	small, big := testMessage(1, 2), testMessage(2, 1)
	smallBody, bigBody := testBody(1, 700), testBody(2, 2*ChunkSize+100)
	dead := testMessage(3, 1)
	for _, c := range []struct {
		m *Message
		b []byte
	}{{small, smallBody}, {big, bigBody}, {dead, testBody(3, 10)}} {
		if err := s.Put(c.m, c.b); err != nil {
			t.Fatal(err)
		}
	}
	rcptRec := rawValue(t, s, rcptKey(small.ID, 1))
	flipBit(t, s, rcptKey(small.ID, 1))
	chunkRec := rawValue(t, s, chunkKey(big.bodyID, 1))
	flipBit(t, s, chunkKey(big.bodyID, 1))
	rawSet(t, s, metaKey(dead.ID), []byte("garbage"))
	if st, err := s.Recover(func(*Message) error { return nil }); err != nil || st.Quarantined != 3 {
		t.Fatalf("Recover: %+v, %v; want 3 quarantined", st, err)
	}

	page, err := s.QuarantineList(0, "")
	if err != nil || len(page.Items) != 3 || page.Next != "" {
		t.Fatalf("QuarantineList = %+v, %v; want 3 on one page", page, err)
	}
	list := page.Items
	// The list reads meta records only: the damaged recipient and chunk
	// are found by QuarantineGet.
	want := map[string]struct {
		meta   bool
		reason string
	}{small.ID: {true, "recipients: "}, big.ID: {true, "body: body chunk 1: "}, dead.ID: {false, "meta record: "}}
	for _, e := range list {
		w := want[e.ID]
		if e.Readable || e.Checked || e.MetaReadable != w.meta || (w.meta != (e.Reason == "")) || e.Rcpts != nil {
			t.Errorf("list entry %+v, want unchecked, meta readable %t", e, w.meta)
		}
		g, err := s.QuarantineGet(e.ID)
		if err != nil || g.Readable || !g.Checked || g.MetaReadable != w.meta || !strings.HasPrefix(g.Reason, w.reason) {
			t.Errorf("QuarantineGet = %+v, %v; want meta readable %t, reason %q…", g, err, w.meta, w.reason)
		}
	}
	if e := list[0]; e.ID != small.ID || e.Sender != small.Sender || e.Recipients != 2 || e.Size != 700 || e.MessageID != small.MessageID {
		t.Errorf("first entry %+v, want the small message's envelope", e)
	}

	// Unreadable: no body, no restore, and nothing moved.
	if _, err := s.QuarantineBody(small.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("QuarantineBody of an unreadable message: %v", err)
	}
	before := quarantineKeys(t, s)
	if _, err := s.QuarantineRestore(small.ID); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "recipients") {
		t.Fatalf("QuarantineRestore of an unreadable message: %v, want ErrCorrupt naming the recipients", err)
	}
	if n := quarantineKeys(t, s); n != before {
		t.Fatalf("a refused restore changed the quarantine: %d records, was %d", n, before)
	}
	if _, err := s.Get(small.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("live after a refused restore: %v", err)
	}

	// Mended (an operator's repair), each comes back whole.
	rawSet(t, s, quarantineKey(rcptKey(small.ID, 1)), rcptRec)
	rawSet(t, s, quarantineKey(chunkKey(big.bodyID, 1)), chunkRec)
	for _, c := range []struct {
		m    *Message
		body []byte
	}{{small, smallBody}, {big, bigBody}} {
		e, err := s.QuarantineGet(c.m.ID)
		if err != nil || !e.Readable || len(e.Rcpts) != len(c.m.Recipients) || e.Rcpts[0].Addr != c.m.Recipients[0].Addr {
			t.Fatalf("QuarantineGet(%s) = %+v, %v; want readable with its recipients", c.m.ID, e, err)
		}
		rc, err := s.QuarantineBody(c.m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, rc); !bytes.Equal(b, c.body) {
			t.Fatalf("quarantined body of %s: %d bytes, want %d", c.m.ID, len(b), len(c.body))
		}
		got, err := s.QuarantineRestore(c.m.ID)
		if err != nil {
			t.Fatal(err)
		}
		mustEqualMessage(t, got, c.m)
		live, err := s.Get(c.m.ID)
		if err != nil {
			t.Fatalf("Get after restore: %v", err)
		}
		mustEqualMessage(t, live, c.m)
		if b, err := s.Body(c.m.ID); err != nil || !bytes.Equal(b, c.body) {
			t.Fatalf("live body after restore: %d bytes, %v", len(b), err)
		}
		if _, err := s.QuarantineGet(c.m.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("still in quarantine after restore: %v", err)
		}
	}

	if err := s.QuarantineDelete(dead.ID); err != nil {
		t.Fatal(err)
	}
	if n := quarantineKeys(t, s); n != 0 {
		t.Fatalf("%d q/ records left after restores and delete", n)
	}
	for _, id := range []string{dead.ID, "01NOSUCH", "bad/id"} {
		if err := s.QuarantineDelete(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("QuarantineDelete(%q): %v, want ErrNotFound", id, err)
		}
		if _, err := s.QuarantineGet(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("QuarantineGet(%q): %v, want ErrNotFound", id, err)
		}
	}
	// The restored messages are what a restart recovers.
	var got []string
	if _, err := s.Recover(func(m *Message) error { got = append(got, m.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{small.ID, big.ID}) {
		t.Fatalf("recovered %v, want the two restored", got)
	}
}
