package inject

import "github.com/mtad/mtad/internal/spool"

// Store is where accepted messages go; *spool.Spool satisfies it.
//
// NewID returns a fresh queue id, safe to call concurrently; the injector
// takes one per transaction before the body arrives, because the id goes
// into the Received field at the head of the body, so an id may go unused
// when the message is refused. NewBody starts a body that is written as it
// arrives (chunks go to disk unsynced as they fill, so a session holds at
// most one chunk). PutBody stores m with that body under m.ID and returns
// only once both are on stable storage, setting m.Size; an error matching
// spool.ErrNoSpace means the disk is full, and the body is then aborted.
type Store interface {
	NewID() string
	NewBody() *spool.BodyWriter
	PutBody(m *spool.Message, w *spool.BodyWriter) error
}
