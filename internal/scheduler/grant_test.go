package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// capPolicy is a per-pair policy of max connections and deliveries per
// connection, for the grantor tests.
func capPolicy(conns, perConn int) func(*queue.DomainRecord, int) connpool.Policy {
	return func(*queue.DomainRecord, int) connpool.Policy {
		return connpool.Policy{MaxConnections: conns, MaxConnectionsPerBinding: conns, MaxDeliveriesPerConnection: perConn}
	}
}

// injectOn is harness.inject for one recipient with the message pinned to
// binding b0, so that all of a domain's mail is one pair.
func injectOn(h *harness, rcpt string) {
	h.t.Helper()
	m := &spool.Message{Sender: "a@origin.test", Received: h.clock.Now(), Binding: "b0",
		Recipients: []spool.Recipient{{Addr: rcpt}}}
	if err := h.sp.Put(m, []byte("Subject: grant\r\n\r\nhello\r\n")); err != nil {
		h.t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil {
		h.t.Fatal(err)
	}
}

// TestFirstConnectionsFirst: while a pair with work and no connection
// waits for a slot, a pair that has a connection gets no further one, even
// with room; the waiting pair gets it, and then the other its second.
func TestFirstConnectionsFirst(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	_, port := loopbacktest.StartSinks(t, []string{ip(40, 10), ip(40, 11)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { <-gate; return nil }}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Pool.MaxConnections = 3
		o.Pool.IdleTimeout = waitLimit
	})
	defer close(gate)
	h.mxFor("hog.test", ip(40, 10))
	h.mxFor("late.test", ip(40, 11))
	h.resolved("hog.test", "late.test")
	for i := range 20 {
		injectOn(h, fmt.Sprintf("r%d@hog.test", i))
	}
	hog, late := h.q.Domain("hog.test"), h.q.Domain("late.test")
	g := h.s.grant
	for conns(hog.Pair(0)) < 3 {
		if g.Open(hog, 0, 1) != 1 {
			f, mo := g.waiting()
			t.Fatalf("hog.test has %d connections and got no more under the cap of 3 (total %d, waiting %d %d)", conns(hog.Pair(0)), g.Total(), f, mo)
		}
	}
	m := &queue.Delivery{MsgID: "late", Domain: "late.test", Expires: time.Now().Add(time.Hour).UnixNano(),
		Rcpts: []queue.Rcpt{{Addr: "x@late.test"}}}
	h.q.Push(m)
	g.Wait(late, 0, 1) // what the default does with no room
	if first, _ := g.waiting(); first != 1 {
		t.Fatalf("%d pairs waiting for a first connection, want 1", first)
	}
	if n := g.Open(hog, 0, 1); n != 0 {
		t.Fatalf("hog.test got a 4th connection (%d) while late.test had none", n)
	}
	if first, more := g.waiting(); first != 1 || more != 1 {
		t.Fatalf("waiting first=%d more=%d, want 1 and 1", first, more)
	}
}

// TestWaitingPairGetsTheNextSlot: at the cap, a pair the default
// maintenance action found no room for gets the slot the next ending
// session frees, rather than the busy pair getting it back.
func TestWaitingPairGetsTheNextSlot(t *testing.T) {
	t.Parallel()
	// busy.test's first RCPT waits until wait.test is waiting, so that its
	// session cannot end first.
	waiting := make(chan struct{})
	sinks, port := loopbacktest.StartSinks(t, []string{ip(41, 10), ip(41, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(string) error { <-waiting; return nil }}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Pool.MaxConnections = 1
		o.Pool.IdleTimeout = waitLimit
		o.Pool.Policy = capPolicy(1, 3)
	})
	h.mxFor("busy.test", ip(41, 10))
	h.mxFor("wait.test", ip(41, 11))
	h.resolved("busy.test", "wait.test")
	for i := range 6 {
		injectOn(h, fmt.Sprintf("r%d@busy.test", i))
	}
	injectOn(h, "x@wait.test") // no room: it waits
	if first, _ := h.s.grant.waiting(); first != 1 {
		t.Fatalf("%d pairs waiting for a first connection, want 1", first)
	}
	close(waiting)
	var order []string
	for range 4 {
		e := h.next("delivered")
		order = append(order, e.str("domain"))
	}
	if want := []string{"busy.test", "busy.test", "busy.test", "wait.test"}; !slices.Equal(order, want) {
		t.Errorf("delivery order %v, want %v", order, want)
	}
	// busy.test's other three go once wait.test's idle session is
	// reclaimed by busy.test's next maintenance.
	for range 3 {
		h.s.Tick(h.clock.Now())
		h.next("delivered")
	}
	if hw := sinks[0].HighWater() + sinks[1].HighWater(); hw > 2 {
		t.Errorf("high water %d over one connection per sink", hw)
	}
}

