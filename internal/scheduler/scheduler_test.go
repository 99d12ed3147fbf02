package scheduler

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// TestDeliverSplitsAndDeletes: one message to two domains goes out as two
// deliveries, at once on Submit (no tick), each recipient is logged
// delivered, and the message leaves the spool.
func TestDeliverSplitsAndDeletes(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(20, 10), ip(20, 11)}, nil)
	h := newHarness(t, port, nil)
	h.mxFor("one.test", ip(20, 10))
	h.mxFor("two.test", ip(20, 11))
	m := h.inject("alice@origin.test", "a@one.test", "b@two.test", "c@one.test")
	got := map[string]string{}
	for range 3 {
		e := h.next(outcomeEvents...)
		got[e.str("recipient")] = e.name + " " + e.str("queue_id") + " " + e.str("mx")
	}
	for _, r := range []string{"a@one.test", "c@one.test"} {
		if want := "delivered " + m.ID + " mx.one.test"; got[r] != want {
			t.Errorf("%s: %q, want %q", r, got[r], want)
		}
	}
	if want := "delivered " + m.ID + " mx.two.test"; got["b@two.test"] != want {
		t.Errorf("b: %q, want %q", got["b@two.test"], want)
	}
	if msgs := sinks[0].WaitMessages(t, 1); len(msgs[0].To) != 2 {
		t.Errorf("one.test got %d recipients in one transaction, want 2", len(msgs[0].To))
	}
	sinks[1].WaitMessages(t, 1)
	h.gone(m.ID)
	if h.s.Pending() != 0 {
		t.Errorf("%d messages still tracked", h.s.Pending())
	}
}

// TestRetryAfter4xx: a 4xx defers with backoff (written to the spool), and
// the retry happens when the fake clock reaches it and Tick runs.
func TestRetryAfter4xx(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	sinks, port := loopbacktest.StartSinks(t, []string{ip(21, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			if calls.Add(1) == 1 {
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
			}
			return nil
		}}
	})
	h := newHarness(t, port, nil)
	h.mxFor("retry.test", ip(21, 10))
	start := h.clock.Now()
	m := h.inject("alice@origin.test", "r@retry.test")
	e := h.next(outcomeEvents...)
	if e.name != "deferred" || e.fields["code"] != int64(451) || e.str("enhanced_code") != "4.3.0" || e.fields["attempt"] != int64(1) {
		t.Fatalf("first outcome %s %v", e.name, e.fields)
	}
	got, err := h.sp.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := got.Recipients[0]
	lo, hi := start.Add(time.Duration(0.85*float64(10*time.Minute))), start.Add(time.Duration(1.15*float64(10*time.Minute)))
	if r.State != spool.Pending || r.Attempts != 1 || r.LastCode != 451 || r.NextAttempt.Before(lo) || r.NextAttempt.After(hi) {
		t.Errorf("spooled recipient after 4xx: %+v (next attempt want in [%v, %v])", r, lo, hi)
	}
	// Not yet due: a tick does nothing.
	h.s.Tick(h.clock.Advance(time.Minute))
	if n := h.q.Stats().Delayed; n != 1 {
		t.Fatalf("%d delayed deliveries, want 1", n)
	}
	h.s.Tick(h.clock.Advance(20 * time.Minute))
	e = h.next(outcomeEvents...)
	if e.name != "delivered" || e.fields["attempt"] != int64(2) {
		t.Fatalf("retry outcome %s %v", e.name, e.fields)
	}
	sinks[0].WaitMessages(t, 1)
	h.gone(m.ID)
}

