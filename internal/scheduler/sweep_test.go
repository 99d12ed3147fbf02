package scheduler

import (
	"fmt"
	"testing"
	"time"
)

// TestIdleDomainsForgotten: mail to many domains that all bounce (no such
// domain) leaves no domain record behind once two sweeps have passed: the
// tick sweeps every SweepInterval, and a record idle at one sweep and
// untouched until the next is dropped.
func TestIdleDomainsForgotten(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 25, func(o *Options) { o.SweepInterval = time.Minute })
	const domains = 200
	for i := range domains {
		// A null sender, so the bounces make no DSN (and no domain of
		// their own).
		h.inject("", fmt.Sprintf("u@gone%d.test", i))
	}
	for range domains {
		if e := h.next(outcomeEvents...); e.name != "bounced" {
			t.Fatalf("outcome %s, want bounced (no such domain)", e.name)
		}
	}
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records after the bounces, want %d", n, domains)
	}
	h.s.Tick(h.clock.Now()) // the first tick starts the sweep clock
	h.s.Tick(h.clock.Advance(time.Minute))
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records after one sweep, want all %d (idle once is kept)", n, domains)
	}
	h.s.Tick(h.clock.Advance(30 * time.Second))
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records before the sweep interval passed, want %d", n, domains)
	}
	h.s.Tick(h.clock.Advance(30 * time.Second))
	if n := h.q.Stats().Domains; n != 0 {
		t.Errorf("%d domain records after two sweeps, want 0", n)
	}
	// A forgotten domain is mailed again as if new.
	h.inject("", "u@gone1.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" {
		t.Errorf("outcome %s after the record was forgotten", e.name)
	}
}
