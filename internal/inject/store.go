package inject

import (
	"bytes"

	"github.com/mtad/mtad/internal/spool"
)

// Store is where accepted messages go. SpoolStore adapts *spool.Spool.
//
// NewID returns a fresh queue id, safe to call concurrently; the injector
// takes one per transaction before the body arrives, because the id goes
// into the Received field at the head of the body, so an id may go unused
// when the message is refused. NewBody starts a body that is written as it
// arrives. PutBody stores m with that body under m.ID and returns only once
// both are on stable storage, setting m.Size; an error matching
// spool.ErrNoSpace means the disk is full.
type Store interface {
	NewID() string
	NewBody() Body
	PutBody(m *spool.Message, b Body) error
}

// Body is a message body being written, before its message is stored.
// Abort drops it (a refused message); it is not called after PutBody.
type Body interface {
	Write(p []byte) (int, error)
	Len() int64
	Abort()
}

// SpoolStore is the Store over a spool.
func SpoolStore(sp *spool.Spool) Store { return spoolStore{sp} }

type spoolStore struct{ sp *spool.Spool }

func (s spoolStore) NewID() string { return s.sp.NewID() }

// NewBody: until the spool streams bodies (spool.NewBody), the body is
// gathered here and stored with Put.
// TODO(issue 8): switch to spool.NewBody/PutBody when they land on main.
func (s spoolStore) NewBody() Body { return &memBody{} }

func (s spoolStore) PutBody(m *spool.Message, b Body) error {
	mb := b.(*memBody)
	return s.sp.Put(m, mb.buf.Bytes())
}

type memBody struct{ buf bytes.Buffer }

func (b *memBody) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *memBody) Len() int64                  { return int64(b.buf.Len()) }
func (b *memBody) Abort()                      { b.buf = bytes.Buffer{} }
