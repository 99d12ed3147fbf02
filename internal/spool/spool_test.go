package spool

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openTest opens a spool in a fresh directory and closes it at the end.
func openTest(t testing.TB, dir string, opts Options) *Spool {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 4 << 20 // keep tests light on memory
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 4 << 20
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func testMessage(i, nrcpt int) *Message {
	m := &Message{
		Sender:    fmt.Sprintf("sender%d@example.org", i),
		Received:  time.Unix(1700000000+int64(i), 123456789),
		ClientIP:  "127.0.0.1",
		Helo:      "client.example.org",
		AuthUser:  "user",
		MessageID: fmt.Sprintf("<%d@example.org>", i),
		Group:     "bulk",
		Priority:  i % 3,
		EightBit:  i%2 == 0,
	}
	for r := 0; r < nrcpt; r++ {
		m.Recipients = append(m.Recipients, Recipient{Addr: fmt.Sprintf("rcpt%d-%d@example.net", i, r)})
	}
	return m
}

func testBody(i, size int) []byte {
	b := bytes.Repeat([]byte(fmt.Sprintf("line %d of a test body\r\n", i)), size/20+1)
	return b[:size]
}

// mustEqualMessage compares two messages, times by instant.
func mustEqualMessage(t *testing.T, got, want *Message) {
	t.Helper()
	norm := func(m *Message) Message {
		c := *m
		c.Received = time.Unix(0, c.Received.UnixNano())
		c.Recipients = slices.Clone(c.Recipients)
		for i := range c.Recipients {
			r := &c.Recipients[i]
			if !r.NextAttempt.IsZero() {
				r.NextAttempt = time.Unix(0, r.NextAttempt.UnixNano())
			}
			if !r.UpdatedAt.IsZero() {
				r.UpdatedAt = time.Unix(0, r.UpdatedAt.UnixNano())
			}
		}
		return c
	}
	if g, w := norm(got), norm(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("message differs:\n got %+v\nwant %+v", g, w)
	}
}

func TestPutGetBodyRoundTrip(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 3)
	m.SMTPUTF8 = true
	m.DSNFor = "01ABC"
	m.Recipients[1].NextAttempt = time.Now().Add(time.Hour)
	body := testBody(1, 5000)
	if err := s.Put(m, body); err != nil {
		t.Fatal(err)
	}
	if len(m.ID) != idLen {
		t.Fatalf("Put set ID %q, want %d chars", m.ID, idLen)
	}
	if m.Size != int64(len(body)) {
		t.Fatalf("Put set Size %d, want %d", m.Size, len(body))
	}
	got, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualMessage(t, got, m)
	gotBody, err := s.Body(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotBody, body) {
		t.Fatal("body differs")
	}
	// An empty body is a body.
	m2 := testMessage(2, 1)
	if err := s.Put(m2, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Body(m2.ID); err != nil || len(b) != 0 {
		t.Fatalf("empty body: %q, %v", b, err)
	}
}

func TestPutRefusesBadInput(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	if err := s.Put(&Message{}, []byte("x")); err == nil {
		t.Fatal("Put without recipients succeeded")
	}
	m := testMessage(1, 1)
	m.ID = "has/slash"
	if err := s.Put(m, []byte("x")); err == nil {
		t.Fatal("Put with a / in the id succeeded")
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	id := s.NewID()
	if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get: %v, want ErrNotFound", err)
	}
	if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Body: %v, want ErrNotFound", err)
	}
	if err := s.Delete(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete: %v, want ErrNotFound", err)
	}
	if err := s.Update(id, map[int]Recipient{0: {State: Delivered}}, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update: %v, want ErrNotFound", err)
	}
}

func TestUpdateRecipientLeavesBody(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 3)
	body := testBody(1, 7000)
	if err := s.Put(m, body); err != nil {
		t.Fatal(err)
	}
	bodyBefore := rawValue(t, s, bodyKey(m.ID))
	metaBefore := rawValue(t, s, metaKey(m.ID))

	upd := Recipient{Addr: m.Recipients[1].Addr, State: Delivered, Attempts: 1, LastCode: 250,
		LastEnh: "2.0.0", LastText: "ok queued", LastMX: "mx.example.net", UpdatedAt: time.Now()}
	if err := s.Update(m.ID, map[int]Recipient{1: upd}, false); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := *m
	want.Recipients = slices.Clone(m.Recipients)
	want.Recipients[1] = upd
	mustEqualMessage(t, got, &want)
	if !bytes.Equal(rawValue(t, s, bodyKey(m.ID)), bodyBefore) || !bytes.Equal(rawValue(t, s, metaKey(m.ID)), metaBefore) {
		t.Fatal("Update rewrote body or meta")
	}
	if err := s.Update(m.ID, map[int]Recipient{3: upd}, false); err == nil {
		t.Fatal("Update of recipient index 3 of 3 succeeded")
	}
}

