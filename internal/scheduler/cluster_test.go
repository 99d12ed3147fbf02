package scheduler

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/cluster/redistest"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/redis/go-redis/v9"
)

// TestClusterSuspensionsShared: two schedulers on one real redis-server.
// A suspension put on one comes in force on the other (its source node
// kept); lifted on the second, it ends on the first. The promise is
// within a second (pub/sub, else the one-second read); the waits are
// bounded at five, so a loaded test machine does not fail what works —
// the time taken is logged.
func TestClusterSuspensionsShared(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "sch:", Heartbeat: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	h1 := newHarness(t, 0, func(o *Options) { o.Cluster = node("n1") })
	h2 := newHarness(t, 0, func(o *Options) { o.Cluster = node("n2") })
	now := h1.clock.Now()
	h1.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "x.example", Source: policy.SourceOperator,
		Reason: "test", Start: now, Until: now.Add(time.Hour)})
	var got []policy.Suspension
	t0 := time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = h2.s.Suspensions(h2.clock.Now()); len(got) == 1 {
			break
		}
	}
	if len(got) != 1 || got[0].Name != "x.example" || got[0].Node != "n1" {
		t.Fatalf("node 2 holds %+v five seconds after node 1's suspension, want x.example from n1", got)
	}
	t.Logf("node 1's suspension seen on node 2 after %v", time.Since(t0))
	if _, ok := h2.s.Resume(got[0].ID, "t", "lifted on n2"); !ok {
		t.Fatal("resume on node 2 failed")
	}
	t0 = time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(h1.s.Suspensions(h1.clock.Now())) == 0 {
			t.Logf("node 2's resume seen on node 1 after %v", time.Since(t0))
			return
		}
	}
	t.Fatalf("node 1 still holds %+v five seconds after node 2 lifted it", h1.s.Suspensions(h1.clock.Now()))
}

// TestClusterLoweredCapShared: two nodes on one real redis-server hold
// three sessions each to one sink under a shared max_connections of 6;
// the cap is lowered to 4 on both. Neither node alone is over 4, but the
// cluster is: the nodes end their part of the excess (one each) and the
// sink holds no more than 4 again; every message arrives once.
func TestClusterLoweredCapShared(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "cap:", Heartbeat: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	release := make(chan struct{})
	var inData atomic.Int64
	var after atomic.Bool // the drop to four was seen
	var over atomic.Int64 // sessions seen above four after it
	var sink *loopbacktest.Sink
	sinks, port := loopbacktest.StartSinks(t, []string{ip(58, 11)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error {
			if n := sink.Sessions(); after.Load() && n > 4 {
				over.Store(int64(n))
			}
			inData.Add(1)
			<-release
			inData.Add(-1)
			return nil
		}}
	})
	sink = sinks[0]
	var closeOnce sync.Once
	open := func() { closeOnce.Do(func() { close(release) }) }
	defer open()
	capOf := func(n int) *policy.Shaper {
		return testShaper(t, func(s *config.Shaping) { s.Default.MaxConnections = ptr(n) })
	}
	const each = 20
	start := func(name string, cap int) *harness {
		h := newHarness(t, port, func(o *Options) {
			o.Pool.IdleTimeout = waitLimit
			o.Cluster = node(name)
			o.Shaper = capOf(cap)
		})
		h.mxFor("cap.test", ip(58, 11))
		h.resolved("cap.test")
		for i := range each {
			injectOn(h, fmt.Sprintf("%s-%d@cap.test", name, i))
		}
		return h
	}
	// n1 first under a cap of 3 (it takes 3 leases), then n2 under 6
	// (it takes the 3 left): three sessions each.
	h1 := start("n1", 3)
	h1.until("three sessions of n1 in DATA", func() bool { return inData.Load() == 3 })
	h2 := start("n2", 6)
	h2.until("six sessions in DATA", func() bool { return inData.Load() == 6 })
	if a, b := h1.s.Pool().Total(), h2.s.Pool().Total(); a != 3 || b != 3 {
		t.Fatalf("n1 %d and n2 %d connections, want 3 each", a, b)
	}
	h1.s.SetShaper(capOf(4))
	h2.s.SetShaper(capOf(4))
	for range 6 {
		select {
		case release <- struct{}{}:
		case <-time.After(waitLimit):
			t.Fatal("a held DATA did not take its release")
		}
	}
	h1.until("four sessions, all in their next DATA", func() bool {
		return sink.Sessions() == 4 && inData.Load() == 4 && h1.s.Pool().Total()+h2.s.Pool().Total() == 4
	})
	after.Store(true)
	for range 3 {
		h1.s.Tick(h1.clock.Advance(time.Second))
		h2.s.Tick(h2.clock.Advance(time.Second))
		if n := h1.s.Pool().Total() + h2.s.Pool().Total(); n > 4 {
			t.Fatalf("%d connections across the nodes after the cap dropped to 4", n)
		}
	}
	open()
	msgs := sink.WaitMessages(t, 2*each)
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.To[0]] = true
	}
	if len(msgs) != 2*each || len(seen) != 2*each {
		t.Fatalf("%d messages for %d recipients, want %d", len(msgs), len(seen), 2*each)
	}
	if n := over.Load(); n != 0 {
		t.Fatalf("the sink held %d sessions after the cap dropped to 4", n)
	}
}

