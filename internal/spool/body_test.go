package spool

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// writeInPieces writes b to w in pieces of odd sizes, as a socket would hand
// them over.
func writeInPieces(t *testing.T, w *BodyWriter, b []byte) {
	t.Helper()
	for i, step := 0, 1; i < len(b); step = step*7%40000 + 1 {
		j := min(i+step, len(b))
		if n, err := w.Write(b[i:j]); err != nil || n != j-i {
			t.Fatalf("Write: %d, %v", n, err)
		}
		i = j
	}
}

func readAllBody(t *testing.T, s *Spool, id string) []byte {
	t.Helper()
	r, err := s.OpenBody(id)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got bytes.Buffer
	// Small reads, so that reads cross chunk boundaries.
	if _, err := io.CopyBuffer(&got, struct{ io.Reader }{r}, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if int64(got.Len()) != r.Size() {
		t.Fatalf("read %d bytes, Size says %d", got.Len(), r.Size())
	}
	return got.Bytes()
}

// TestBodySizes: bodies around the chunk size and several chunks long go
// through BodyWriter, PutBody and OpenBody (and Put and Body) unchanged.
func TestBodySizes(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	for _, size := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2 * ChunkSize, 3*ChunkSize + 17} {
		body := testBody(size, size)
		m := testMessage(size, 2)
		w := s.NewBody()
		writeInPieces(t, w, body)
		if w.Len() != int64(size) {
			t.Fatalf("size %d: Len %d", size, w.Len())
		}
		if err := s.PutBody(m, w); err != nil {
			t.Fatalf("size %d: PutBody: %v", size, err)
		}
		w.Abort() // after PutBody: does nothing
		if m.Size != int64(size) {
			t.Fatalf("size %d: m.Size %d", size, m.Size)
		}
		if got := readAllBody(t, s, m.ID); !bytes.Equal(got, body) {
			t.Fatalf("size %d: body read back differs (%d bytes)", size, len(got))
		}
		got, err := s.Get(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		mustEqualMessage(t, got, m)

		m2 := testMessage(size+1, 1)
		if err := s.Put(m2, body); err != nil {
			t.Fatalf("size %d: Put: %v", size, err)
		}
		if got, err := s.Body(m2.ID); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("size %d: Body after Put: %d bytes, %v", size, len(got), err)
		}
		if err := s.Delete(m2.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBodyWriterReaderAndAbort: a writer reads back what it holds, an
// aborted body leaves no record, and a deleted chunked message takes its
// chunks with it.
func TestBodyWriterReaderAndAbort(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	body := testBody(7, 2*ChunkSize+500)
	w := s.NewBody()
	writeInPieces(t, w, body)
	r, err := w.Reader()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Reader: %d bytes, %v", len(got), err)
	}
	w.Abort()
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after Abort succeeded")
	}
	if n := countPrefix(t, s, prefixChunk); n != 0 {
		t.Fatalf("%d chunk records after Abort", n)
	}

	m := testMessage(8, 3)
	w = s.NewBody()
	writeInPieces(t, w, body)
	if err := s.PutBody(m, w); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(t, s, prefixChunk); n != 3 {
		t.Fatalf("%d chunk records, want 3", n)
	}
	if err := s.Update(m.ID, nil, true); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(t, s, prefixChunk); n != 0 {
		t.Fatalf("%d chunk records left after the message finished", n)
	}
	if _, err := s.OpenBody(m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenBody of a deleted message: %v", err)
	}
}

// TestChunkedBodyCrash: with the power cut after the chunks of a body were
// written but before its PutBody, the restarted spool has no message and
// Recover removes the orphan chunks; a body whose PutBody returned survives
// whole, every chunk included, though only PutBody synced.
func TestChunkedBodyCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mem := vfs.NewCrashableMem()
	s := openTest(t, dir, Options{FS: mem})

	kept := testBody(1, 3*ChunkSize+5)
	m := testMessage(1, 2)
	w := s.NewBody()
	writeInPieces(t, w, kept)
	if err := s.PutBody(m, w); err != nil {
		t.Fatal(err)
	}
	orphan := s.NewBody()
	writeInPieces(t, orphan, testBody(2, 2*ChunkSize+1))
	// A synced write after the orphan's chunks, so they are on "disk".
	if err := s.Put(testMessage(3, 1), []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	orphan.Abort()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTest(t, dir, Options{FS: clone})
	if n := countPrefix(t, s2, prefixChunk); n != 6 {
		t.Fatalf("before recovery: %d chunk records, want the kept body's 4 and the orphan's 2", n)
	}
	var ids []string
	st, err := s2.Recover(func(m *Message) error { ids = append(ids, m.ID); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 2 || st.Quarantined != 0 {
		t.Fatalf("recover: %+v", st)
	}
	if n := countPrefix(t, s2, prefixChunk); n != 4 {
		t.Fatalf("after recovery: %d chunk records, want the kept body's 4", n)
	}
	if got := readAllBody(t, s2, m.ID); sha256.Sum256(got) != sha256.Sum256(kept) {
		t.Fatal("kept body differs after the crash")
	}
}

// TestChunkCorruption: a damaged or missing chunk makes the body read fail
// with ErrCorrupt and Recover quarantine the message with its chunks.
func TestChunkCorruption(t *testing.T) {
	t.Parallel()
	for _, damage := range []string{"flip", "delete"} {
		s := openTest(t, "", Options{})
		m := testMessage(1, 1)
		if err := s.Put(m, testBody(1, 2*ChunkSize+10)); err != nil {
			t.Fatal(err)
		}
		key := chunkKey(m.bodyID, 1)
		if damage == "flip" {
			flipBit(t, s, key)
		} else {
			rawDelete(t, s, key)
		}
		if _, err := s.Body(m.ID); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: Body: %v, want ErrCorrupt", damage, err)
		}
		st, err := s.Recover(func(*Message) error { return nil })
		if err != nil || st.Quarantined != 1 {
			t.Fatalf("%s: Recover: %+v, %v", damage, st, err)
		}
		if n := countPrefix(t, s, prefixChunk); n != 0 {
			t.Fatalf("%s: %d chunk records outside the quarantine", damage, n)
		}
		if n := countPrefix(t, s, prefixQuarantine+prefixChunk); n == 0 {
			t.Fatalf("%s: chunks not quarantined", damage)
		}
	}
}

// TestVersion1Records: records written before version 2 (no DSN fields, no
// body layout) still read, with the new fields zero.
func TestVersion1Records(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 1)
	body := []byte("Subject: old\r\n\r\nbody\r\n")
	if err := s.Put(m, body); err != nil {
		t.Fatal(err)
	}
	// Rewrite meta and recipient as version 1 wrote them: the same
	// payload less the fields version 2 appends.
	v1 := func(rec []byte, cut int) []byte {
		e := &encoder{buf: append([]byte{1}, rec[1:len(rec)-crcLen-cut]...)}
		return e.finish()
	}
	// Meta appends: envid "" (1), ret (1), body id "" (1), chunks 0 (1).
	rawSet(t, s, metaKey(m.ID), v1(rawValue(t, s, metaKey(m.ID)), 4))
	// Recipient appends: notify (1), orcpt "" (1), flags (1).
	rawSet(t, s, rcptKey(m.ID, 0), v1(rawValue(t, s, rcptKey(m.ID, 0)), 3))
	got, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualMessage(t, got, m)
	if b, err := s.Body(m.ID); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("Body: %q, %v", b, err)
	}
}