// TestHeldPairStopsWaiting: a waiting pair whose maintenance stops asking
// for a slot (a hook holds it) leaves the queue within two ticks, so it no
// longer keeps other pairs from a second connection.
func TestHeldPairStopsWaiting(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(42, 10)}, nil)
	h := newHarness(t, port, func(o *Options) { o.Pool.MaxConnections = 2 })
	h.reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, _ int, _ *queue.Pair, _ time.Time, _, _ int) int {
		if dr.Name == "held.test" {
			return hooks.Handled
		}
		return 0
	})
	held := h.q.Domain("held.test")
	h.q.Push(&queue.Delivery{MsgID: "held", Domain: "held.test", Expires: time.Now().Add(time.Hour).UnixNano(),
		Rcpts: []queue.Rcpt{{Addr: "x@held.test"}}})
	h.s.grant.Wait(held, 0, 1)
	for range 3 {
		h.s.Tick(h.clock.Now())
	}
	if first, more := h.s.grant.waiting(); first+more != 0 {
		t.Errorf("a held pair still waits (first=%d more=%d)", first, more)
	}
	held.Pair(0).Pop() // not a message the spool knows: no outcome for it
}

// TestManyDomainsFewSlots is the fairness test at the global cap
// with the shipped reserve: 150 connections, 50 reserved, so 100 slots;
// 10 domains with 200 messages each could take them all (10 connections
// each), and 990 domains with one message each arrive after them. Every
// one of the 990 is served, the reserve is never used by the default
// policy, and the bound: slots go first come, first served, so no small
// domain gets its slot after more than 200 of those queued after it (each
// freed slot is handed to the next in line, but up to 100 hand-offs, one
// per slot, run at once and may finish in any order; a tick may grant one
// more round), and the last is served before the big domains are done (without
// the grantor's queue of first connections they keep every slot until
// their mail is gone).
// slotHighWater records, in the grantor's observe hook, the most slots in
// use as the pool counts them when each is taken (a sink's own count may
// briefly include sessions that have given their slot back and are still
// closing); also, when set, it calls each (for a test's own observing).
func (h *harness) slotHighWater(also func(*queue.Pair)) *atomic.Int64 {
	var hw atomic.Int64
	h.s.grant.observe = func(p *queue.Pair) {
		n := int64(h.s.Pool().Total())
		for m := hw.Load(); n > m && !hw.CompareAndSwap(m, n); m = hw.Load() {
		}
		if also != nil {
			also(p)
		}
	}
	return &hw
}

