package spool

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// op is one write: a set of key to the concatenation of val, a delete of key,
// or (end != nil) a range delete of [key, end).
type op struct {
	key []byte
	end []byte
	val [][]byte
	del bool
}

func (o *op) size() int {
	n := len(o.key) + len(o.end) + 16
	for _, v := range o.val {
		n += len(v)
	}
	return n
}

// commitReq is one caller's writes, applied atomically (they always land in
// the same batch).
type commitReq struct {
	ops  []op
	size int
	put  bool // adds a message: refused when the disk is low on space
	lazy bool // may be answered before its fsync (see Update)
	// epoch, when set, is the Spool.reopens value the request's earlier
	// unsynced writes were made under (a chunked body's PutBody): after a
	// reopen they may be lost, so the request is refused.
	epoch *uint64
	done  chan error
}

// commit hands ops to the committer and waits until they are durable or have
// failed.
func (s *Spool) commit(ops []op, put bool) error {
	return s.commitMode(ops, put, false)
}

// commitMode is commit, or with lazy, a commit answered once applied and
// synced later by the committer (see Update).
func (s *Spool) commitMode(ops []op, put, lazy bool) error {
	return s.send(&commitReq{ops: ops, put: put, lazy: lazy, done: make(chan error, 1)})
}

// send hands r to the committer and waits for its answer.
func (s *Spool) send(r *commitReq) error {
	ops := r.ops
	for i := range ops {
		r.size += ops[i].size()
	}
	select {
	case s.reqs <- r:
	case <-s.quit:
		return ErrClosed
	}
	select {
	case err := <-r.done:
		return err
	case <-s.stopped:
		// The committer answers every request it took before it stopped;
		// one still in the queue was never written.
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// run is the committer: it takes a request, adds whatever else is already
// waiting (up to MaxGroupBytes), writes all of it in one batch with one
// fsync, and answers everyone. Exactly one commit is in flight at any time,
// which is what keeps a WAL failure from reaching pebble's panicking paths
// (see the package comment).
//
// A group of lazy requests only is written without a sync and answered at
// once; the committer then owes a sync, which the next synced group pays
// (the WAL is sequential, so its fsync covers every earlier write) or, if
// none comes within FinishSyncDelay, an empty synced batch.
func (s *Spool) run() {
	defer s.wg.Done()
	defer close(s.stopped)
	group := make([]*commitReq, 0, 256)
	owed := time.NewTimer(time.Hour)
	owed.Stop()
	var syncOwed bool
	for {
		var first *commitReq
		var owedC <-chan time.Time
		if syncOwed {
			owedC = owed.C
		}
		select {
		case first = <-s.reqs:
		case <-owedC:
			// A failure is already recorded (s.broken) for the next
			// commit to report; the lazy writers were answered.
			_ = s.commitGroup(nil, 0, true)
			syncOwed = false
			continue
		case <-s.quit:
			// Closing pebble flushes and syncs its WAL, so what is owed
			// is paid by Close.
			owed.Stop()
			return
		}
		group = append(group[:0], first)
		size := first.size
	gather:
		for size < s.opts.MaxGroupBytes {
			select {
			case r := <-s.reqs:
				group = append(group, r)
				size += r.size
			default:
				break gather
			}
		}
		group, size = s.refuseOnLowSpace(group, size)
		group, size = s.refuseStale(group, size)
		if len(group) > 0 {
			sync := slices.ContainsFunc(group, func(r *commitReq) bool { return !r.lazy })
			err := s.commitGroup(group, size, sync)
			for _, r := range group {
				r.done <- err
			}
			switch {
			case sync && err == nil:
				if syncOwed {
					syncOwed = false
					owed.Stop()
				}
			case !sync && err == nil && !syncOwed:
				syncOwed = true
				owed.Reset(s.opts.FinishSyncDelay)
			}
		}
		clear(group[:cap(group)])
	}
}

// refuseOnLowSpace answers the group's Puts with ErrNoSpace when the file
// system has less than MinFreeBytes available, and returns the rest. Pebble
// dies (an unrecoverable "unlock of unlocked mutex") if a WAL write fails
// while it rotates the WAL, so the spool stops taking new mail before the
// disk is actually full, while deliveries (updates, deletes) go on and free
// space.
func (s *Spool) refuseOnLowSpace(group []*commitReq, size int) ([]*commitReq, int) {
	if s.opts.MinFreeBytes < 0 || !slices.ContainsFunc(group, func(r *commitReq) bool { return r.put }) {
		return group, size
	}
	free, ok := s.freeBytes()
	if !ok || free >= uint64(s.opts.MinFreeBytes) {
		return group, size
	}
	err := fmt.Errorf("%w: %d bytes free in %s, below the %d kept in reserve: %w",
		ErrNoSpace, free, s.dbDir, s.opts.MinFreeBytes, syscall.ENOSPC)
	kept := group[:0]
	for _, r := range group {
		if r.put {
			r.done <- err
			size -= r.size
			continue
		}
		kept = append(kept, r)
	}
	return kept, size
}

// refuseStale answers the group's requests whose unsynced writes a reopen
// of the store may have lost with ErrUnavailable, and returns the rest. It
// reopens a broken store first, as commitGroup would, so that a reopen
// cannot come between this check and the write.
func (s *Spool) refuseStale(group []*commitReq, size int) ([]*commitReq, int) {
	if !slices.ContainsFunc(group, func(r *commitReq) bool { return r.epoch != nil }) {
		return group, size
	}
	if s.broken != nil {
		s.tryReopen()
	}
	now := s.reopens.Load()
	kept := group[:0]
	for _, r := range group {
		if r.epoch != nil && *r.epoch != now {
			r.done <- fmt.Errorf("%w: the store was reopened while the body was written", ErrUnavailable)
			size -= r.size
			continue
		}
		kept = append(kept, r)
	}
	return kept, size
}

// spaceCheckEvery bounds how often LowSpace reads the free space itself
// (a statfs) while space is not low: the listeners ask it at every MAIL
// command.
const spaceCheckEvery = time.Second

// LowSpace reports whether new messages are refused now because the spool's
// file system has less than Options.MinFreeBytes free. It answers what the
// last check found: the committer's (one per group commit holding a Put,
// and one per reopen attempt) or its own. While space is fine it checks
// when the last check is over spaceCheckEvery old, so it costs an atomic
// load and a statfs at most once a second; while space is low it checks
// at every call (a refused MAIL is cheap anyway), so mail is taken again
// as soon as space returns. The listeners can so refuse a message at MAIL
// instead of after its body. Always false when the check is off
// (MinFreeBytes < 0) or the file system cannot say.
//
// Once low, it stays low until the free space is back above the reserve
// plus a tenth (lowSpaceMargin): a disk filling up hovers at the reserve
// (deliveries and pebble's compactions free a little, the next message
// takes it), and the state, logged at each change, must not flap with it.
// Puts are refused below the reserve itself.
func (s *Spool) LowSpace() bool {
	if s.opts.MinFreeBytes < 0 {
		return false
	}
	due := s.spaceLow.Load() || time.Since(time.Unix(0, s.spaceChecked.Load())) >= spaceCheckEvery
	if due && s.spaceMu.TryLock() {
		// Another caller checking now answers for this one too.
		s.checkSpaceLocked()
		s.spaceMu.Unlock()
	}
	return s.spaceLow.Load()
}

// MinFree returns the free space below which Puts are refused: the
// Options.MinFreeBytes in force, after its default (negative: off).
func (s *Spool) MinFree() int64 { return s.opts.MinFreeBytes }

// freeBytes reports the space available to the spool; ok is false when the
// file system cannot say. It records the low-space state LowSpace reports.
func (s *Spool) freeBytes() (uint64, bool) {
	s.spaceMu.Lock()
	defer s.spaceMu.Unlock()
	return s.checkSpaceLocked()
}

// checkSpaceLocked is freeBytes with spaceMu held.
func (s *Spool) checkSpaceLocked() (uint64, bool) {
	s.spaceChecked.Store(time.Now().UnixNano())
	u, err := s.opts.FS.GetDiskUsage(s.dbDir)
	if err != nil {
		if !s.diskUsageWarned {
			s.diskUsageWarned = true
			s.log.Warn("spool cannot read free disk space; low-space guard off", errField(err))
		}
		s.setLowSpace(false, 0)
		return 0, false
	}
	limit := uint64(s.opts.MinFreeBytes)
	if s.spaceLow.Load() {
		limit += lowSpaceMargin(limit)
	}
	s.setLowSpace(s.opts.MinFreeBytes >= 0 && u.AvailBytes < limit, u.AvailBytes)
	return u.AvailBytes, true
}

// lowSpaceMargin is how far above the reserve the free space must be back
// before the low-space state ends: a tenth of it.
func lowSpaceMargin(reserve uint64) uint64 { return reserve / 10 }

// setLowSpace records the low-space state and logs a change of it, once
// per change: a warning going below the reserve and coming back, never a
// line per refused message. Called with spaceMu held.
func (s *Spool) setLowSpace(low bool, free uint64) {
	if s.spaceLow.Swap(low) == low {
		return
	}
	fields := []zap.Field{zap.Uint64("free_bytes", free), zap.Int64("min_free_bytes", s.opts.MinFreeBytes),
		zap.String("dir", s.dbDir)}
	if low {
		s.log.Warn("spool free space below the reserve (spool.min_free); new messages refused until space returns", fields...)
		return
	}
	s.log.Warn("spool free space back above the reserve (spool.min_free); new messages accepted again", fields...)
}

// commitGroup writes the group's ops in one batch, synced when sync is set;
// an empty synced group makes everything written before it durable.
func (s *Spool) commitGroup(group []*commitReq, size int, sync bool) error {
	if s.broken != nil && !s.tryReopen() {
		return s.unavailable()
	}
	db := s.db
	b := db.NewBatchWithSize(size)
	for _, r := range group {
		for i := range r.ops {
			if err := addOp(b, &r.ops[i]); err != nil {
				_ = b.Close()
				return fmt.Errorf("build batch: %w", err)
			}
		}
	}
	if len(group) == 0 {
		// An empty batch is not logged; a LogData record is, and its
		// synced write syncs the WAL up to it.
		if err := b.LogData(nil, nil); err != nil {
			_ = b.Close()
			return fmt.Errorf("build batch: %w", err)
		}
	}
	if err := s.apply(db, b, sync); err != nil {
		// The batch is not closed: pebble may still hold pointers into it.
		s.broken = err
		s.lastReopen = time.Now()
		s.log.Error("spool write failed; refusing writes until the store is reopened",
			errField(err), zap.Bool("no_space", errors.Is(err, ErrNoSpace)), zap.Int("group", len(group)))
		return err
	}
	_ = b.Close()
	return nil
}

func addOp(b *pebble.Batch, o *op) error {
	switch {
	case o.end != nil:
		return b.DeleteRange(o.key, o.end, nil)
	case o.del:
		return b.Delete(o.key, nil)
	}
	n := 0
	for _, v := range o.val {
		n += len(v)
	}
	d := b.SetDeferred(len(o.key), n)
	copy(d.Key, o.key)
	off := 0
	for _, v := range o.val {
		off += copy(d.Value[off:], v)
	}
	return d.Finish()
}

// apply commits b with a WAL write, synced when sync is set, and reports
// any failure as an error: a returned error, an error pebble passed to
// Fatalf, or a panic.
func (s *Spool) apply(db *pebble.DB, b *pebble.Batch, sync bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// Pebble panics with its commit lock held (a WAL rotation that
			// failed): the database can neither take writes nor be closed.
			s.poisoned.Store(true)
			perr, ok := r.(error)
			if !ok {
				perr = fmt.Errorf("%v", r)
			}
			err = classify(fmt.Errorf("pebble panicked during commit (store unusable until restart): %w", perr))
		}
	}()
	// A stale Fatalf from a background job (a failed flush's MANIFEST write)
	// also means the store must be reopened.
	if ferr := s.takeFatal(); ferr != nil {
		return classify(ferr)
	}
	if !sync {
		// No sync to fail; an error writing the record comes back here or
		// through Fatalf, and a write error behind it surfaces at the next
		// sync.
		if err := db.Apply(b, pebble.NoSync); err != nil {
			return classify(err)
		}
		if ferr := s.takeFatal(); ferr != nil {
			return classify(ferr)
		}
		return nil
	}
	// ApplyNoSyncWait returns the WAL sync error from SyncWait as a value;
	// Apply would hand it to Logger.Fatalf and return nil.
	if err := db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		return classify(err)
	}
	if ferr := s.takeFatal(); ferr != nil {
		// An error before the record reached the WAL goes to Fatalf; the
		// sync it would wait for was never queued, so SyncWait would hang.
		return classify(ferr)
	}
	if err := b.SyncWait(); err != nil {
		return classify(err)
	}
	return nil
}

