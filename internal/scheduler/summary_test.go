package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/spool"
)

// TestSummary: messages injected through Intake to a loopback receiver
// that takes some recipients, refuses one for good and one for now, move
// the summary's totals and last-minute counts by exactly what happened;
// the queue, connection cap, spool and suspension figures are the
// scheduler's own; and the last minute moves with the clock while the
// totals stay.
func TestSummary(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(72, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			switch local := strings.Split(to, "@")[0]; {
			case strings.HasPrefix(local, "nouser"):
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user")
			case local == "full":
				return loopbacktest.Reply(452, [3]int{4, 2, 2}, "mailbox full")
			}
			return nil
		}}
	})
	h := newHarness(t, port, nil)
	h.mxFor("sum.test", ip(72, 10))
	h.resolved("sum.test")
	h.s.Start()
	start := h.clock.Now()

	// The null sender: no DSN, so every outcome counted is one of ours.
	intake := func(rcpts ...string) {
		t.Helper()
		m := &spool.Message{Received: h.clock.Now()}
		for _, r := range rcpts {
			m.Recipients = append(m.Recipients, spool.Recipient{Addr: r})
		}
		if err := h.sp.Put(m, []byte("Subject: sum\r\n\r\nhello\r\n")); err != nil {
			t.Fatal(err)
		}
		h.s.Intake(m)
		for range rcpts {
			h.next(outcomeEvents...)
		}
	}
	check := func(step string, totals, last Counts, msgs int, rcpts int64) Summary {
		t.Helper()
		s := h.s.Summary()
		if s.Totals != totals {
			t.Errorf("%s: totals %+v, want %+v", step, s.Totals, totals)
		}
		if s.LastMinute != last {
			t.Errorf("%s: last minute %+v, want %+v", step, s.LastMinute, last)
		}
		if s.QueuedMessages != msgs || s.QueuedRecipients != rcpts {
			t.Errorf("%s: queued %d messages, %d recipients; want %d, %d", step, s.QueuedMessages, s.QueuedRecipients, msgs, rcpts)
		}
		if !s.Time.Equal(h.clock.Now()) || !s.Since.Equal(start) {
			t.Errorf("%s: time %v since %v, want %v since %v", step, s.Time, s.Since, h.clock.Now(), start)
		}
		if s.MaxConnections != 20 || s.Connections < 0 || s.Connections > s.MaxConnections {
			t.Errorf("%s: connections %d of %d, want at most 20 of 20", step, s.Connections, s.MaxConnections)
		}
		if s.SpoolBytes == nil || *s.SpoolBytes == 0 || s.SpoolFreeBytes == nil || *s.SpoolFreeBytes == 0 {
			t.Errorf("%s: spool bytes %v free %v, want the store's figures", step, s.SpoolBytes, s.SpoolFreeBytes)
		}
		return s
	}

	first := Counts{Received: 1, ReceivedRecipients: 5, Delivered: 2, Bounced: 2, Deferred: 1}
	check("nothing yet", Counts{}, Counts{}, 0, 0)
	intake("a@sum.test", "b@sum.test", "nouser@sum.test", "nouser2@sum.test", "full@sum.test")
	if s := check("first message", first, first, 1, 1); s.Suspensions != 0 {
		t.Errorf("suspensions %d, want 0", s.Suspensions)
	}

	h.clock.Advance(30 * time.Second)
	second := Counts{Received: 1, ReceivedRecipients: 1, Delivered: 1}
	intake("c@sum.test")
	both := Counts{Received: 2, ReceivedRecipients: 6, Delivered: 3, Bounced: 2, Deferred: 1}
	check("30 s on", both, both, 1, 1)

	// 61 s after the first message it has left the window; the second,
	// 31 s old, is still in it.
	h.clock.Advance(31 * time.Second)
	check("61 s on", both, second, 1, 1)
	h.clock.Advance(30 * time.Second)
	check("91 s on", both, Counts{}, 1, 1)

	// A suspension in force counts; the deferred recipient expires.
	h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "other.test", Reason: "test",
		Source: policy.SourceOperator, Until: h.clock.Now().Add(48 * time.Hour)})
	h.s.Tick(h.clock.Advance(25 * time.Hour))
	if e := h.next(outcomeEvents...); e.name != "expired" {
		t.Fatalf("outcome %s, want expired", e.name)
	}
	expired := Counts{Expired: 1}
	both.Expired = 1
	if s := check("expired", both, expired, 0, 0); s.Suspensions != 1 {
		t.Errorf("suspensions %d, want 1", s.Suspensions)
	}
	h.s.countCancelled(2)
	both.Cancelled, expired.Cancelled = 2, 2
	check("cancelled", both, expired, 0, 0)
}

// TestSummaryRing: the per-second ring counts what fell in the last 60
// seconds, reuses a slot whose second has left the window, leaves out a
// bucket stamped after now (a clock set back), and the totals keep
// everything. Cancelled recipients count like the others.
func TestSummaryRing(t *testing.T) {
	t.Parallel()
	var c summaryCounts
	t0 := time.Unix(1_000_000, 0)
	for i := range 120 {
		c.add(t0.Add(time.Duration(i)*time.Second), sumDelivered, 1)
	}
	c.add(t0.Add(119*time.Second+900*time.Millisecond), sumCancelled, 3)
	_, tot, last := c.snapshot(t0.Add(119 * time.Second))
	if tot[sumDelivered] != 120 || last[sumDelivered] != 60 || tot[sumCancelled] != 3 || last[sumCancelled] != 3 {
		t.Errorf("at 119 s: totals %v last %v, want 120/60 delivered and 3/3 cancelled", tot, last)
	}
	_, _, last = c.snapshot(t0.Add(150 * time.Second))
	if last[sumDelivered] != 29 {
		t.Errorf("at 150 s: last minute %d delivered, want 29 (seconds 91-119)", last[sumDelivered])
	}
	_, _, last = c.snapshot(t0.Add(100 * time.Second))
	if last[sumDelivered] != 41 {
		t.Errorf("at 100 s (clock set back): last minute %d delivered, want 41 (seconds 60-100)", last[sumDelivered])
	}
	_, tot, last = c.snapshot(t0.Add(time.Hour))
	if last != [sumEvents]int64{} || tot[sumDelivered] != 120 {
		t.Errorf("an hour on: last %v totals %v", last, tot)
	}
}