// TestBounceDSN: a 5xx bounces the recipient, the other is delivered, and
// one RFC 3464 DSN reaches the sender's domain with the right fields.
func TestBounceDSN(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(22, 10), ip(22, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(to string) error {
			if strings.HasPrefix(to, "nobody@") {
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user here")
			}
			return nil
		}}
	})
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(22, 10))
	h.mxFor("origin.test", ip(22, 11))
	m := h.inject("alice@origin.test", "nobody@dest.test", "bob@dest.test")
	seen := map[string]event{}
	for range 2 {
		e := h.next(outcomeEvents...)
		seen[e.str("recipient")] = e
	}
	if e := seen["nobody@dest.test"]; e.name != "bounced" || e.fields["code"] != int64(550) || e.str("enhanced_code") != "5.1.1" {
		t.Errorf("nobody: %s %v", e.name, e.fields)
	}
	if e := seen["bob@dest.test"]; e.name != "delivered" {
		t.Errorf("bob: %s %v", e.name, e.fields)
	}
	h.gone(m.ID)
	e := h.next(outcomeEvents...) // the DSN's own delivery
	if e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("DSN delivery: %s %v", e.name, e.fields)
	}
	msgs := sinks[1].WaitMessages(t, 1)
	if msgs[0].From != "" {
		t.Errorf("DSN envelope sender %q, want null", msgs[0].From)
	}
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatalf("DSN: %v\n%s", err, msgs[0].Data)
	}
	if len(p.Recipients) != 1 {
		t.Fatalf("DSN reports %d recipients, want 1", len(p.Recipients))
	}
	r := p.Recipients[0]
	for k, want := range map[string]string{
		"Final-Recipient": "rfc822; nobody@dest.test", "Action": "failed", "Status": "5.1.1",
		"Remote-Mta": "dns; mx.dest.test", "Diagnostic-Code": "smtp; 550 5.1.1 no such user here",
	} {
		if got := r.Get(k); got != want {
			t.Errorf("DSN %s = %q, want %q", k, got, want)
		}
	}
	if p.Report.Get("Reporting-MTA") != "dns; mta.test" || p.Report.Get("Arrival-Date") == "" {
		t.Errorf("DSN per-message fields %v", p.Report)
	}
	if !strings.Contains(p.Headers, "Subject: test for nobody@dest.test") {
		t.Errorf("DSN headers part %q lacks the original Subject", p.Headers)
	}
}

// TestNullMXBouncesWithoutConnection: a null MX bounces at once, no
// connection is made, post_initiate sees CONN_ERR null MX, and the sender
// gets a DSN; a null-sender message bounces without one.
func TestNullMXBouncesWithoutConnection(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(23, 11)}, nil)
	h := newHarness(t, port, nil)
	h.dns.Add(t, "null.test. 60 IN MX 0 .")
	h.mxFor("origin.test", ip(23, 11))
	m := h.inject("alice@origin.test", "x@null.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.str("enhanced_code") != "5.1.10" {
		t.Fatalf("null MX outcome %s %v", e.name, e.fields)
	}
	if i := <-h.inits; i[0] != "null.test" || i[1] != int(hooks.ConnErrNullMX) {
		t.Errorf("post_initiate %v, want null.test %d", i, hooks.ConnErrNullMX)
	}
	h.gone(m.ID)
	msgs := sinks[0].WaitMessages(t, 1)
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Recipients[0]; r.Get("Status") != "5.1.10" || r.Get("Final-Recipient") != "rfc822; x@null.test" {
		t.Errorf("DSN recipient %v", r)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" {
		t.Fatalf("DSN delivery %s %v", e.name, e.fields)
	}

	// A bounce of a bounce: no DSN.
	m2 := h.inject("", "y@null.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.str("queue_id") != m2.ID {
		t.Fatalf("null-sender outcome %s %v", e.name, e.fields)
	}
	h.gone(m2.ID)
	h.close()
	select {
	case e := <-h.events:
		for _, n := range outcomeEvents {
			if e.name == n {
				t.Errorf("unexpected %s event after the null-sender bounce: %v", e.name, e.fields)
			}
		}
	default:
	}
	if c := sinks[0].Connections(); c != 1 {
		t.Errorf("sender's sink saw %d connections, want 1 (one DSN)", c)
	}
	for len(h.inits) > 0 {
		if i := <-h.inits; i[0] == "null.test" && i[1].(int) >= 0 {
			t.Error("a connection was made to the null-MX domain")
		}
	}
}

// TestExpiry: a recipient that keeps getting 4xx expires at max_age, gets
// logged expired, and the DSN reports the last reply.
func TestExpiry(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(24, 10), ip(24, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(string) error {
			return loopbacktest.Reply(452, [3]int{4, 2, 2}, "mailbox full")
		}}
	})
	h := newHarness(t, port, func(o *Options) { o.MaxAge = 15 * time.Minute })
	h.mxFor("full.test", ip(24, 10))
	h.mxFor("origin.test", ip(24, 11))
	m := h.inject("alice@origin.test", "f@full.test")
	if e := h.next(outcomeEvents...); e.name != "deferred" {
		t.Fatalf("first outcome %s", e.name)
	}
	// The retry is capped at the expiry; one tick past it expires.
	h.s.Tick(h.clock.Advance(16 * time.Minute))
	e := h.next(outcomeEvents...)
	if e.name != "expired" || e.str("recipient") != "f@full.test" || e.fields["code"] != int64(452) {
		t.Fatalf("outcome %s %v, want expired with the last reply", e.name, e.fields)
	}
	h.gone(m.ID)
	msgs := sinks[1].WaitMessages(t, 1)
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Recipients[0]
	if r.Get("Action") != "failed" || r.Get("Status") != "4.2.2" || r.Get("Diagnostic-Code") != "smtp; 452 4.2.2 mailbox full" {
		t.Errorf("expiry DSN recipient %v", r)
	}
	if c := sinks[0].Connections(); c != 1 {
		t.Errorf("full.test saw %d connections, want 1 (no attempt after expiry)", c)
	}
}

