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

// A Store may also have a LowSpace() bool method, found by type assertion
// (*spool.Spool has one): while it reports true the store would refuse any
// message for lack of disk space, so MAIL is answered 452 4.3.1 and an HTTP
// request 503 before the body is sent, not after it. It is asked at every
// MAIL, so it must be cheap. The store logs its changes of state; a refusal
// here is one "rejected" record, not an error line.
type lowSpaceStore interface{ LowSpace() bool }

// lowSpace reports whether store says it is refusing for low space.
func lowSpace(store lowSpaceStore) bool { return store != nil && store.LowSpace() }