// TestShedOne: a node's part of a shared cap's excess, in proportion to
// its connections, rounded up, less those already gone or leaving.
func TestShedOne(t *testing.T) {
	for _, tc := range []struct {
		cap, total, mine, held, leaving int
		want                            bool
	}{
		{4, 6, 3, 3, 0, true},  // excess 2, part ceil(2·3/6) = 1
		{4, 6, 3, 3, 1, false}, // its one is leaving
		{4, 6, 3, 2, 0, false}, // its one has gone since the count
		{4, 4, 2, 2, 0, false}, // at the cap
		{2, 9, 3, 3, 1, true},  // excess 7, part ceil(21/9) = 3
		{2, 9, 3, 3, 3, false},
		{4, 6, 0, 1, 0, false}, // none of its own when counted
	} {
		if got := shedOne(tc.cap, tc.total, tc.mine, tc.held, tc.leaving); got != tc.want {
			t.Errorf("shedOne(%+v) = %v", tc, got)
		}
	}
}

// TestClusterHookOpenerLeases: a maintenance hook that opens connections
// itself (spending the reserve) goes through Scheduler.Opener, so in a
// shared cluster each of its connections holds a lease under the shared
// cap and the cap holds: Redis counts the sink's sessions, and no more
// than the cap are opened.
func TestClusterHookOpenerLeases(t *testing.T) {
	r := redistest.Start(t)
	c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: "n1", Prefix: "hook:", Heartbeat: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	gate := make(chan struct{})
	defer close(gate)
	sinks, port := loopbacktest.StartSinks(t, []string{ip(58, 12)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { <-gate; return nil }}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Cluster = c
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MaxConnections = ptr(3) })
	})
	var opened atomic.Int32
	h.reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, _ *queue.Pair, _ time.Time, goal, _ int) int {
		n := h.s.Opener().Open(dr, slot, 8)
		opened.Add(int32(n))
		if n == 0 {
			return hooks.Handled
		}
		return n
	})
	h.mxFor("hook.test", ip(58, 12))
	h.resolved("hook.test")
	for i := range 8 {
		injectOn(h, fmt.Sprintf("r%d@hook.test", i))
	}
	h.s.Tick(h.clock.Now())
	sinks[0].Wait(t, waitLimit, "three sessions in DATA", func(_ []loopbacktest.Message, s int) bool { return s == 3 })
	h.s.Tick(h.clock.Advance(time.Second))
	if n := h.s.Pool().Total(); n != 3 {
		t.Fatalf("%d connections under a shared cap of 3", n)
	}
	if n, err := c.Count(context.Background(), "site:mx.hook.test|b0"); err != nil || n != 3 {
		t.Fatalf("Redis counts %d leases (%v) for the hook's 3 connections", n, err)
	}
}