// TestReserve: the default policy leaves the reserve unused; a hook
// registered first spends it, and nothing passes the global cap.
func TestReserve(t *testing.T) {
	t.Parallel()
	for _, spend := range []bool{false, true} {
		name := map[bool]string{false: "default", true: "hook"}[spend]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			gate := make(chan struct{})
			sinks, port := loopbacktest.StartSinks(t, []string{ip(25, 10)}, func(int) loopbacktest.Config {
				return loopbacktest.Config{Data: func(string, []string, []byte) error { <-gate; return nil }}
			})
			var opened atomic.Int32
			h := newHarness(t, port, func(o *Options) {
				o.Pool.MaxConnections = 4
				o.Reserve = 2
				o.Pool.Policy = func(*queue.DomainRecord, int) connpool.Policy {
					return connpool.Policy{MaxConnections: 10, MaxConnectionsPerBinding: 10, MaxDeliveriesPerConnection: 1}
				}
			})
			inUse := h.slotHighWater(nil)
			if spend {
				h.reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, _ *queue.Pair, _ time.Time, goal, _ int) int {
					n := h.s.Opener().Open(dr, slot, goal)
					opened.Add(int32(n))
					if n == 0 {
						return hooks.Handled
					}
					return n
				})
			}
			h.mxFor("bulk.test", ip(25, 10))
			h.resolved("bulk.test")
			for i := range 8 {
				h.inject("alice@origin.test", "u"+string(rune('a'+i))+"@bulk.test")
			}
			h.s.Tick(h.clock.Now())
			want := map[bool]int{false: 2, true: 4}[spend]
			if got := h.s.Pool().Total(); got != want {
				t.Errorf("Total %d with max 4, reserve 2, want %d", got, want)
			}
			sinks[0].Wait(t, waitLimit, "sessions in DATA", func(_ []loopbacktest.Message, s int) bool { return s == want })
			close(gate)
			if spend && opened.Load() < 4 {
				t.Errorf("hook opened %d", opened.Load())
			}
			// Everything is delivered in the end, ticks reopening sessions.
			for done := 0; done < 8; {
				select {
				case e := <-h.events:
					if e.name == "delivered" {
						done++
					}
				case <-time.After(20 * time.Millisecond):
					h.s.Tick(h.clock.Now()) // sessions end after one delivery each: tick for more
				}
			}
			if hw := inUse.Load(); hw > int64(want) {
				t.Errorf("high water %d slots > %d (%d connections at the sink)", hw, want, sinks[0].HighWater())
			}
		})
	}
}

