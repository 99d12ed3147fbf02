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
	s30 := check("30 s on", both, both, 1, 1)
	// Everything so far fell within the hour: its minutes add up to the
	// totals, and the last one is now's.
	if len(s30.LastHour) != hourWindow {
		t.Fatalf("last hour: %d minutes, want %d", len(s30.LastHour), hourWindow)
	}
	var hourSum Counts
	for _, m := range s30.LastHour {
		hourSum = addCounts(hourSum, m.Counts)
	}
	if hourSum != both {
		t.Errorf("last hour adds up to %+v, want the totals %+v", hourSum, both)
	}
	if got, want := s30.LastHour[hourWindow-1].Minute, s30.Time.UTC().Truncate(time.Minute); !got.Equal(want) {
		t.Errorf("last hour ends at %v, want now's minute %v", got, want)
	}

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
	_, tot, last, _ := c.snapshot(t0.Add(119 * time.Second))
	if tot[sumDelivered] != 120 || last[sumDelivered] != 60 || tot[sumCancelled] != 3 || last[sumCancelled] != 3 {
		t.Errorf("at 119 s: totals %v last %v, want 120/60 delivered and 3/3 cancelled", tot, last)
	}
	_, _, last, _ = c.snapshot(t0.Add(150 * time.Second))
	if last[sumDelivered] != 29 {
		t.Errorf("at 150 s: last minute %d delivered, want 29 (seconds 91-119)", last[sumDelivered])
	}
	_, _, last, _ = c.snapshot(t0.Add(100 * time.Second))
	if last[sumDelivered] != 41 {
		t.Errorf("at 100 s (clock set back): last minute %d delivered, want 41 (seconds 60-100)", last[sumDelivered])
	}
	_, tot, last, _ = c.snapshot(t0.Add(time.Hour))
	if last != [sumEvents]int64{} || tot[sumDelivered] != 120 {
		t.Errorf("an hour on: last %v totals %v", last, tot)
	}
}

func addCounts(a, b Counts) Counts {
	return Counts{Received: a.Received + b.Received, ReceivedRecipients: a.ReceivedRecipients + b.ReceivedRecipients,
		Delivered: a.Delivered + b.Delivered, Deferred: a.Deferred + b.Deferred, Bounced: a.Bounced + b.Bounced,
		Expired: a.Expired + b.Expired, Cancelled: a.Cancelled + b.Cancelled}
}

// TestSummaryHourRing: the per-minute ring puts each minute's counts in
// its place, oldest first and dated, reuses a slot whose minute has left
// the hour, leaves out a bucket stamped after now (a clock set back), and
// works for times before the Unix epoch (floor, not truncation).
func TestSummaryHourRing(t *testing.T) {
	t.Parallel()
	var c summaryCounts
	t0 := time.Unix(6_000_000, 0) // a minute's start
	// Minute i gets i+1 deliveries, for two hours.
	for i := range 120 {
		c.add(t0.Add(time.Duration(i)*time.Minute+30*time.Second), sumDelivered, i+1)
	}
	now := t0.Add(119*time.Minute + 59*time.Second)
	_, _, _, hour := c.snapshot(now)
	mins := lastHour(now, hour)
	for i, m := range mins {
		want := int64(60 + i + 1) // minutes 60..119
		if m.Delivered != want || !m.Minute.Equal(t0.Add(time.Duration(60+i)*time.Minute).UTC()) {
			t.Fatalf("minute %d: %v %d delivered, want %v %d", i, m.Minute, m.Delivered, t0.Add(time.Duration(60+i)*time.Minute).UTC(), want)
		}
	}
	// Ten minutes later the first ten have gone out, the last ten are empty.
	_, _, _, hour = c.snapshot(now.Add(10 * time.Minute))
	if hour[0][sumDelivered] != 71 || hour[49][sumDelivered] != 120 || hour[50] != ([sumEvents]int64{}) || hour[59] != ([sumEvents]int64{}) {
		t.Errorf("10 min on: first %d, 50th %d, then %v, %v", hour[0][sumDelivered], hour[49][sumDelivered], hour[50], hour[59])
	}
	// The clock set back 30 minutes (to minute 89): the slots of minutes
	// 30-59 now hold 90-119, after now, so they are left out, not shown
	// as the earlier minutes.
	_, _, _, hour = c.snapshot(now.Add(-30 * time.Minute))
	if hour[59][sumDelivered] != 90 || hour[30][sumDelivered] != 61 || hour[29] != ([sumEvents]int64{}) || hour[0] != ([sumEvents]int64{}) {
		t.Errorf("clock set back: last %d, 30th %d, 29th %v, first %v; want 90, 61 and none", hour[59][sumDelivered], hour[30][sumDelivered], hour[29], hour[0])
	}
	// Before the epoch: -1 s is in the minute starting at -60 s.
	var n summaryCounts
	neg := time.Unix(-1, 0)
	n.add(neg, sumBounced, 2)
	_, _, _, hour = n.snapshot(neg)
	if mins := lastHour(neg, hour); mins[59].Bounced != 2 || !mins[59].Minute.Equal(time.Unix(-60, 0)) {
		t.Errorf("before the epoch: %v %d bounced, want %v 2", mins[59].Minute, mins[59].Bounced, time.Unix(-60, 0).UTC())
	}
}
