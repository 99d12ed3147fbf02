// Package spool is mtad's durable message store. It owns the on-disk state of
// every accepted message: its envelope and metadata, its body, and the
// delivery state of each recipient, kept in a pebble database under one
// directory that a single process may use at a time.
//
// A message is written in one synced batch: Put returns only after the WAL
// has been fsync'd, which is what lets the injection listener answer 250.
// Writes from all goroutines go through one committer that folds whatever is
// waiting into a single batch and a single fsync (group commit), so many
// concurrent injections share the cost of one sync.
//
// Keys:
//
//	m/<id>          metadata (Message without recipients, plus the recipient count)
//	b/<id>          body of at most ChunkSize bytes
//	c/<bid>/<idx>   one chunk of a larger body; bid is the body's own id (see body.go)
//	r/<id>/<idx>    one recipient's address and state; idx is 4 bytes big endian
//	q/<key>         a quarantined record, under its original key
//
// Recipient state lives apart from the body so an update never rewrites it.
// Every value carries a version byte and a crc32c (see codec.go).
//
// Write failures. Pebble (v2.1) cannot go on after a failed WAL write or
// sync: the log writer keeps the error for good; DB.Apply hands a failed sync
// to Logger.Fatalf (the default logger exits the process) and then returns
// nil; a later commit panics while holding pebble's commit lock, leaving
// every other committer and DB.Close blocked forever; and a failure while
// pebble rotates the WAL (every time a memtable fills) ends in an
// unrecoverable runtime error ("unlock of unlocked mutex"), which no recover
// can catch. So the spool
//
//   - has exactly one commit in flight (its own group commit), so a failure is
//     reported to the commit that hit it and no later commit reaches the
//     broken log writer;
//   - commits with ApplyNoSyncWait+SyncWait, which return the sync error as a
//     value, and gives pebble a logger whose Fatalf records the error instead
//     of exiting; a panic inside a commit is recovered and leaves the store
//     read-only until restart (pebble's commit lock is lost with it);
//   - after a failed write refuses writes with ErrUnavailable (joined with
//     the cause, so ErrNoSpace still matches) and, at the next write after
//     Options.ReopenInterval, closes and reopens pebble, which replays its
//     WAL: everything synced before the failure is there. While the reopen
//     fails the store is opened read-only, so reads go on;
//   - refuses Puts with ErrNoSpace while free space is below
//     Options.MinFreeBytes, so a filling disk is met here and not inside a
//     WAL rotation. Updates and deletes go on, so deliveries free space.
//     LowSpace tells the listeners, so they refuse a message before its
//     body is sent; entering and leaving that state is logged once each.
//
// What remains fatal is an I/O error other than ENOSPC (EIO: a failing disk)
// striking exactly while the WAL is rotated.
//
// The spool must never decide anything about delivery: it stores what it is
// given and reports what it has.
package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/zap"
)

// Errors returned by the spool. Match them with errors.Is.
var (
	// ErrNotFound: no message with that id.
	ErrNotFound = errors.New("spool: message not found")
	// ErrNoSpace: a write failed because the disk is full, or a Put was
	// refused because free space fell below Options.MinFreeBytes. The error
	// also matches syscall.ENOSPC. Temporary: injection answers 452 4.3.1.
	ErrNoSpace = errors.New("spool: no space left on device")
	// ErrUnavailable: the spool refuses writes after an earlier write failure
	// until it has reopened its store. Joined with the original cause (so
	// ErrNoSpace still matches after a disk-full failure). Temporary.
	ErrUnavailable = errors.New("spool: store unavailable after a write failure")
	// ErrClosed: the spool has been closed.
	ErrClosed = errors.New("spool: closed")
)

