package scheduler

import (
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

// TestOnTickStopsWhileATickIsStuck: Options.OnTick beats after every tick
// of Start's ticker with the tick's time, and not while a tick is stuck in
// a maintain hook: the heartbeat systemd's watchdog is fed from. A
// delivery due only after the clock is advanced makes the ticker's own
// goroutine (not the intake, not a resolver) run the held hook.
func TestOnTickStopsWhileATickIsStuck(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(47, 10)}, nil)
	beats := make(chan time.Time, 1000)
	h := newHarness(t, port, func(o *Options) {
		o.MaintainInterval = 5 * time.Millisecond
		o.OnTick = func(now time.Time) {
			select {
			case beats <- now:
			default: // the test reads what it needs; a full buffer drops beats
			}
		}
	})
	h.mxFor("beat.test", ip(47, 10))
	h.resolved("beat.test")

	later := h.clock.Now().Add(time.Hour)
	m := &spool.Message{Received: h.clock.Now(), Recipients: []spool.Recipient{{Addr: "r@beat.test", NextAttempt: later}}}
	if err := h.sp.Put(m, []byte("Subject: beat\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil { // to the delayed queue: no maintenance yet
		t.Fatal(err)
	}
	entered, release := h.holdMaintenance()
	defer release()
	h.s.Start()

	select {
	case now := <-beats:
		if now.After(h.clock.Now()) {
			t.Fatalf("beat at %v, after the clock's %v", now, h.clock.Now())
		}
	case <-time.After(waitLimit):
		t.Fatal("no beat from a running ticker")
	}

	due := h.clock.Advance(2 * time.Hour)
	wait(t, entered, "maintenance of the due delivery, held")
	// The tick that found the delivery due is the first to see the
	// advanced clock, and it is stuck in the hook: no beat carries that
	// time yet.
	for drained := false; !drained; {
		select {
		case now := <-beats:
			if !now.Before(due) {
				t.Fatalf("beat at %v while the tick at %v is stuck", now, due)
			}
		default:
			drained = true
		}
	}
	release()
	deadline := time.After(waitLimit)
	for {
		select {
		case now := <-beats:
			if !now.Before(due) {
				return // beating again once the tick finished
			}
		case <-deadline:
			t.Fatal("no beat after the stuck tick was released")
		}
	}
}