// TestClusterSuspensionsSurviveRedisLoss: an operator's hour-long
// suspension set on n1 and seen on n2 holds on both after Redis is
// restarted empty (n1 writes it again; a missing record lifts nothing),
// and a lift on n2 while Redis is stalled reaches n1 once Redis answers.
func TestClusterSuspensionsSurviveRedisLoss(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "sch:",
			Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c2 := node("n2")
	h1 := newHarness(t, 0, func(o *Options) { o.Cluster = node("n1") })
	h2 := newHarness(t, 0, func(o *Options) { o.Cluster = c2 })
	now := h1.clock.Now()
	h1.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "x.example", Source: policy.SourceOperator,
		Reason: "test", Start: now, Until: now.Add(time.Hour)})
	waitHeld := func(h *harness, want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if len(h.s.Suspensions(h.clock.Now())) == want {
				return
			}
		}
		t.Fatalf("%s: holds %+v after 5 s, want %d", what, h.s.Suspensions(h.clock.Now()), want)
	}
	waitHeld(h2, 1, "n2 before the restart")
	r.Kill()
	r.Restart()
	// Both nodes come out of the restart (a heartbeat answers) and read
	// the records again; the suspension is back in Redis and held on both.
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer rdb.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, _ := rdb.HLen(context.Background(), "sch:shared:suspension").Result()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n1 did not write its suspension to the restarted Redis within 5 s")
		}
	}
	time.Sleep(300 * time.Millisecond) // three heartbeats' reads: a lift would show (not a result: the checks below are)
	waitHeld(h1, 1, "n1 after the restart")
	waitHeld(h2, 1, "n2 after the restart")

	r.Pause()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if down, _ := c2.Fallback(); down {
			break
		}
		if time.Now().After(deadline) {
			r.Resume()
			t.Fatal("n2 not in fallback 5 s after Redis stalled")
		}
	}
	got := h2.s.Suspensions(h2.clock.Now())
	if len(got) != 1 {
		r.Resume()
		t.Fatalf("n2 holds %+v", got)
	}
	h2.s.Resume(got[0].ID, "t", "lifted on n2 in fallback")
	r.Resume()
	waitHeld(h1, 0, "n1 after n2's lift in fallback and Redis back")
}

// TestClusterSuspensionIDsUnique: three nodes each suspend a domain while
// Redis is stalled (each numbers its own first suspension); the ids carry
// the node name and differ. Once Redis answers, every node holds all
// three under those ids; resuming n1's id on n2 lifts that one on every
// node and only it, and n3 logs the resume with n2's operator, reason and
// node.
func TestClusterSuspensionIDsUnique(t *testing.T) {
	r := redistest.Start(t)
	var cs []*cluster.Cluster
	var hs []*harness
	for _, name := range []string{"n1", "n2", "n3"} {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "sch:",
			Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
		hs = append(hs, newHarness(t, 0, func(o *Options) { o.Cluster = c }))
	}
	r.Pause()
	for i, c := range cs {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if down, _ := c.Fallback(); down {
				break
			}
			if time.Now().After(deadline) {
				r.Resume()
				t.Fatalf("node %d not in fallback 5 s after Redis stalled", i+1)
			}
		}
	}
	ids := map[string]string{} // id → domain
	for i, h := range hs {
		now := h.clock.Now()
		d := fmt.Sprintf("d%d.example", i+1)
		got := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: d, Source: policy.SourceOperator,
			Reason: "test", Start: now, Until: now.Add(time.Hour)})
		if want := fmt.Sprintf("n%d-s1", i+1); got.ID != want {
			r.Resume()
			t.Fatalf("node %d gave id %q, want %q", i+1, got.ID, want)
		}
		ids[got.ID] = d
	}
	r.Resume()
	held := func(h *harness) map[string]string {
		m := map[string]string{}
		for _, sp := range h.s.Suspensions(h.clock.Now()) {
			m[sp.ID] = sp.Name
		}
		return m
	}
	waitHeld := func(want map[string]string, what string) {
		t.Helper()
		for i, h := range hs {
			var got map[string]string
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if got = held(h); fmt.Sprint(got) == fmt.Sprint(want) {
					break
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%s: node %d holds %v after 5 s, want %v", what, i+1, got, want)
			}
		}
	}
	waitHeld(ids, "after Redis answered")
	if sp, ok := hs[1].s.Resume("n1-s1", "alice", "receiver fixed"); !ok || sp.Name != "d1.example" {
		t.Fatalf("resume of n1-s1 on n2: %+v %v", sp, ok)
	}
	delete(ids, "n1-s1")
	waitHeld(ids, "after n2 resumed n1-s1")
	for {
		e := hs[2].next("policy")
		if e.str("action") != "resume" {
			continue
		}
		if e.str("id") != "n1-s1" || e.str("by") != "alice" || e.str("reason") != "receiver fixed" || e.str("node") != "n2" {
			t.Fatalf("n3 logged the resume as %v, want id n1-s1 by alice, reason and node n2", e.fields)
		}
		break
	}
}