func TestManyDomainsFewSlots(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("3,000 deliveries")
	}
	const (
		big, bigMsgs = 10, 200
		small        = 990
	)
	// Nothing is delivered until everything is queued, so that the big
	// domains have taken every slot when the small ones arrive.
	start := make(chan struct{})
	sinks, port := loopbacktest.StartSinks(t, []string{ip(43, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { <-start; return nil }}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Pool.MaxConnections = 150
		o.Reserve = 50
		o.Pool.Policy = capPolicy(10, 100)
		o.Pool.IdleTimeout = time.Second
		// DATA is held while 3,000 messages are spooled, which takes
		// longer than the harness's 5s on a loaded machine.
		o.Pool.Timeouts.DataTerm = 2 * time.Minute
		o.Pool.Timeouts.DataBlock = 2 * time.Minute
	})
	// One MX host for all.
	for i := range big {
		h.dns.Add(t, fmt.Sprintf("big%d.test. 60 IN MX 10 mx.sink.test.", i))
	}
	for i := range small {
		h.dns.Add(t, fmt.Sprintf("small%d.test. 60 IN MX 10 mx.sink.test.", i))
	}
	h.dns.Add(t, "mx.sink.test. 60 IN A "+ip(43, 10))
	for i := range big {
		h.resolved(fmt.Sprintf("big%d.test", i))
	}
	for i := range small {
		h.resolved(fmt.Sprintf("small%d.test", i))
	}
	for j := range bigMsgs {
		for i := range big {
			h.inject("a@origin.test", fmt.Sprintf("r%d@big%d.test", j, i))
		}
	}
	for i := range small {
		h.inject("a@origin.test", fmt.Sprintf("r@small%d.test", i))
	}
	// A small domain's rank is taken when the grantor hands it a freed
	// slot (under its lock, in queue order), or when a tick's round opens
	// its first session, whichever comes first: the order of the
	// sessions' own start, racing on a busy machine, is not the
	// grantor's.
	var granted sync.Map // small domain → rank of its first slot
	var grants atomic.Int32
	rank := func(p *queue.Pair) {
		if d := p.Domain().Name; strings.HasPrefix(d, "small") {
			if _, dup := granted.LoadOrStore(d, int(grants.Load())); !dup {
				grants.Add(1)
			}
		}
	}
	inUse := h.slotHighWater(rank)
	h.s.grant.observeHand = rank
	if first, _ := h.s.grant.waiting(); first != small {
		t.Errorf("%d pairs waiting for a first connection, want %d", first, small)
	}
	// Their turns: the order of the grantor's queue of first connections
	// (the order the tick refused them in, not necessarily injection's).
	turn := map[string]int{}
	h.s.grant.mu.Lock()
	for e := h.s.grant.first.Front(); e != nil; e = e.Next() {
		turn[e.Value.(*waiter).pair.Domain().Name] = len(turn)
	}
	h.s.grant.mu.Unlock()
	close(start)
	served := map[string]int{} // small domain → rank of its delivery
	bigDone, bigAtLastSmall := 0, -1
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for done := 0; done < big*bigMsgs+small; {
		select {
		case e := <-h.events:
			if e.name != "delivered" {
				if e.name == "deferred" || e.name == "bounced" {
					t.Fatalf("%s: %v", e.name, e.fields)
				}
				continue
			}
			done++
			d := e.str("domain")
			if d[:3] == "big" {
				bigDone++
				continue
			}
			served[d] = len(served)
			if len(served) == small {
				bigAtLastSmall = bigDone
			}
		case <-ticker.C:
			h.s.Tick(h.clock.Now())
		case <-time.After(waitLimit):
			t.Fatalf("stuck: %d big and %d small delivered", bigDone, len(served))
		}
	}
	if bigAtLastSmall < 0 || bigAtLastSmall >= big*bigMsgs {
		t.Errorf("the last small domain was served after %d of the %d big deliveries", bigAtLastSmall, big*bigMsgs)
	}
	worst := 0
	for i := range small {
		d := fmt.Sprintf("small%d.test", i)
		rank, ok := granted.Load(d)
		if !ok {
			t.Fatalf("%s delivered without a slot seen", d)
		}
		pos, ok := turn[d]
		if !ok {
			t.Fatalf("%s was not waiting for a first connection", d)
		}
		worst = max(worst, rank.(int)-pos)
	}
	if worst > 200 {
		t.Errorf("a small domain got its slot %d places after its turn; bound 200 (twice the slots)", worst)
	}
	if hw := inUse.Load(); hw > 100 {
		t.Errorf("%d slots in use at once: the default policy spent the reserve (max 150, reserve 50)", hw)
	}
	t.Logf("the last small domain was served after %d big deliveries, at worst %d places late; high water %d slots (%d connections at the sink)",
		bigAtLastSmall, worst, inUse.Load(), sinks[0].HighWater())
}

// TestDeadDomainsNeedNoSlot: resolution comes before a slot is granted, so
// mail to domains that do not exist bounces while every slot is taken,
// and a temporary DNS failure defers without one.
func TestDeadDomainsNeedNoSlot(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	_, port := loopbacktest.StartSinks(t, []string{ip(44, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { <-gate; return nil }}
	})
	h := newHarness(t, port, func(o *Options) { o.Pool.MaxConnections = 1 })
	defer close(gate)
	h.mxFor("slow.test", ip(44, 10))
	h.inject("a@origin.test", "x@slow.test")
	h.s.Tick(h.clock.Now())
	deadline := time.Now().Add(waitLimit)
	for h.s.Pool().Total() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("slow.test's session never opened")
		}
		time.Sleep(time.Millisecond)
	}
	const dead = 50
	for i := range dead {
		h.inject("a@origin.test", fmt.Sprintf("u@dead%d.test", i))
	}
	for i := range dead {
		e := h.next("bounced")
		if e.str("domain") == "slow.test" || e.fields["bounce_class"] != int64(21) {
			t.Fatalf("bounce %d: %v", i, e.fields)
		}
	}
	if got := h.s.Pool().Total(); got != 1 {
		t.Errorf("%d connections, want slow.test's one", got)
	}
}