// Options configures Open. The zero value is ready for production use.
type Options struct {
	// FS is the file system pebble writes through; nil means vfs.Default.
	// Tests wrap it (errorfs) to inject write failures.
	FS vfs.FS
	// Logger receives the spool's and pebble's log lines; nil means none.
	Logger *zap.Logger
	// MemTableSize is pebble's memtable size; 0 means 64 MiB. Large enough
	// that most messages are delivered and deleted before their memtable is
	// flushed, so they cost one WAL write and nothing more.
	MemTableSize uint64
	// CacheSize is pebble's block cache size; 0 means 64 MiB.
	CacheSize int64
	// ReopenInterval is the least time between attempts to reopen the store
	// after a write failure; 0 means 1s, negative means try at every write.
	ReopenInterval time.Duration
	// MaxGroupBytes bounds the size of one group commit; 0 means 4 MiB.
	MaxGroupBytes int
	// MinFreeBytes is the free space below which Put is refused with
	// ErrNoSpace (Update and Delete go on: they let deliveries free space).
	// 0 means 2*MemTableSize + 64 MiB; negative turns the check off.
	MinFreeBytes int64
	// FinishSyncDelay bounds how long the deletion of a finished message
	// (Update with done) may stay unsynced; 0 means 20ms. See Update.
	// While mail is injected the next Put syncs it sooner; the delay only
	// bounds the sync when deliveries go on alone, at ≤ 50 extra fsyncs a
	// second.
	FinishSyncDelay time.Duration
}

// Spool is an open message store. Its methods are safe for concurrent use.
type Spool struct {
	dir    string
	dbDir  string
	opts   Options
	log    *zap.Logger
	lock   *os.File
	ids    idGen
	fatalE atomic.Pointer[error] // first error pebble reported through Fatalf since last checked

	// mu guards db: readers hold it shared; the committer, the only writer
	// of db, takes it exclusively (TryLock, so it never waits on a reader)
	// to reopen the store.
	mu       sync.RWMutex
	db       *pebble.DB
	poisoned atomic.Bool // pebble panicked inside a commit: db must not be used for writes or closed
	// reopens counts successful reopens after a write failure: unsynced
	// writes from before one may be lost, so a BodyWriter whose chunks
	// straddle one is refused.
	reopens atomic.Uint64
	// qmu orders the quarantine's restores and deletes (quarantine.go),
	// each a read then a commit.
	qmu sync.Mutex

	// The low-space state (LowSpace): spaceMu orders the checks of the
	// free space, so that each change of state is logged once; the
	// atomics let LowSpace answer without it.
	spaceMu         sync.Mutex
	diskUsageWarned bool         // under spaceMu
	spaceLow        atomic.Bool  // the last check found less than MinFreeBytes free
	spaceChecked    atomic.Int64 // when, in Unix nanoseconds

	// Committer state, touched only by the committer goroutine.
	broken     error // non-nil: writes are refused until a reopen succeeds
	lastReopen time.Time

	reqs      chan *commitReq
	quit      chan struct{} // closed by Close
	stopped   chan struct{} // closed when the committer has returned
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the spool in dir. It takes an exclusive
// lock on dir/mtad.lock and fails at once if another process holds it.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 64 << 20
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 64 << 20
	}
	if opts.ReopenInterval == 0 {
		opts.ReopenInterval = time.Second
	}
	if opts.FinishSyncDelay <= 0 {
		opts.FinishSyncDelay = 20 * time.Millisecond
	}
	if opts.MaxGroupBytes == 0 {
		opts.MaxGroupBytes = 4 << 20
	}
	if opts.MinFreeBytes == 0 {
		opts.MinFreeBytes = 2*int64(opts.MemTableSize) + 64<<20
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool open %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{
		dir:     dir,
		dbDir:   filepath.Join(dir, "db"),
		opts:    opts,
		log:     opts.Logger.With(zap.String("component", "spool")),
		lock:    lock,
		reqs:    make(chan *commitReq, 1024),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	s.ids.now = time.Now
	db, err := s.openDB(false)
	if err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("spool open %s: %w", dir, err)
	}
	s.db = db
	if err := s.seedIDs(); err != nil {
		_ = db.Close()
		_ = lock.Close()
		return nil, fmt.Errorf("spool open %s: %w", dir, err)
	}
	if opts.MinFreeBytes >= 0 {
		// Already below the reserve: say so now, once, rather than let
		// the daemon report ready and refuse every message unexplained.
		s.freeBytes()
	}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// lockDir takes the flock that keeps a second mtad off this spool. The lock
// belongs to the open file, so it goes when the process dies.
func lockDir(dir string) (*os.File, error) {
	name := filepath.Join(dir, "mtad.lock")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool open %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("spool dir %s is in use by another process (lock %s held)", dir, name)
		}
		return nil, fmt.Errorf("spool open %s: lock %s: %w", dir, name, err)
	}
	return f, nil
}