func TestUpdateDoneAndDeleteRemoveEverything(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	keep := testMessage(0, 2)
	a, b := testMessage(1, 3), testMessage(2, 2)
	for _, m := range []*Message{keep, a, b} {
		if err := s.Put(m, testBody(1, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Update(a.ID, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(b.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a.ID, b.ID} {
		if n := countKeys(t, s, id); n != 0 {
			t.Fatalf("%d keys of %s left after delete", n, id)
		}
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after delete: %v", err)
		}
	}
	if n := countKeys(t, s, keep.ID); n != 4 {
		t.Fatalf("other message has %d keys, want 4", n)
	}
}

func TestRecoverPendingInIDOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	var wantIDs []string
	var finished []string
	for i := 0; i < 20; i++ {
		m := testMessage(i, 2)
		if err := s.Put(m, testBody(i, 300)); err != nil {
			t.Fatal(err)
		}
		switch i % 4 {
		case 0:
			if i%8 == 0 { // all final with a bounce: owed a DSN, handed over
				if err := s.Update(m.ID, map[int]Recipient{0: {State: Delivered}, 1: {State: Bounced}}, false); err != nil {
					t.Fatal(err)
				}
				wantIDs = append(wantIDs, m.ID)
				break
			}
			// all final, nothing to report, not marked done: Recover deletes it
			if err := s.Update(m.ID, map[int]Recipient{0: {State: Delivered}, 1: {State: Cancelled}}, false); err != nil {
				t.Fatal(err)
			}
			finished = append(finished, m.ID)
		case 1: // one left
			if err := s.Update(m.ID, map[int]Recipient{0: {State: Delivered}}, false); err != nil {
				t.Fatal(err)
			}
			wantIDs = append(wantIDs, m.ID)
		case 2:
			if err := s.Delete(m.ID); err != nil {
				t.Fatal(err)
			}
		default:
			wantIDs = append(wantIDs, m.ID)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, Options{})
	var got []string
	st, err := s.Recover(func(m *Message) error {
		got = append(got, m.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, wantIDs) {
		t.Fatalf("Recover order\n got %v\nwant %v", got, wantIDs)
	}
	want := RecoverStats{Messages: 10, Recipients: 15, Finished: 2, Owed: 3}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	for _, id := range finished {
		if n := countKeys(t, s, id); n != 0 {
			t.Fatalf("finished message %s still has %d keys", id, n)
		}
	}
	// A second scan finds the same pending and owed messages and nothing to delete.
	st, err = s.Recover(func(*Message) error { return nil })
	if err != nil || st != (RecoverStats{Messages: 10, Recipients: 15, Owed: 3}) {
		t.Fatalf("second Recover: %+v, %v", st, err)
	}
}

func TestRecoverStopsOnCallbackError(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	for i := 0; i < 3; i++ {
		if err := s.Put(testMessage(i, 1), nil); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	calls := 0
	_, err := s.Recover(func(*Message) error { calls++; return boom })
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("Recover: %v after %d calls, want boom after 1", err, calls)
	}
}

func TestRecoverQuarantinesCorrupt(t *testing.T) {
	t.Parallel()
	good := func(i int) (*Message, []byte) { return testMessage(i, 2), testBody(i, 500) }
	cases := []struct {
		name    string
		corrupt func(t *testing.T, s *Spool, id string)
	}{
		{"garbage meta", func(t *testing.T, s *Spool, id string) { rawSet(t, s, metaKey(id), []byte("garbage")) }},
		{"flipped meta bit", func(t *testing.T, s *Spool, id string) { flipBit(t, s, metaKey(id)) }},
		{"future version", func(t *testing.T, s *Spool, id string) {
			v := rawValue(t, s, metaKey(id))
			v[0] = 9
			rawSet(t, s, metaKey(id), v)
		}},
		{"flipped body bit", func(t *testing.T, s *Spool, id string) { flipBit(t, s, bodyKey(id)) }},
		{"missing body", func(t *testing.T, s *Spool, id string) { rawDelete(t, s, bodyKey(id)) }},
		{"flipped recipient bit", func(t *testing.T, s *Spool, id string) { flipBit(t, s, rcptKey(id, 1)) }},
		{"missing recipient", func(t *testing.T, s *Spool, id string) { rawDelete(t, s, rcptKey(id, 0)) }},
		{"extra recipient", func(t *testing.T, s *Spool, id string) {
			rawSet(t, s, rcptKey(id, 2), encodeRecipient(&Recipient{Addr: "x@y"}))
		}},
		{"body size mismatch", func(t *testing.T, s *Spool, id string) { rawSet(t, s, bodyKey(id), encodeBody([]byte("short"))) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := openTest(t, "", Options{})
			var ids []string
			for i := 0; i < 5; i++ {
				m, b := good(i)
				if err := s.Put(m, b); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, m.ID)
			}
			bad := ids[2]
			tc.corrupt(t, s, bad)
			var got []string
			st, err := s.Recover(func(m *Message) error { got = append(got, m.ID); return nil })
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Delete(slices.Clone(ids), 2, 3)
			if !slices.Equal(got, want) {
				t.Fatalf("recovered %v, want %v", got, want)
			}
			if st.Quarantined != 1 || st.Messages != 4 {
				t.Fatalf("stats %+v", st)
			}
			if q, err := s.Quarantined(); err != nil || !slices.Equal(q, []string{bad}) {
				t.Fatalf("Quarantined: %v, %v", q, err)
			}
			if n := countKeys(t, s, bad); n != 0 {
				t.Fatalf("%d keys of the corrupt message left outside quarantine", n)
			}
			if _, err := s.Get(bad); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get of quarantined message: %v", err)
			}
		})
	}
}

func TestGetAndBodyReportCorruption(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 1)
	if err := s.Put(m, testBody(1, 100)); err != nil {
		t.Fatal(err)
	}
	flipBit(t, s, bodyKey(m.ID))
	flipBit(t, s, rcptKey(m.ID, 0))
	if _, err := s.Body(m.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Body: %v, want ErrCorrupt", err)
	}
	if _, err := s.Get(m.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get: %v, want ErrCorrupt", err)
	}
	// Deleting a corrupt message still removes everything.
	rawSet(t, s, metaKey(m.ID), []byte("junk"))
	if err := s.Delete(m.ID); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, s, m.ID); n != 0 {
		t.Fatalf("%d keys left", n)
	}
}

func TestLockPreventsSecondOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second Open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTest(t, dir, Options{})
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestClosedSpool(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 1)
	if err := s.Put(m, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Put(testMessage(2, 1), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	if _, err := s.Get(m.ID); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

func TestConcurrentPuts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	const writers, each = 64, 20
	ids := make([][]string, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := w*each + i
				m := testMessage(n, 1+n%3)
				if err := s.Put(m, testBody(n, 5000)); err != nil {
					errs <- err
					return
				}
				ids[w] = append(ids[w], m.ID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	check := func(s *Spool) {
		t.Helper()
		for w := range ids {
			for i, id := range ids[w] {
				n := w*each + i
				m, err := s.Get(id)
				if err != nil {
					t.Fatal(err)
				}
				if m.Sender != testMessage(n, 1).Sender || len(m.Recipients) != 1+n%3 {
					t.Fatalf("message %s: wrong content %+v", id, m)
				}
				b, err := s.Body(id)
				if err != nil || !bytes.Equal(b, testBody(n, 5000)) {
					t.Fatalf("body of %s: %v", id, err)
				}
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, Options{})
	check(s)
	st, err := s.Recover(func(*Message) error { return nil })
	if err != nil || st.Messages != writers*each {
		t.Fatalf("Recover: %+v, %v", st, err)
	}
}

// TestReopenWithoutCleanClose stands in for kill -9: the store's files are
// copied while it is open (its WAL never closed, its memtable never flushed)
// and a second instance on the copy must find every acknowledged message.
func TestReopenWithoutCleanClose(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	const n = 200
	var ids []string
	for i := 0; i < n; i++ {
		m := testMessage(i, 2)
		if err := s.Put(m, testBody(i, 2000)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	dir := crashCopy(t, s)

	s2 := openTest(t, dir, Options{})
	var got []string
	st, err := s2.Recover(func(m *Message) error { got = append(got, m.ID); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, ids) || st.Recipients != 2*n {
		t.Fatalf("recovered %d messages (%+v), want %d", len(got), st, n)
	}
	// New ids sort after the recovered ones.
	if id := s2.NewID(); id <= ids[n-1] {
		t.Fatalf("new id %s not after %s", id, ids[n-1])
	}
}

// TestPowerLoss keeps only what was fsync'd (pebble's crashable MemFS) while
// 16 writers are putting, and checks that every message acknowledged before
// the "power cut" is in what is left.
func TestPowerLoss(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mem := vfs.NewCrashableMem()
	s := openTest(t, dir, Options{FS: mem})
	const writers, each = 16, 30
	acked := make(chan string, writers*each)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				m := testMessage(w*each+i, 1)
				if err := s.Put(m, testBody(i, 3000)); err != nil {
					errs <- err
					return
				}
				acked <- m.ID
			}
		}()
	}
	// Every id received here was acknowledged before the clone is taken.
	var mustSurvive []string
	for i := 0; i < writers*each/2; i++ {
		mustSurvive = append(mustSurvive, <-acked)
	}
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTest(t, dir, Options{FS: clone})
	found := map[string]bool{}
	var order []string
	if _, err := s2.Recover(func(m *Message) error {
		found[m.ID] = true
		order = append(order, m.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range mustSurvive {
		if !found[id] {
			t.Fatalf("acknowledged message %s lost (%d of %d found)", id, len(found), len(mustSurvive))
		}
	}
	if !slices.IsSorted(order) {
		t.Fatal("Recover not in id order")
	}
}

// TestFinishedDeleteSyncedLater: the delete of a finished message returns
// before its fsync; a power cut right after it brings the message back (the
// at-least-once window Update documents), the next Put's fsync makes it
// durable, and with no Put the committer syncs it by itself within
// FinishSyncDelay. An operator's Delete is synced before it returns.
func TestFinishedDeleteSyncedLater(t *testing.T) {
	t.Parallel()
	// recovered opens what a power cut left of the spool in dir (the clone
	// fs) and lists its messages. The original spool still holds dir's lock,
	// so the clone's store is moved to another directory first.
	recovered := func(t *testing.T, dir string, fs *vfs.MemFS) map[string]bool {
		t.Helper()
		dir2 := t.TempDir()
		if err := fs.MkdirAll(dir2, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := fs.Rename(filepath.Join(dir, "db"), filepath.Join(dir2, "db")); err != nil {
			t.Fatal(err)
		}
		s := openTest(t, dir2, Options{FS: fs})
		found := map[string]bool{}
		if _, err := s.Recover(func(m *Message) error { found[m.ID] = true; return nil }); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return found
	}
	put := func(t *testing.T, s *Spool, i int) string {
		t.Helper()
		m := testMessage(i, 1)
		if err := s.Put(m, testBody(i, 500)); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}

	t.Run("next put syncs it", func(t *testing.T) {
		t.Parallel()
		dir, mem := t.TempDir(), vfs.NewCrashableMem()
		s := openTest(t, dir, Options{FS: mem, FinishSyncDelay: time.Hour})
		a := put(t, s, 1)
		if err := s.Update(a, nil, true); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(a); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after the delete: %v, want ErrNotFound", err)
		}
		if found := recovered(t, dir, mem.CrashClone(vfs.CrashCloneCfg{})); !found[a] {
			t.Fatal("the unsynced delete survived a power cut: it was synced before Update returned")
		}
		b := put(t, s, 2)
		found := recovered(t, dir, mem.CrashClone(vfs.CrashCloneCfg{}))
		if found[a] || !found[b] {
			t.Fatalf("after the next Put: found %v, want only %s", found, b)
		}
	})

	t.Run("committer syncs it when idle", func(t *testing.T) {
		t.Parallel()
		dir, mem := t.TempDir(), vfs.NewCrashableMem()
		s := openTest(t, dir, Options{FS: mem, FinishSyncDelay: 20 * time.Millisecond})
		a := put(t, s, 1)
		if err := s.Update(a, nil, true); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for recovered(t, dir, mem.CrashClone(vfs.CrashCloneCfg{}))[a] {
			if time.Now().After(deadline) {
				t.Fatal("the delete was not synced within 10 s with FinishSyncDelay 20ms")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("operator delete is synced", func(t *testing.T) {
		t.Parallel()
		dir, mem := t.TempDir(), vfs.NewCrashableMem()
		s := openTest(t, dir, Options{FS: mem, FinishSyncDelay: time.Hour})
		a := put(t, s, 1)
		if err := s.Delete(a); err != nil {
			t.Fatal(err)
		}
		if recovered(t, dir, mem.CrashClone(vfs.CrashCloneCfg{}))[a] {
			t.Fatal("Delete returned before its delete was synced")
		}
	})
}