// TestDSNFieldsRoundTrip: the RFC 3461 fields are stored and read back.
func TestDSNFieldsRoundTrip(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	m := testMessage(1, 3)
	m.EnvID, m.Ret = "QQ314159", RetHdrs
	m.Recipients[0].Notify = NotifyNever
	m.Recipients[1].Notify = NotifySuccess | NotifyFailure | NotifyDelay
	m.Recipients[1].ORcpt = "rfc822;orig@example.net"
	if err := s.Put(m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	r := m.Recipients[2]
	r.DelayNotified, r.UpdatedAt = true, time.Unix(1700000000, 0)
	if err := s.Update(m.ID, map[int]Recipient{2: r}, false); err != nil {
		t.Fatal(err)
	}
	m.Recipients[2] = r
	got, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualMessage(t, got, m)
	if !got.Recipients[0].Notify.Has(NotifyNever) || got.Recipients[0].Notify.Has(NotifyFailure) ||
		!got.Recipients[2].Notify.Has(NotifyFailure) || got.Recipients[2].Notify.Has(NotifyDelay) {
		t.Fatalf("Notify.Has: %+v", got.Recipients)
	}
}

func countPrefix(t *testing.T, s *Spool, prefix string) int {
	t.Helper()
	n := 0
	err := s.withDB(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
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

// TestRecoverKeepsChunksWrittenByFn: a chunked message that fn stores
// while Recover runs (the scheduler spools DSNs then) is not taken for an
// orphan by the sweep at the end of Recover.
func TestRecoverKeepsChunksWrittenByFn(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	if err := s.Put(testMessage(1, 1), []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	body := testBody(9, 2*ChunkSize+3)
	var dsn *Message
	if _, err := s.Recover(func(*Message) error {
		dsn = testMessage(2, 1)
		return s.Put(dsn, body)
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Body(dsn.ID); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body stored during Recover: %d bytes, %v", len(got), err)
	}
}
