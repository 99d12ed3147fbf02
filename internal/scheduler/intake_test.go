package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// holdMaintenance registers a first MailQueueMaintain hook that blocks
// every maintenance pass (holding maintainMu) until the returned release
// is called; entered receives once when a pass is held.
func (h *harness) holdMaintenance() (entered <-chan struct{}, release func()) {
	in := make(chan struct{}, 1)
	gate := make(chan struct{})
	h.reg.MailQueueMaintain.RegisterFirst(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int {
		select {
		case in <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-time.After(waitLimit): // a hang guard: the test fails elsewhere
		}
		return 0
	})
	var once bool
	return in, func() {
		if !once {
			once = true
			close(gate)
		}
	}
}

// spoolOnly stores a message without submitting it, as injection does
// before its hand-off.
func (h *harness) spoolOnly(rcpt string) *spool.Message {
	h.t.Helper()
	m := &spool.Message{Sender: "", Received: h.clock.Now(), Recipients: []spool.Recipient{{Addr: rcpt}}}
	if err := h.sp.Put(m, []byte("Subject: intake\r\n\r\nhello\r\n")); err != nil {
		h.t.Fatal(err)
	}
	return m
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("no %s", what)
	}
}

// TestIntakeBusyAndOverflow: while maintenance is held, Intake returns at
// once; Busy turns true at capacity; a message past capacity goes to the
// overflow as an id; on release every message, the overflowed one read
// back from the spool, is delivered, and Busy is false again.
func TestIntakeBusyAndOverflow(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(41, 10)}, nil)
	h := newHarness(t, port, func(o *Options) {
		o.IntakeCapacity = 2
		o.MaintainInterval = time.Hour // only the intake runs maintenance here
	})
	h.mxFor("intake.test", ip(41, 10))
	// Resolved now: otherwise the first maintenance may run on a resolver
	// worker when its lookup ends, and the intake goroutine, not held
	// there, takes the other messages (a flake under -race).
	h.resolved("intake.test")
	entered, release := h.holdMaintenance()
	defer release()
	h.s.Start()

	var ms []*spool.Message
	for i := range 4 {
		ms = append(ms, h.spoolOnly(fmt.Sprintf("r%d@intake.test", i)))
	}
	h.s.Intake(ms[0])
	wait(t, entered, "maintenance pass for the first message")
	// The intake goroutine is stuck in ms[0]'s Submit, inside the hook.
	if h.s.Busy() {
		t.Fatal("busy with nothing waiting")
	}
	h.s.Intake(ms[1])
	if h.s.Busy() {
		t.Fatal("busy with one of two waiting")
	}
	h.s.Intake(ms[2])
	if !h.s.Busy() {
		t.Fatal("not busy at capacity")
	}
	h.s.Intake(ms[3])
	h.s.in.mu.Lock()
	q, over := len(h.s.in.q), h.s.in.overflow
	h.s.in.mu.Unlock()
	if q != 2 || len(over) != 1 || over[0] != ms[3].ID {
		t.Fatalf("intake holds %d messages and overflow %v; want 2 and [%s]", q, over, ms[3].ID)
	}

	release()
	got := map[string]bool{}
	for range ms {
		e := h.next(outcomeEvents...)
		if e.name != "delivered" {
			t.Errorf("%s: %s %v", e.str("recipient"), e.name, e.fields)
		}
		got[e.str("queue_id")] = true
	}
	for _, m := range ms {
		if !got[m.ID] {
			t.Errorf("message %s not delivered", m.ID)
		}
	}
	if n := len(sinks[0].WaitMessages(t, len(ms))); n != len(ms) {
		t.Errorf("sink got %d messages", n)
	}
	if h.s.Busy() {
		t.Error("still busy with everything delivered")
	}
}

// TestIntakeCloseLeavesSpooled: Close does not wait for what is still in
// the intake, does not lose it (it is in the spool, and a start's
// recovery finds it), and Intake after Close keeps nothing.
func TestIntakeCloseLeavesSpooled(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(42, 10)}, nil)
	h := newHarness(t, port, func(o *Options) { o.MaintainInterval = time.Hour })
	h.mxFor("close.test", ip(42, 10))
	h.resolved("close.test")
	entered, release := h.holdMaintenance()
	defer release()
	h.s.Start()
	first, second := h.spoolOnly("a@close.test"), h.spoolOnly("b@close.test")
	h.s.Intake(first)
	wait(t, entered, "maintenance pass for the first message")
	h.s.Intake(second)

	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		closed <- h.s.Close(ctx)
	}()
	<-h.s.stop // Close has begun: the intake goroutine will stop after its Submit
	release()
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	h.closed = true

	h.s.mu.Lock()
	_, submitted := h.s.msgs[second.ID]
	h.s.mu.Unlock()
	if submitted {
		t.Fatal("the message waiting in the intake was submitted after Close began")
	}
	third := h.spoolOnly("c@close.test")
	h.s.Intake(third)
	if n := h.s.in.waiting.Load(); n != 1 {
		t.Errorf("intake holds %d messages after Close, want the 1 left from before", n)
	}
	found := map[string]bool{}
	if _, err := h.sp.Recover(func(m *spool.Message) error { found[m.ID] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*spool.Message{second, third} {
		if !found[m.ID] {
			t.Errorf("message %s not recovered from the spool", m.ID)
		}
	}
}
