package scheduler

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

// deferringSink starts a sink on addr that answers 451 to every RCPT
// while defer_ holds, and to a recipient at a domain in always whatever
// it holds; it accepts the rest.
func deferringSink(t *testing.T, addr string, deferring *atomic.Bool) int {
	t.Helper()
	_, port := loopbacktest.StartSinks(t, []string{addr}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if deferring.Load() && !strings.HasSuffix(to, "@src.test>") && !strings.HasSuffix(to, "@src.test") {
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
			}
			return nil
		}}
	})
	return port
}

// deferredAll waits for n deferred records: the mail then sits in the
// delayed queue, minutes away on the fake clock.
func (h *harness) deferredAll(n int) {
	h.t.Helper()
	for range n {
		if e := h.next(outcomeEvents...); e.name != "deferred" {
			h.t.Fatalf("outcome %s %v, want deferred", e.name, e.fields)
		}
	}
	h.quiet()
}

// cancelled reads records up to the n-th cancelled one and returns their
// recipients, sorted, and the messages the DSNs on the way were for (a
// DSN is spooled, and logged, before the records of its cancel).
func (h *harness) cancelled(n int, reason, by string) (rcpts, dsnFor []string) {
	h.t.Helper()
	for len(rcpts) < n {
		e := h.next("cancelled", "dsn")
		switch {
		case e.name == "dsn":
			dsnFor = append(dsnFor, e.str("dsn_for"))
			continue
		case e.str("response") != reason || e.str("by") != by:
			h.t.Fatalf("record %v, want response %q by %q", e.fields, reason, by)
		}
		rcpts = append(rcpts, e.str("recipient"))
	}
	slices.Sort(rcpts)
	return rcpts, dsnFor
}

func TestCancelByQueueID(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	reg := prometheus.NewRegistry()
	h := newHarness(t, deferringSink(t, ip(90, 10), &deferring), func(o *Options) { o.Metrics = reg })
	h.mxFor("x.test", ip(90, 10))
	h.mxFor("y.test", ip(90, 10))
	m1 := h.inject("s@src.test", "a@x.test", "b@y.test")
	m2 := h.inject("s@src.test", "c@x.test")
	h.deferredAll(3)

	n, err := h.s.Cancel(Selector{QueueID: m1.ID}, "wrong list", "alice", false)
	if err != nil || n != 2 {
		t.Fatalf("Cancel = %d, %v; want 2", n, err)
	}
	if got, dsns := h.cancelled(2, "wrong list", "alice"); !slices.Equal(got, []string{"a@x.test", "b@y.test"}) || dsns != nil {
		t.Fatalf("cancelled %v, DSNs for %v; want a, b and no DSN", got, dsns)
	}
	if _, err := h.sp.Get(m1.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("m1 in the spool after its cancel: %v", err)
	}
	if _, err := h.sp.Get(m2.ID); err != nil {
		t.Fatalf("m2 left the spool: %v", err)
	}
	if st := h.q.Stats(); st.Delayed != 1 || st.Active != 0 || h.s.Pending() != 1 {
		t.Fatalf("queues %+v, %d messages held; want only m2's delivery", st, h.s.Pending())
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"mtad_recipients_total", map[string]string{"event": "cancelled", "binding": "b0"}, 2},
		{"mtad_domain_recipients_total", map[string]string{"domain": "x.test", "event": "cancelled"}, 1},
		{"mtad_queued_recipients", nil, 1},
	} {
		if v := sample(t, reg, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if sum := h.s.Summary(); sum.Totals.Cancelled != 2 || sum.LastMinute.Cancelled != 2 {
		t.Errorf("summary cancelled %d total, %d last minute; want 2 and 2", sum.Totals.Cancelled, sum.LastMinute.Cancelled)
	}
	if _, err := h.s.Cancel(Selector{QueueID: m1.ID}, "again", "alice", false); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("second cancel of m1: %v, want ErrNotQueued", err)
	}
}

// TestCancelByDomainWithDSN: only the domain's recipients end; a message
// left without pending recipients goes with a DSN naming them, one with
// others pending stays; flushing the rest delivers it and its DSN then
// reports the cancelled recipient.
func TestCancelByDomainWithDSN(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	h := newHarness(t, deferringSink(t, ip(91, 10), &deferring), nil)
	for _, d := range []string{"x.test", "y.test", "src.test"} {
		h.mxFor(d, ip(91, 10))
	}
	m1 := h.inject("s@src.test", "a@x.test", "b@y.test")
	m2 := h.inject("s@src.test", "c@X.test")
	h.deferredAll(3)

	n, err := h.s.Cancel(Selector{Domain: "X.Test"}, "complaint", "bob", true)
	if err != nil || n != 2 {
		t.Fatalf("Cancel = %d, %v; want 2", n, err)
	}
	if got, dsns := h.cancelled(2, "complaint", "bob"); !slices.Equal(got, []string{"a@x.test", "c@X.test"}) ||
		!slices.Equal(dsns, []string{m2.ID}) {
		t.Fatalf("cancelled %v, DSNs for %v; want a, c and a DSN for m2 only", got, dsns)
	}
	if _, err := h.sp.Get(m2.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("m2 in the spool with no recipient left: %v", err)
	}
	got, err := h.sp.Get(m1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Recipients[0].State != spool.Cancelled || got.Recipients[1].State != spool.Pending {
		t.Fatalf("m1's states %v %v, want cancelled, pending", got.Recipients[0].State, got.Recipients[1].State)
	}

	deferring.Store(false)
	if n, err := h.s.Flush("y.test", "", "bob"); err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v; want 1", n, err)
	}
	var dsnFor []string
	for len(dsnFor) < 1 || !slices.Contains(dsnFor, m1.ID) {
		e := h.next("delivered", "dsn")
		if e.name == "dsn" {
			dsnFor = append(dsnFor, e.str("dsn_for"))
		}
		if len(dsnFor) > 2 {
			t.Fatalf("DSNs for %v, none for m1", dsnFor)
		}
	}
	h.until("m1 to leave the spool", func() bool { _, err := h.sp.Get(m1.ID); return err != nil })
}

