package spool

import (
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// compactionScheduler is pebble's default concurrency-limit scheduler without
// its sampling goroutine. Pebble starts that goroutine in Open before the
// steps that can fail and does not stop it when they do, so each failed
// reopen during a disk-full episode would leak one. Here grants are made
// when pebble asks (TrySchedule) and when a compaction finishes (Done);
// a rise of the allowed concurrency caused by a flush is picked up at the
// next of either, which for a spool that rarely compacts is soon enough.
type compactionScheduler struct {
	db pebble.DBForCompaction
	mu sync.Mutex
	// running counts granted compactions not yet Done.
	running      int
	unregistered bool
	granting     bool
	grantDone    *sync.Cond
}

var _ pebble.CompactionScheduler = (*compactionScheduler)(nil)

func newCompactionScheduler() *compactionScheduler {
	s := &compactionScheduler{}
	s.grantDone = sync.NewCond(&s.mu)
	return s
}

func (s *compactionScheduler) Register(_ int, db pebble.DBForCompaction) { s.db = db }

func (s *compactionScheduler) Unregister() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unregistered = true
	for s.granting {
		s.grantDone.Wait()
	}
}

func (s *compactionScheduler) TrySchedule() (bool, pebble.CompactionGrantHandle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unregistered || s.db.GetAllowedWithoutPermission() <= s.running {
		return false, nil
	}
	s.running++
	return true, s
}

// UpdateGetAllowedWithoutPermission is called with pebble's DB mutex held, so
// it must not call back into the DB; see the type comment.
func (s *compactionScheduler) UpdateGetAllowedWithoutPermission() {}

// The CompactionGrantHandle side.
func (s *compactionScheduler) Started()                                          {}
func (s *compactionScheduler) MeasureCPU(pebble.CompactionGoroutineKind)         {}
func (s *compactionScheduler) CumulativeStats(pebble.CompactionGrantHandleStats) {}

// Done is called without DB locks held; it hands the freed slot to a waiting
// compaction, as pebble's scheduler does.
func (s *compactionScheduler) Done() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	for s.granting {
		s.grantDone.Wait()
	}
	if s.unregistered {
		return
	}
	toGrant := s.db.GetAllowedWithoutPermission() - s.running
	if toGrant <= 0 {
		return
	}
	s.granting = true
	s.mu.Unlock()
	for ; toGrant > 0; toGrant-- {
		if waiting, _ := s.db.GetWaitingCompaction(); !waiting {
			break
		}
		if !s.db.Schedule(s) {
			break
		}
		s.mu.Lock()
		s.running++
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.granting = false
	s.grantDone.Broadcast()
}
