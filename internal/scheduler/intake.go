package scheduler

import (
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/spool"
)

// DefaultIntakeCapacity is the intake's capacity when Options leave it 0:
// at a few hundred bytes of metadata per message (bodies stay on disk),
// about 20 MB when full, and at the rates of BENCHMARKS.md tens of seconds
// of injection, long enough to ride out a slow maintenance pass.
const DefaultIntakeCapacity = 65536

// intake is the hand-off between injection and the scheduler (DESIGN.md
// invariant 8: the 250 never waits on the scheduler). Intake appends a
// message under a mutex held only for that append and wakes the intake
// goroutine, which runs Submit — the part that may take maintainMu, run
// the __mail_queue_maintain chain and dial — off the injection path.
//
// When full it keeps the message's id alone in an overflow list, read
// back from the spool by the intake goroutine: the message is already
// fsync'd and acknowledged, so it must be delivered without a restart,
// and an id is all the memory it may cost. The injection listener avoids
// the overflow by asking Busy before MAIL; overflow holds what was past
// that question when the intake filled.
//
// Lock order: intake.mu is a leaf; nothing is called while holding it.
type intake struct {
	mu       sync.Mutex
	q        []*spool.Message // waiting, in arrival order
	overflow []string         // ids of messages that came with the intake full
	closed   bool             // Close ran: what comes now stays spooled for the next start

	// waiting counts messages taken in whose Submit has not begun (q,
	// overflow and the batch in the goroutine's hands). It is what Busy
	// and the capacity are measured against.
	waiting atomic.Int64
	cap     int64
	busyAt  int64

	wake chan struct{} // capacity 1: "there is work"
	done chan struct{} // closed when the intake goroutine returns
}

func newIntake(capacity int) *intake {
	if capacity <= 0 {
		capacity = DefaultIntakeCapacity
	}
	// Busy a sixteenth before full: the headroom is for the sessions that
	// asked Busy just before it turned and are still sending their DATA.
	busyAt := int64(capacity - capacity/16)
	return &intake{cap: int64(capacity), busyAt: max(busyAt, 1),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Intake takes a spooled message for submission and returns at once: it
// never blocks on the scheduler, takes maintainMu, runs a hook or dials.
// The scheduler's own goroutine (started by Start) submits it. After
// Close it does nothing: the message is in the spool and recovered at the
// next start. The scheduler keeps m; the caller must not change it.
func (s *Scheduler) Intake(m *spool.Message) {
	in := s.in
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return
	}
	if in.waiting.Load() < in.cap {
		in.q = append(in.q, m)
	} else {
		in.overflow = append(in.overflow, m.ID)
	}
	in.waiting.Add(1)
	in.mu.Unlock()
	s.received(len(m.Recipients))
	select {
	case in.wake <- struct{}{}:
	default: // already signalled
	}
}

// Busy reports whether the intake is at or near its capacity. The
// injection listener asks it before MAIL and answers 451 4.3.2 while it
// holds, so the intake rarely overflows.
func (s *Scheduler) Busy() bool { return s.in.waiting.Load() >= s.in.busyAt }

// Queued is the number of messages in the queue: those the scheduler
// holds plus those still waiting in the intake. A message moving from the
// intake to the scheduler may be counted twice or not at all for an
// instant; the injection listener's high watermark does not mind. It
// takes no lock.
func (s *Scheduler) Queued() int64 { return s.queued.Load() + s.in.waiting.Load() }

// take moves everything waiting into the caller's buffers (emptied and
// reused by the caller), swapping slices so the intake keeps the old ones.
func (in *intake) take(msgs []*spool.Message, ids []string) ([]*spool.Message, []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	msgs, in.q = in.q, msgs[:0]
	ids, in.overflow = in.overflow, ids[:0]
	return msgs, ids
}

// close stops taking messages and reports how many were still waiting.
func (in *intake) close() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	return in.waiting.Load()
}

// runIntake submits what Intake takes in, until stop. Messages still
// waiting at stop stay in the spool for the next start's recovery; stop
// is checked between messages so Close does not wait for a full intake.
func (s *Scheduler) runIntake() {
	in := s.in
	defer close(in.done)
	var msgs []*spool.Message
	var ids []string
	for {
		select {
		case <-s.stop:
			return
		case <-in.wake:
		}
		for {
			msgs, ids = in.take(msgs, ids)
			if len(msgs) == 0 && len(ids) == 0 {
				break
			}
			for i, m := range msgs {
				msgs[i] = nil // the buffer is reused: drop the message with it
				if s.stopping() {
					return
				}
				in.waiting.Add(-1)
				s.submitTaken(m)
			}
			for i, id := range ids {
				ids[i] = ""
				if s.stopping() {
					return
				}
				in.waiting.Add(-1)
				m, err := s.opts.Spool.Get(id)
				if err != nil {
					// Gone (cancelled) or unreadable: a message that is
					// still there is found again at the next start.
					s.log.Error("intake overflow: reading a spooled message back failed",
						zap.String("queue_id", id), zap.Error(err))
					continue
				}
				s.submitTaken(m)
			}
		}
	}
}

func (s *Scheduler) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *Scheduler) submitTaken(m *spool.Message) {
	if err := s.Submit(m); err != nil {
		// Only a duplicate id is refused: the message is queued already.
		s.log.Error("scheduler refused a spooled message", zap.String("queue_id", m.ID), zap.Error(err))
	}
}
