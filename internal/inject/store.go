package inject

import "github.com/mtad/mtad/internal/spool"

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
// Abort drops it (a refused message, a failed PutBody); it must be a
// no-op after a successful PutBody.
type Body interface {
	Write(p []byte) (int, error)
	Len() int64
	Abort()
}

// SpoolStore is the Store over a spool.
func SpoolStore(sp *spool.Spool) Store { return spoolStore{sp} }

type spoolStore struct{ sp *spool.Spool }

func (s spoolStore) NewID() string { return s.sp.NewID() }

// NewBody streams into the spool: chunks are written unsynced as they
// fill, and PutBody's single sync makes them durable with the message.
func (s spoolStore) NewBody() Body { return s.sp.NewBody() }

func (s spoolStore) PutBody(m *spool.Message, b Body) error {
	return s.sp.PutBody(m, b.(*spool.BodyWriter))
}
