package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// Bodies are stored in one of two layouts:
//
//   - a body of at most ChunkSize bytes is one record under b/<message id>,
//     written in the same synced batch as its message (the common case:
//     one WAL write, nothing else);
//   - a larger body is a sequence of chunk records c/<body id>/<idx>, each
//     at most ChunkSize bytes and framed and checksummed like any record.
//     A BodyWriter writes the chunks as the body arrives, without waiting
//     for a sync; PutBody then writes the message with the last chunk in
//     one synced batch. The WAL is written in order, so that sync makes
//     every earlier chunk durable too, and a message is never visible
//     without all of its chunks. The meta record names the body id and the
//     chunk count.
//
// So neither the injector nor a delivery ever holds a whole large body:
// memory per body in flight is one chunk. The body id is a queue id of its
// own, not the message's, so that a body can be written twice (the
// injector rewrites a message that needs converting) and the copy that is
// not kept dropped. Chunks whose message never got written (a refused
// message whose Abort was lost in a crash) are removed by Recover.

// ChunkSize is the largest body record. Bodies up to this size take the
// single-record path; a BodyWriter holds at most this much in memory.
const ChunkSize = 256 << 10

// maxChunks bounds the chunk count read from a meta record (64 GiB of body).
const maxChunks = 1 << 18

const prefixChunk = "c/"

// chunkPrefix is the prefix of every chunk key of body id.
func chunkPrefix(bodyID string) []byte {
	k := make([]byte, 0, len(prefixChunk)+len(bodyID)+1+4)
	k = append(k, prefixChunk...)
	k = append(k, bodyID...)
	return append(k, '/')
}

func chunkKey(bodyID string, idx int) []byte {
	return binary.BigEndian.AppendUint32(chunkPrefix(bodyID), uint32(idx))
}

// chunkOp is the write of one chunk record; val is copied by the batch.
func chunkOp(bodyID string, idx int, val []byte) op {
	head, tail := bodyParts(val)
	return op{key: chunkKey(bodyID, idx), val: [][]byte{head[:], val, tail[:]}}
}

var chunkBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// BodyWriter is a message body being written to the spool before its
// message: Write it, then hand it to PutBody, or Abort it. It is not safe
// for concurrent use.
type BodyWriter struct {
	s      *Spool
	id     string        // body id of the chunk records; set at the first chunk
	buf    *bytes.Buffer // bytes not yet in a chunk record; nil once finished
	chunks int           // chunk records written
	n      int64
	err    error  // sticky: the first failed chunk write
	epoch  uint64 // Spool.reopens at the first chunk
}

// NewBody starts a body. Nothing is written until more than ChunkSize
// bytes have been given to it.
func (s *Spool) NewBody() *BodyWriter {
	b := chunkBufs.Get().(*bytes.Buffer)
	b.Reset()
	return &BodyWriter{s: s, buf: b}
}

// Write appends p. Each time a chunk fills it is written to the store
// without waiting for a sync (PutBody's sync covers it); an error (the disk
// full: ErrNoSpace) sticks and is returned by every later call.
func (w *BodyWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.buf == nil {
		return 0, errors.New("spool: body write after PutBody or Abort")
	}
	n := len(p)
	for len(p) > 0 {
		room := ChunkSize - w.buf.Len()
		if room == 0 {
			if err := w.flushChunk(); err != nil {
				return n - len(p), err
			}
			continue
		}
		k := min(room, len(p))
		w.buf.Write(p[:k])
		p = p[k:]
		w.n += int64(k)
	}
	return n, nil
}

// flushChunk writes the buffer as the next chunk record. A body is only
// chunked once it is larger than one chunk, so the first flush happens at
// the first byte past ChunkSize.
func (w *BodyWriter) flushChunk() error {
	if w.id == "" {
		w.id = w.s.NewID()
		w.epoch = w.s.reopens.Load()
	}
	if err := w.s.commitMode([]op{chunkOp(w.id, w.chunks, w.buf.Bytes())}, true, true); err != nil {
		w.err = fmt.Errorf("spool body %s chunk %d: %w", w.id, w.chunks, err)
		return w.err
	}
	w.chunks++
	w.buf.Reset()
	return nil
}

// Len is the number of bytes written so far.
func (w *BodyWriter) Len() int64 { return w.n }

// Abort drops what was written. It is safe to call after PutBody (it then
// does nothing) and more than once.
func (w *BodyWriter) Abort() {
	if w.buf == nil {
		return
	}
	w.release()
	if w.chunks > 0 {
		ops := make([]op, w.chunks)
		for i := range ops {
			ops[i] = op{key: chunkKey(w.id, i), del: true}
		}
		// Lazy: a crash before it is synced leaves orphan chunks, which
		// Recover removes.
		_ = w.s.commitMode(ops, false, true)
		w.chunks = 0
	}
}

func (w *BodyWriter) release() {
	if w.buf.Cap() <= 2*ChunkSize {
		chunkBufs.Put(w.buf)
	}
	w.buf = nil
}

// Reader reads back what has been written so far, from its start: the
// chunk records, then what is still buffered. It must be closed before
// the writer is written to again, put or aborted.
func (w *BodyWriter) Reader() (io.ReadCloser, error) {
	if w.buf == nil {
		return nil, errors.New("spool: body read after PutBody or Abort")
	}
	if w.err != nil {
		return nil, w.err
	}
	return &BodyReader{s: w.s, bodyID: w.id, chunks: w.chunks, size: w.n,
		tail: w.buf.Bytes()}, nil
}