// openDB opens pebble; readOnly is for serving reads while writes fail.
func (s *Spool) openDB(readOnly bool) (*pebble.DB, error) {
	cache := pebble.NewCache(s.opts.CacheSize)
	defer cache.Unref()
	sugar := s.log.Sugar()
	po := &pebble.Options{
		FS:                          s.opts.FS,
		ReadOnly:                    readOnly,
		Cache:                       cache,
		MemTableSize:                s.opts.MemTableSize,
		MemTableStopWritesThreshold: 4,
		FormatMajorVersion:          pebble.FormatNewest,
		Logger:                      pebbleLogger{log: sugar, fatal: s.noteFatal},
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) { sugar.Warnw("pebble background error", "error", ErrLine(err)) },
			// Corruption found while reading a table is logged, not fatal:
			// the affected read fails and the spool keeps serving the rest.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				sugar.Errorw("pebble data corruption", "info", corruptionLine(info))
			},
			DiskSlow: func(info pebble.DiskSlowInfo) {
				sugar.Warnw("spool disk slow", "info", info.String())
			},
			WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
				sugar.Warnw("spool write stall", "reason", info.Reason)
			},
		},
	}
	po.Experimental.CompactionScheduler = newCompactionScheduler()
	return pebble.Open(s.dbDir, po)
}

// seedIDs makes NewID continue above the largest id in the store.
func (s *Spool) seedIDs() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixMeta), UpperBound: prefixEnd(prefixMeta)})
	if err != nil {
		return err
	}
	if it.Last() {
		s.ids.seed(string(it.Key()[len(prefixMeta):]))
	}
	return it.Close()
}

// pebbleLogger routes pebble's log lines to zap. Fatalf, which pebble calls
// when it considers the store unusable (a failed commit, a failed MANIFEST
// write) and whose default implementation exits the process, records the
// error so the spool refuses writes and reopens instead.
type pebbleLogger struct {
	log   *zap.SugaredLogger
	fatal func(error)
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Infof("pebble: "+format, plainArgs(args)...)
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Errorf("pebble: "+format, plainArgs(args)...)
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, plainArgs(args)...)
	l.log.Errorw("pebble fatal error; spool refuses writes until reopened", "error", msg)
	err := errors.New(msg)
	for _, a := range args { // keep the original error, so ENOSPC can be recognised
		if e, ok := a.(error); ok {
			err = fmt.Errorf("pebble: %w", e)
			break
		}
	}
	l.fatal(err)
}

// plainArgs replaces the errors among a format's arguments by their
// message on one line: pebble's errors (cockroachdb/errors) print their
// stack traces under %+v, kilobytes in one JSON field.
func plainArgs(args []any) []any {
	out := make([]any, len(args)) // args may be pebble's own slice
	for i, a := range args {
		if e, ok := a.(error); ok {
			a = ErrLine(e)
		}
		out[i] = a
	}
	return out
}

// ErrLine is err's message on one line, for a log field: never the stack
// trace that cockroachdb/errors prints under %+v (zap.Error adds it as
// errorVerbose), nor the "<corruption detail carrier>" that pebble joins
// to its corruption errors; newlines become "; ", a repeated line is
// dropped.
func ErrLine(err error) string {
	if err == nil {
		return ""
	}
	var parts []string
	for _, p := range strings.Split(err.Error(), "\n") {
		p = strings.TrimSpace(p)
		if p == "" || p == "<corruption detail carrier>" || slices.Contains(parts, p) {
			continue // a joined error often repeats its cause
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// errField is err as a log field, on one line (see ErrLine).
func errField(err error) zap.Field { return zap.String("error", ErrLine(err)) }

// corruptionLine is a pebble corruption event on one line: the file, the
// key range it holds, the error's message; DataCorruptionInfo.String
// prints the error with %+v, stack and all.
func corruptionLine(info pebble.DataCorruptionInfo) string {
	return fmt.Sprintf("file %s; keys %s; %s", info.Path, info.Bounds.String(), ErrLine(info.Details))
}

func (s *Spool) noteFatal(err error) { s.fatalE.CompareAndSwap(nil, &err) }

func (s *Spool) takeFatal() error {
	if p := s.fatalE.Swap(nil); p != nil {
		return *p
	}
	return nil
}

// Close stops the committer, closes pebble and releases the directory lock.
// Writes waiting to be committed when Close is called fail with ErrClosed or
// complete; none is left half done. Later calls return the first result.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.wg.Wait()
		s.mu.Lock()
		defer s.mu.Unlock()
		var err error
		if s.db != nil && !s.poisoned.Load() {
			err = closeDB(s.db)
		}
		s.db = nil
		if s.poisoned.Load() {
			err = errors.Join(err, errors.New("spool: store left open after pebble panicked in a commit"))
		}
		if cerr := s.lock.Close(); cerr != nil { // closing the file drops the flock
			err = errors.Join(err, cerr)
		}
		if err != nil {
			s.closeErr = fmt.Errorf("spool close %s: %w", s.dir, err)
		}
	})
	return s.closeErr
}