// TestRecovery: messages re-submitted from the spool with recipient states
// resume: final ones are not sent again, a bounced one is in the DSN, a
// future next attempt waits in the delayed queue with its attempt count.
func TestRecovery(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(26, 10), ip(26, 11)}, nil)
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(26, 10))
	h.mxFor("origin.test", ip(26, 11))
	now := h.clock.Now()
	m1 := &spool.Message{Sender: "alice@origin.test", Received: now.Add(-time.Hour), Recipients: []spool.Recipient{
		{Addr: "done@dest.test", State: spool.Delivered, Attempts: 1},
		{Addr: "gone@dest.test", State: spool.Bounced, Attempts: 1, LastCode: 550, LastEnh: "5.1.1", LastText: "gone", LastMX: "mx.dest.test"},
		{Addr: "todo@dest.test", State: spool.Pending, Attempts: 2, LastCode: 451},
	}}
	m2 := &spool.Message{Sender: "alice@origin.test", Received: now.Add(-time.Hour), Recipients: []spool.Recipient{
		{Addr: "later@dest.test", State: spool.Pending, Attempts: 3, NextAttempt: now.Add(30 * time.Minute)},
	}}
	for _, m := range []*spool.Message{m1, m2} {
		if err := h.sp.Put(m, []byte("Subject: recovered\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	st, err := h.sp.Recover(h.s.Submit)
	if err != nil || st.Messages != 2 {
		t.Fatalf("recover: %+v %v", st, err)
	}
	e := h.next(outcomeEvents...)
	if e.name != "delivered" || e.str("recipient") != "todo@dest.test" || e.fields["attempt"] != int64(3) {
		t.Fatalf("recovered outcome %s %v", e.name, e.fields)
	}
	h.gone(m1.ID)
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("DSN outcome %s %v", e.name, e.fields)
	}
	dsnMsg := sinks[1].WaitMessages(t, 1)[0]
	p, err := parseDSN(dsnMsg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Recipients) != 1 || p.Recipients[0].Get("Final-Recipient") != "rfc822; gone@dest.test" {
		t.Errorf("DSN recipients %v", p.Recipients)
	}
	if got := sinks[0].Messages(); len(got) != 1 || len(got[0].To) != 1 || got[0].To[0] != "todo@dest.test" {
		t.Errorf("dest sink got %+v, want only todo@", got)
	}
	if h.q.Stats().Delayed != 1 {
		t.Fatalf("m2 not in the delayed queue")
	}
	h.s.Tick(h.clock.Advance(31 * time.Minute))
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "later@dest.test" || e.fields["attempt"] != int64(4) {
		t.Fatalf("delayed outcome %s %v", e.name, e.fields)
	}
	h.gone(m2.ID)
}

// TestDuplicateSubmit: the same live message cannot be queued twice.
func TestDuplicateSubmit(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(27, 10)}, nil)
	h := newHarness(t, port, nil)
	m := &spool.Message{ID: "", Sender: "a@origin.test", Received: h.clock.Now(),
		Recipients: []spool.Recipient{{Addr: "x@later.test", NextAttempt: h.clock.Now().Add(time.Hour)}}}
	if err := h.sp.Put(m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Submit(m); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("duplicate Submit: %v", err)
	}
}

// fullSpool is the real spool whose PutBody answers "no space" while full is
// set, as a disk that filled up would; updates and deletes go through, as
// the spool lets them on a full disk.
type fullSpool struct {
	*spool.Spool
	full    atomic.Bool
	refused atomic.Int32 // PutBody calls refused
}

func (f *fullSpool) PutBody(m *spool.Message, w *spool.BodyWriter) error {
	if f.full.Load() {
		f.refused.Add(1)
		return fmt.Errorf("spool put: %w", spool.ErrNoSpace)
	}
	return f.Spool.PutBody(m, w)
}

// TestDSNKeptWhenSpoolFull: a bounce whose DSN can't be spooled keeps the
// message, with its final state, until the DSN can be written: a Tick
// retries it, and then the DSN is delivered and the message leaves.
func TestDSNKeptWhenSpoolFull(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(29, 10), ip(29, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(string) error { return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user") }}
	})
	fs := &fullSpool{}
	h := newHarness(t, port, func(o *Options) {
		fs.Spool = o.Spool.(*spool.Spool)
		o.Spool = fs
	})
	h.mxFor("dest.test", ip(29, 10))
	h.mxFor("origin.test", ip(29, 11))
	fs.full.Store(true)
	m := h.inject("alice@origin.test", "nobody@dest.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" {
		t.Fatalf("outcome %s %v", e.name, e.fields)
	}
	for i := range 2 { // the bounce, then a Tick that still can't spool the DSN
		if i > 0 {
			h.clock.Advance(time.Second) // past the first round's back-off
		}
		got, err := h.sp.Get(m.ID)
		if err != nil {
			t.Fatalf("message left the spool before its DSN was written: %v", err)
		}
		if got.Recipients[0].State != spool.Bounced || got.Recipients[0].LastCode != 550 {
			t.Fatalf("kept recipient %+v, want bounced with 550", got.Recipients[0])
		}
		h.s.Tick(h.clock.Now())
	}
	// Point 7: a full spool is not asked every tick. Failed rounds back
	// off (1s, 2s, 4s, ...): more ticks at the same time try nothing.
	tried := fs.refused.Load()
	for range 5 {
		h.s.Tick(h.clock.Now())
	}
	if got := fs.refused.Load(); got != tried {
		t.Errorf("%d more attempts to spool the DSN within the back-off", got-tried)
	}
	fs.full.Store(false)
	h.s.Tick(h.clock.Advance(owedMaxWait))
	h.gone(m.ID)
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("DSN outcome %s %v", e.name, e.fields)
	}
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil || len(p.Recipients) != 1 || p.Recipients[0].Get("Final-Recipient") != "rfc822; nobody@dest.test" {
		t.Fatalf("DSN %+v, %v", p, err)
	}
}