// PutBody stores m with the body w durably, like Put: it returns after the
// fsync that makes message, recipients and every chunk of the body
// durable. It sets m.ID when empty and m.Size. On success w is spent; on
// error the caller should Abort it.
func (s *Spool) PutBody(m *Message, w *BodyWriter) error {
	if w.err != nil {
		return fmt.Errorf("spool put %s: %w", m.ID, w.err)
	}
	if w.buf == nil {
		return fmt.Errorf("spool put %s: body already put or aborted", m.ID)
	}
	if w.chunks == 0 {
		// The whole body is in the buffer: the single-record path.
		if err := s.Put(m, w.buf.Bytes()); err != nil {
			return err
		}
		w.release()
		return nil
	}
	last := w.buf.Bytes()
	n := w.chunks
	if len(last) > 0 {
		n++
	}
	ops, err := s.putOps(m, w.n, w.id, n)
	if err != nil {
		return err
	}
	if len(last) > 0 {
		ops = append(ops, chunkOp(w.id, w.chunks, last))
	}
	// The epoch makes the committer refuse the write if the store was
	// reopened after a write failure since the first chunk: chunks written
	// but not synced before that may be gone.
	epoch := w.epoch
	if err := s.send(&commitReq{ops: ops, put: true, epoch: &epoch, done: make(chan error, 1)}); err != nil {
		m.bodyID, m.chunks = "", 0
		return fmt.Errorf("spool put %s: %w", m.ID, err)
	}
	w.chunks = n
	w.release()
	return nil
}

// BodyReader streams a stored body, one chunk in memory at a time. Each
// chunk is checked against its checksum as it is read.
type BodyReader struct {
	s      *Spool
	bodyID string
	chunks int   // chunk records to read
	next   int   // index of the next chunk record
	size   int64 // the body's size, as recorded
	read   int64
	cur    []byte  // the rest of the current chunk
	tail   []byte  // for a BodyWriter's reader: its buffered bytes, after the chunks
	single string  // message id of a single-record body not read yet
	buf    *[]byte // holds cur; from readBufs, given back by Close
}

// OpenBody opens the body of message id for reading, or returns an error
// wrapping ErrNotFound or ErrCorrupt.
func (s *Spool) OpenBody(id string) (*BodyReader, error) {
	var l layout
	err := s.withDB(func(db *pebble.DB) error {
		var err error
		l, err = readLayout(db, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("spool body %s: %w", id, err)
	}
	r := &BodyReader{s: s, bodyID: l.bodyID, chunks: l.chunks, size: l.size}
	if l.chunks == 0 {
		r.single = id
	}
	return r, nil
}

// Size is the body's size in bytes.
func (r *BodyReader) Size() int64 { return r.size }

// Read reads the next bytes of the body. A body that ends short of its
// recorded size, or a chunk that fails its checksum, is an error wrapping
// ErrCorrupt.
func (r *BodyReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if err := r.load(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

// load fills cur with the next record's bytes, or returns io.EOF.
func (r *BodyReader) load() error {
	switch {
	case r.single != "":
		id := r.single
		r.single = ""
		b, err := r.get(bodyKey(id))
		if err != nil {
			return fmt.Errorf("spool body %s: %w", id, err)
		}
		r.cur = b
	case r.next < r.chunks:
		b, err := r.get(chunkKey(r.bodyID, r.next))
		if err != nil {
			return fmt.Errorf("spool body %s chunk %d: %w", r.bodyID, r.next, err)
		}
		r.next++
		r.cur = b
	case r.tail != nil:
		r.cur, r.tail = r.tail, nil
	default:
		if r.read != r.size {
			return fmt.Errorf("spool body: %w: %d bytes stored, %d recorded", ErrCorrupt, r.read, r.size)
		}
		return io.EOF
	}
	return nil
}

// get reads and checks one body record, copying it out of pebble (the
// store may be reopened between two reads) into the reader's buffer, which
// the next get reuses: a chunk at a time, not a chunk of garbage each.
func (r *BodyReader) get(key []byte) ([]byte, error) {
	if r.buf == nil {
		r.buf = readBufs.Get().(*[]byte)
	}
	var out []byte
	err := r.s.withDB(func(db *pebble.DB) error {
		v, closer, err := db.Get(key)
		if errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("%w: body record missing", ErrCorrupt)
		}
		if err != nil {
			return err
		}
		defer func() { _ = closer.Close() }()
		b, err := decodeBody(v)
		if err != nil {
			return err
		}
		*r.buf = append((*r.buf)[:0], b...)
		out = *r.buf
		return nil
	})
	return out, err
}

// readBufs are BodyReaders' chunk buffers.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 0, ChunkSize); return &b }}

// Close ends the read and gives its buffer back; the reader must not be
// used after. It never fails.
func (r *BodyReader) Close() error {
	r.cur, r.tail, r.chunks, r.single = nil, nil, 0, ""
	if r.buf != nil {
		if cap(*r.buf) <= ChunkSize {
			readBufs.Put(r.buf)
		}
		r.buf = nil
	}
	return nil
}

// layout is where a message's body and recipients are, from its meta record.
type layout struct {
	rcpts  int
	size   int64
	bodyID string
	chunks int
}

func readLayout(db *pebble.DB, id string) (layout, error) {
	rec, found, err := getCopy(db, metaKey(id))
	if err != nil {
		return layout{}, err
	}
	if !found {
		return layout{}, ErrNotFound
	}
	m, n, err := decodeMeta(rec)
	if err != nil {
		return layout{}, err
	}
	return layout{rcpts: n, size: m.Size, bodyID: m.bodyID, chunks: m.chunks}, nil
}