// NewID returns a new queue id: 26 characters, unique, and ordered by creation
// time as strings, also across restarts of the same spool.
func (s *Spool) NewID() string { return s.ids.next() }

// Key layout helpers.
const (
	prefixMeta       = "m/"
	prefixBody       = "b/"
	prefixRcpt       = "r/"
	prefixQuarantine = "q/"
)

func metaKey(id string) []byte { return append([]byte(prefixMeta), id...) }
func bodyKey(id string) []byte { return append([]byte(prefixBody), id...) }

// rcptPrefix is the prefix of all recipient keys of id; ids hold no '/', so
// it matches no other message's keys.
func rcptPrefix(id string) []byte {
	k := make([]byte, 0, len(prefixRcpt)+len(id)+1+4)
	k = append(k, prefixRcpt...)
	k = append(k, id...)
	return append(k, '/')
}

func rcptKey(id string, idx int) []byte {
	return binary.BigEndian.AppendUint32(rcptPrefix(id), uint32(idx))
}

// prefixEnd is the exclusive upper bound of all keys starting with p.
func prefixEnd(p string) []byte {
	e := []byte(p)
	e[len(e)-1]++
	return e
}

func validID(id string) error {
	if id == "" || len(id) > maxIDBytes || bytes.IndexByte([]byte(id), '/') >= 0 {
		return fmt.Errorf("spool: invalid queue id %q", id)
	}
	return nil
}

// Put stores m and its body durably: meta, body and one record per recipient
// in one batch, returning after the fsync. It sets m.ID when empty and
// m.Size to len(body). On error nothing of m is acknowledged; the message may
// or may not be found in the store after a restart (at least once). A body
// larger than ChunkSize is stored in chunks, as by PutBody.
func (s *Spool) Put(m *Message, body []byte) error {
	if len(body) > ChunkSize {
		w := s.NewBody()
		_, err := w.Write(body)
		if err == nil {
			err = s.PutBody(m, w)
		}
		if err != nil {
			w.Abort()
		}
		return err
	}
	ops, err := s.putOps(m, int64(len(body)), "", 0)
	if err != nil {
		return err
	}
	head, tail := bodyParts(body)
	ops = append(ops, op{key: bodyKey(m.ID), val: [][]byte{head[:], body, tail[:]}})
	if err := s.commit(ops, true); err != nil {
		return fmt.Errorf("spool put %s: %w", m.ID, err)
	}
	return nil
}

// putOps checks m and returns the writes of its meta and recipient records
// for a body of size bytes stored as described by bodyID and chunks (see
// layout). It sets m.ID when empty, m.Size and the body layout.
func (s *Spool) putOps(m *Message, size int64, bodyID string, chunks int) ([]op, error) {
	if m.ID == "" {
		m.ID = s.NewID()
	}
	if err := validID(m.ID); err != nil {
		return nil, fmt.Errorf("spool put: %w", err)
	}
	if len(m.Recipients) == 0 {
		return nil, fmt.Errorf("spool put %s: message has no recipients", m.ID)
	}
	if len(m.Recipients) > maxRecipients {
		return nil, fmt.Errorf("spool put %s: %d recipients, at most %d", m.ID, len(m.Recipients), maxRecipients)
	}
	if chunks > maxChunks {
		return nil, fmt.Errorf("spool put %s: body of %d bytes is too large", m.ID, size)
	}
	m.Size, m.bodyID, m.chunks = size, bodyID, chunks
	ops := make([]op, 0, 3+len(m.Recipients))
	ops = append(ops, op{key: metaKey(m.ID), val: [][]byte{encodeMeta(m)}})
	for i := range m.Recipients {
		ops = append(ops, op{key: rcptKey(m.ID, i), val: [][]byte{encodeRecipient(&m.Recipients[i])}})
	}
	return ops, nil
}

