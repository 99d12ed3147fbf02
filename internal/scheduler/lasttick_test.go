package scheduler

import (
	"testing"
	"time"
)

// TestLastTick: zero until the loop Start runs has ticked, then the wall
// time of a tick (not the fake clock's), and a manual Tick does not count.
func TestLastTick(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(o *Options) { o.MaintainInterval = 5 * time.Millisecond })
	h.clock.Advance(-72 * time.Hour) // the scheduler's clock far from the wall's
	h.s.Tick(h.clock.Now())
	if lt := h.s.LastTick(); !lt.IsZero() {
		t.Fatalf("LastTick before Start = %v, want zero", lt)
	}
	before := time.Now()
	h.s.Start()
	deadline := time.Now().Add(10 * time.Second)
	for h.s.LastTick().IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("no tick within 10s of Start at a 5ms interval")
		}
		time.Sleep(time.Millisecond) // polling an atomic: no event to wait on
	}
	if lt := h.s.LastTick(); lt.Before(before) {
		t.Fatalf("LastTick %v is before Start (%v): not the wall clock", lt, before)
	}
}