// TestClusterIdleLeaseGivenBack: under a shared max_connections of 2, n1
// holds both leases (two of its twenty messages held in DATA) while n2's
// mail waits, refused. When n1's queue empties with the key at its cap,
// its session ends at once, giving its lease back, although n1's idle
// timeout is an hour; n2's next maintain (one tick) opens a connection
// and delivers its mail.
func TestClusterIdleLeaseGivenBack(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "idle:", Heartbeat: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	release := make(chan struct{})
	var held atomic.Int64
	sinks, port := loopbacktest.StartSinks(t, []string{ip(58, 12)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(_ string, rcpts []string, _ []byte) error {
			if len(rcpts) > 0 && strings.Contains(rcpts[0], "n1-") {
				held.Add(1)
				<-release
			}
			return nil
		}}
	})
	var closeOnce sync.Once
	open := func() { closeOnce.Do(func() { close(release) }) }
	defer open()
	start := func(name string, n int) *harness {
		h := newHarness(t, port, func(o *Options) {
			// An idle session that kept its lease would hold it past the test.
			o.Pool.IdleTimeout = time.Hour
			o.Cluster = node(name)
			o.Shaper = testShaper(t, func(s *config.Shaping) {
				s.Default.MaxConnections = ptr(2)
				s.Default.IdleTimeout = ptr(time.Hour)
			})
		})
		h.mxFor("idle.test", ip(58, 12))
		h.resolved("idle.test")
		for i := range n {
			injectOn(h, fmt.Sprintf("%s-%d@idle.test", name, i))
		}
		return h
	}
	h1 := start("n1", 20)
	h1.until("two n1 messages held in DATA", func() bool { return held.Load() == 2 })
	h2 := start("n2", 3)
	h2.s.Tick(h2.clock.Advance(time.Second))
	if n := h2.s.Pool().Total(); n != 0 {
		t.Fatalf("n2 opened %d connections while n1 held both leases of the cap of 2", n)
	}
	open()
	sinks[0].WaitMessages(t, 20)
	// The session that sent n1's last message ends (the other one may
	// keep its lease while the count is below the cap: n2 has room then).
	h1.until("an n1 session to end with its queue empty (idle timeout: an hour)", func() bool { return h1.s.Pool().Total() < 2 })
	// Its lease is given back in Redis just after the pool's count drops
	// (Released makes the round trip): tick n2 until it gets in, each
	// tick a second on its clock, far from n1's hour of idle timeout.
	h2.until("n2 to get a lease and deliver", func() bool {
		h2.s.Tick(h2.clock.Advance(time.Second))
		return len(sinks[0].Messages()) >= 23
	})
	msgs := sinks[0].WaitMessages(t, 23)
	if len(msgs) != 23 {
		t.Fatalf("%d messages at the sink, want 23", len(msgs))
	}
}