// withDB runs fn with the current database, shared with other readers.
func (s *Spool) withDB(fn func(db *pebble.DB) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		select {
		case <-s.quit:
			return ErrClosed
		default:
		}
		return ErrUnavailable
	}
	return fn(s.db)
}

// getCopy reads key; found is false when it is absent.
func getCopy(db *pebble.DB, key []byte) (val []byte, found bool, err error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	val = bytes.Clone(v)
	return val, true, closer.Close()
}

// Get returns the message id with all its recipients, or an error wrapping
// ErrNotFound or ErrCorrupt.
func (s *Spool) Get(id string) (*Message, error) {
	var m *Message
	err := s.withDB(func(db *pebble.DB) error {
		var err error
		m, err = readMessage(db, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("spool get %s: %w", id, err)
	}
	return m, nil
}

// readMessage reads meta and recipients of id.
func readMessage(db *pebble.DB, id string) (*Message, error) {
	rec, found, err := getCopy(db, metaKey(id))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, ErrNotFound
	}
	m, n, err := decodeMeta(rec)
	if err != nil {
		return nil, err
	}
	m.ID = id
	p := rcptPrefix(id)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return nil, err
	}
	m.Recipients, err = readRecipients(it, p, n)
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// readRecipients reads the n recipient records starting at the iterator's
// current position or, when it is not positioned on prefix p, after SeekGE(p).
func readRecipients(it *pebble.Iterator, p []byte, n int) ([]Recipient, error) {
	rcpts := make([]Recipient, 0, n)
	// Recovery walks ids in order, so the iterator usually already stands on
	// this message's first recipient; a seek would go through every level of
	// the store again (6x slower recovery of a million messages).
	ok := it.Valid() && bytes.HasPrefix(it.Key(), p)
	if !ok {
		ok = it.SeekGE(p)
	}
	for ; ok && bytes.HasPrefix(it.Key(), p); ok = it.Next() {
		k := it.Key()
		if len(k) != len(p)+4 || int(binary.BigEndian.Uint32(k[len(p):])) != len(rcpts) || len(rcpts) == n {
			return nil, fmt.Errorf("%w: unexpected recipient key %q (want index %d of %d)", ErrCorrupt, k, len(rcpts), n)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		r, err := decodeRecipient(v)
		if err != nil {
			return nil, fmt.Errorf("recipient %d: %w", len(rcpts), err)
		}
		rcpts = append(rcpts, r)
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if len(rcpts) != n {
		return nil, fmt.Errorf("%w: %d of %d recipient records present", ErrCorrupt, len(rcpts), n)
	}
	return rcpts, nil
}

// Body returns a copy of the whole body of message id, checked against its
// checksums, or an error wrapping ErrNotFound or ErrCorrupt. It holds the
// whole body in memory: deliveries stream it with OpenBody instead.
func (s *Spool) Body(id string) ([]byte, error) {
	r, err := s.OpenBody(id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var b bytes.Buffer
	b.Grow(int(min(r.Size(), 1<<30)))
	if _, err := b.ReadFrom(r); err != nil {
		return nil, fmt.Errorf("spool body %s: %w", id, err)
	}
	return b.Bytes(), nil
}

// recipientCount reads the recipient count from the meta record of id.
func (s *Spool) recipientCount(id string) (int, error) {
	l, err := s.layout(id)
	return l.rcpts, err
}

// layout reads where the records of message id are.
func (s *Spool) layout(id string) (layout, error) {
	var l layout
	err := s.withDB(func(db *pebble.DB) error {
		var err error
		l, err = readLayout(db, id)
		return err
	})
	return l, err
}

// Update durably records the recipient states in rcpts (keyed by recipient
// index) or, when done is true, deletes the whole message instead (rcpts is
// then ignored). It returns an error wrapping ErrNotFound when the message is
// not in the spool. The caller serialises updates of one message (the
// scheduler owns it); Update and Delete of the same id must not race.
//
// The deletion of a finished message is the one write that does not wait
// for its fsync: it returns once applied, and is synced with the next Put
// or at most Options.FinishSyncDelay later. It is not even written to the
// WAL file before then (pebble keeps an unsynced record in its buffer), so
// a crash of the process inside that window, not only a power cut, brings
// the message back with the recipient states it had before, and its
// delivered recipients are sent again: the at-least-once window after a
// remote 250 grows by at most that delay. In exchange a delivery never
// waits on the disk, and a busy spool pays one fsync per group of new
// messages, not one more for the deliveries between them.
func (s *Spool) Update(id string, rcpts map[int]Recipient, done bool) error {
	if done {
		if err := s.delete(id, true); err != nil {
			return fmt.Errorf("spool update %s: %w", id, err)
		}
		return nil
	}
	if len(rcpts) == 0 {
		return nil
	}
	n, err := s.recipientCount(id)
	if err != nil {
		return fmt.Errorf("spool update %s: %w", id, err)
	}
	ops := make([]op, 0, len(rcpts))
	for idx, r := range rcpts {
		if idx < 0 || idx >= n {
			return fmt.Errorf("spool update %s: recipient index %d out of range [0,%d)", id, idx, n)
		}
		ops = append(ops, op{key: rcptKey(id, idx), val: [][]byte{encodeRecipient(&r)}})
	}
	if err := s.commit(ops, false); err != nil {
		return fmt.Errorf("spool update %s: %w", id, err)
	}
	return nil
}

// Delete durably removes everything stored for message id. It returns an
// error wrapping ErrNotFound when there is no such message.
func (s *Spool) Delete(id string) error {
	if err := s.delete(id, false); err != nil {
		return fmt.Errorf("spool delete %s: %w", id, err)
	}
	return nil
}

// delete removes message id; lazy lets the write return before its fsync
// (see Update).
func (s *Spool) delete(id string, lazy bool) error {
	if err := validID(id); err != nil {
		return err
	}
	l, err := s.layout(id)
	if errors.Is(err, ErrCorrupt) {
		// Without a count, fall back to a range tombstone over the
		// recipient keys; rare, so its read cost does not matter. Chunks
		// of an unreadable meta record are left to Recover's orphan sweep.
		return s.commitMode([]op{{key: metaKey(id), del: true}, {key: bodyKey(id), del: true},
			{key: rcptPrefix(id), end: prefixEnd(string(rcptPrefix(id))), del: true}}, false, lazy)
	}
	if err != nil {
		return err
	}
	return s.commitMode(deleteOps(id, l), false, lazy)
}

// deleteOps are the point deletes of a message with the layout l. Point
// deletes, not a range tombstone: thousands of range tombstones in a memtable
// would slow every read of it.
func deleteOps(id string, l layout) []op {
	ops := make([]op, 0, l.rcpts+l.chunks+2)
	ops = append(ops, op{key: metaKey(id), del: true})
	if l.chunks == 0 {
		ops = append(ops, op{key: bodyKey(id), del: true})
	}
	for i := 0; i < l.chunks; i++ {
		ops = append(ops, op{key: chunkKey(l.bodyID, i), del: true})
	}
	for i := 0; i < l.rcpts; i++ {
		ops = append(ops, op{key: rcptKey(id, i), del: true})
	}
	return ops
}

// probeKey is written and deleted in one synced batch by Probe; it is in
// no message's key space, so Recover never meets it.
var probeKey = []byte("p/probe")

// Probe shows the spool can take a message now: it writes a key and its
// delete in one batch through the committer, as a Put would (refused below
// MinFreeBytes, and while the store is unavailable after a write failure),
// and returns after the fsync. ctx bounds the wait, not the write: a probe
// given up on is still committed (and is harmless). Concurrent probes
// share group commits with the mail.
func (s *Spool) Probe(ctx context.Context) error {
	r := &commitReq{ops: []op{{key: probeKey, val: [][]byte{[]byte("probe")}}, {key: probeKey, del: true}},
		put: true, done: make(chan error, 1)}
	r.size = r.ops[0].size() + r.ops[1].size()
	select {
	case s.reqs <- r:
	case <-s.quit:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("spool probe: %w", ctx.Err())
	}
	select {
	case err := <-r.done:
		if err != nil {
			return fmt.Errorf("spool probe: %w", err)
		}
		return nil
	case <-s.stopped:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("spool probe: %w", ctx.Err())
	}
}