func TestCancelBySender(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	h := newHarness(t, deferringSink(t, ip(92, 10), &deferring), nil)
	h.mxFor("x.test", ip(92, 10))
	m1 := h.inject("bulk@src.test", "a@x.test")
	m2 := h.inject("other@src.test", "b@x.test")
	m3 := h.inject("", "c@x.test")
	m4 := h.inject("Bulk@SRC.test", "d@x.test")
	h.deferredAll(4)

	n, err := h.s.Cancel(Selector{Sender: "bulk@src.test"}, "runaway campaign", "carol", true)
	if err != nil || n != 2 {
		t.Fatalf("Cancel = %d, %v; want 2", n, err)
	}
	if got, dsns := h.cancelled(2, "runaway campaign", "carol"); !slices.Equal(got, []string{"a@x.test", "d@x.test"}) ||
		!slices.Equal(dsns, []string{m1.ID, m4.ID}) {
		t.Fatalf("cancelled %v, DSNs for %v; want a, d and DSNs for m1, m4", got, dsns)
	}
	for _, m := range []*spool.Message{m1, m4} {
		if _, err := h.sp.Get(m.ID); !errors.Is(err, spool.ErrNotFound) {
			t.Fatalf("%s still spooled: %v", m.ID, err)
		}
	}
	for _, m := range []*spool.Message{m2, m3} {
		if _, err := h.sp.Get(m.ID); err != nil {
			t.Fatalf("%s left the spool: %v", m.ID, err)
		}
	}
	if st := h.q.Stats(); st.Delayed != 2 {
		t.Fatalf("%d delayed, want 2 (m2, m3)", st.Delayed)
	}
}

func TestCancelSelectorRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 25, nil)
	for _, sel := range []Selector{{}, {QueueID: "x", Domain: "y.test"}, {Domain: "x.test", Sender: "a@b"}, {Domain: "bad domain"}} {
		if _, err := h.s.Cancel(sel, "why", "me", false); !errors.Is(err, ErrBadSelector) {
			t.Errorf("Cancel(%+v): %v, want ErrBadSelector", sel, err)
		}
	}
	if _, err := h.s.Cancel(Selector{Domain: "x.test"}, " ", "me", false); err == nil {
		t.Error("Cancel without a reason: no error")
	}
	if _, err := h.s.Flush("", "nosuch", "me"); !errors.Is(err, ErrUnknownBinding) {
		t.Errorf("Flush of an unknown binding: %v", err)
	}
}

// TestFlush: a delayed delivery goes now, before its retry time, only
// for the domain (and binding) flushed; one policy record names who.
func TestFlush(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	h := newHarness(t, deferringSink(t, ip(93, 10), &deferring), nil)
	h.mxFor("x.test", ip(93, 10))
	h.mxFor("y.test", ip(93, 10))
	h.inject("s@src.test", "a@x.test")
	h.inject("s@src.test", "b@y.test")
	h.deferredAll(2)
	deferring.Store(false)

	if n, err := h.s.Flush("x.test", "b1", "dave"); err != nil || n != 0 {
		t.Fatalf("Flush of x.test from b1 = %d, %v; want 0 (its mail is on b0)", n, err)
	}
	if e := h.next("policy"); e.str("action") != "flush" || e.str("by") != "dave" || e.str("scope") != "pair" {
		t.Fatalf("policy record %v", e.fields)
	}
	if n, err := h.s.Flush("X.test", "", "dave"); err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v; want 1", n, err)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "a@x.test" {
		t.Fatalf("outcome %s %v, want a@x.test delivered", e.name, e.fields)
	}
	if st := h.q.Stats(); st.Delayed != 1 {
		t.Fatalf("%d delayed, want 1 (y.test's, not flushed)", st.Delayed)
	}
	if n, err := h.s.Flush("", "", "dave"); err != nil || n != 1 {
		t.Fatalf("Flush of all = %d, %v; want 1", n, err)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "b@y.test" {
		t.Fatalf("outcome %s %v, want b@y.test delivered", e.name, e.fields)
	}
}

// brokenUpdates is a spool whose updates and deletions fail while broken.
type brokenUpdates struct {
	*spool.Spool
	broken atomic.Bool
}

func (b *brokenUpdates) Update(id string, rcpts map[int]spool.Recipient, done bool) error {
	if b.broken.Load() {
		return errors.New("spool update: disk I/O error")
	}
	return b.Spool.Update(id, rcpts, done)
}

// TestCancelSpoolFailureIsAnError: a cancel the spool does not record is
// reported to the operator (a restart would queue the mail again), not
// answered as done.
func TestCancelSpoolFailureIsAnError(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	bu := &brokenUpdates{}
	h := newHarness(t, deferringSink(t, ip(90, 20), &deferring), func(o *Options) {
		bu.Spool = o.Spool.(*spool.Spool)
		o.Spool = bu
	})
	h.mxFor("x.test", ip(90, 20))
	m := h.inject("s@src.test", "a@x.test")
	h.deferredAll(1)
	bu.broken.Store(true)
	n, err := h.s.Cancel(Selector{QueueID: m.ID}, "wrong list", "alice", false)
	if err == nil || n != 1 || !strings.Contains(err.Error(), m.ID) {
		t.Fatalf("Cancel with a failing spool = %d, %v; want 1 and an error naming %s", n, err, m.ID)
	}
}