// TestClusterFairShareYield: under a shared max_connections of 2, n1
// holds both leases with a long queue; n2, refused, marks itself waiting.
// n1's messages pass the sink one token at a time: after one, n1 (over its
// fair share of 1 of 2 nodes, another node waiting) ends one session,
// gives its lease back and takes no other, so n2 gets in and delivers
// while n1 still has mail queued. n1 never drops below its fair share:
// its other session keeps delivering throughout.
func TestClusterFairShareYield(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "fair:", Heartbeat: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	const n1Msgs, n2Msgs = 200, 3
	tokens := make(chan struct{})
	release := make(chan struct{})
	var n1Held atomic.Int64
	sinks, port := loopbacktest.StartSinks(t, []string{ip(58, 13)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(_ string, rcpts []string, _ []byte) error {
			if len(rcpts) > 0 && strings.Contains(rcpts[0], "n1-") {
				n1Held.Add(1)
				defer n1Held.Add(-1)
				select {
				case <-tokens:
				case <-release:
				}
			}
			return nil
		}}
	})
	var closeOnce sync.Once
	open := func() { closeOnce.Do(func() { close(release) }) }
	defer open()
	start := func(name string, n int) *harness {
		h := newHarness(t, port, func(o *Options) {
			o.Pool.IdleTimeout = time.Hour
			o.Cluster = node(name)
			o.Shaper = testShaper(t, func(s *config.Shaping) {
				s.Default.MaxConnections = ptr(2)
				s.Default.IdleTimeout = ptr(time.Hour)
				// No session ends for its count of deliveries: one
				// that ends does so for fairness.
				s.Default.MaxDeliveriesPerConnection = ptr(1000)
			})
		})
		h.mxFor("fair.test", ip(58, 13))
		h.resolved("fair.test")
		for i := range n {
			injectOn(h, fmt.Sprintf("%s-%d@fair.test", name, i))
		}
		return h
	}
	count := func(prefix string) int {
		n := 0
		for _, m := range sinks[0].Messages() {
			if len(m.To) > 0 && strings.HasPrefix(m.To[0], prefix) {
				n++
			}
		}
		return n
	}
	h1 := start("n1", n1Msgs)
	h1.until("two n1 messages held in DATA", func() bool { return n1Held.Load() == 2 })
	h2 := start("n2", n2Msgs)
	h2.s.Tick(h2.clock.Advance(time.Second))
	if n := h2.s.Pool().Total(); n != 0 {
		t.Fatalf("n2 opened %d connections while n1 held both leases of the cap of 2", n)
	}
	// Let n1's messages through one at a time (paced, so that n1's
	// reading of the waiters, cached a second, is read again well before
	// its queue empties) while n2 asks again at each tick, until n2 has
	// delivered its mail.
	h2.until("n2 to get a lease and deliver while n1 has mail queued", func() bool {
		// Sessions first: the sink counts a message before its session
		// can end.
		n := h1.s.Pool().Total()
		if got := count("n1-"); got >= n1Msgs {
			t.Fatalf("n2 got in only after n1 sent all its %d messages", got)
		}
		if n < 1 {
			t.Fatalf("n1 dropped to %d sessions with mail queued (fair share 1)", n)
		}
		h2.s.Tick(h2.clock.Advance(time.Second))
		if count("n2-") >= n2Msgs {
			return true
		}
		select {
		case tokens <- struct{}{}:
		case <-time.After(20 * time.Millisecond):
		}
		time.Sleep(20 * time.Millisecond)
		return false
	})
	if got := count("n1-"); got >= n1Msgs {
		t.Fatalf("n2 got in only after n1 sent all its %d messages", got)
	}
	if n := h1.s.Pool().Total(); n < 1 {
		t.Fatalf("n1 dropped to %d sessions with mail queued (fair share 1)", n)
	}
	open()
	msgs := sinks[0].WaitMessages(t, n1Msgs+n2Msgs)
	if len(msgs) != n1Msgs+n2Msgs {
		t.Fatalf("%d messages at the sink, want %d", len(msgs), n1Msgs+n2Msgs)
	}
}