// closeDB closes db, turning a panic (pebble's answer to some misuse) into
// an error.
func closeDB(db *pebble.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pebble close panicked: %v", r)
		}
	}()
	return db.Close()
}

// classify joins ErrNoSpace to a disk-full error.
func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// unavailable is the error for writes refused while the store is broken.
func (s *Spool) unavailable() error {
	return fmt.Errorf("%w (%w)", ErrUnavailable, s.broken)
}

// tryReopen closes and reopens pebble after a write failure, at most once per
// ReopenInterval, and reports whether the store takes writes again. Pebble
// replays its WAL on open, so every write that was synced before the failure
// is there. It never waits for readers: if one holds the store it tries again
// at a later write.
func (s *Spool) tryReopen() bool {
	if s.poisoned.Load() {
		return false
	}
	if s.opts.ReopenInterval > 0 && time.Since(s.lastReopen) < s.opts.ReopenInterval {
		return false
	}
	if errors.Is(s.broken, ErrNoSpace) && s.opts.MinFreeBytes >= 0 {
		// Reopening replays the WAL; not worth it before space is back.
		if free, ok := s.freeBytes(); ok && free < uint64(s.opts.MinFreeBytes) {
			return false
		}
	}
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	s.lastReopen = time.Now()
	if s.db != nil {
		if err := closeDB(s.db); err != nil {
			s.log.Warn("spool close after write failure", errField(err))
		}
		s.db = nil
	}
	s.takeFatal() // whatever the old instance reported is moot now
	db, err := s.openDB(false)
	if err != nil {
		s.log.Error("spool reopen failed; writes still refused", errField(err))
		s.broken = classify(fmt.Errorf("reopen: %w", err))
		// Open it read-only (it writes nothing) so reads go on meanwhile.
		if ro, rerr := s.openDB(true); rerr == nil {
			s.db = ro
		} else {
			s.log.Error("spool read-only reopen failed; reads fail too", errField(rerr))
		}
		return false
	}
	s.db = db
	s.reopens.Add(1)
	s.log.Info("spool reopened after write failure; writes resume", zap.NamedError("cause", s.broken))
	s.broken = nil
	return true
}
