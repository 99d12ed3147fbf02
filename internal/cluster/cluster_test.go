package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/cluster/redistest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type nodeOpt func(*Config)

func newNode(t *testing.T, r *redistest.Server, name string, opts ...nodeOpt) *Cluster {
	t.Helper()
	cfg := Config{Addrs: []string{r.Addr()}, Node: name, Version: "test-1", Heartbeat: 100 * time.Millisecond,
		Timeout: 100 * time.Millisecond, Prefix: "t:" + t.Name() + ":"}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRateShared: three nodes spending one 50/s budget for 2 s get about
// 50/s between them, not 150/s. Tolerance: at most the burst (50) plus
// rate × elapsed plus one batch (5) per node held unspent at the end;
// at least 80% of rate × elapsed.
func TestRateShared(t *testing.T) {
	r := redistest.Start(t)
	r50 := Rate{N: 50, Per: time.Second}
	nodes := []*Cluster{newNode(t, r, "a"), newNode(t, r, "b"), newNode(t, r, "c")}
	var mu sync.Mutex
	total := 0
	start := time.Now()
	const span = 2 * time.Second
	var wg sync.WaitGroup
	for _, c := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && time.Since(start) < span; i++ {
				now := time.Now()
				ok, next := c.Take("site:mx.example|b1", r50, now)
				if ok {
					mu.Lock()
					total++
					mu.Unlock()
					continue
				}
				if !next.After(now) {
					t.Errorf("refused with next %v not after now %v", next, now)
					return
				}
				time.Sleep(min(next.Sub(now), 50*time.Millisecond))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	hi := 50 + 50*el + 3*5
	lo := 0.8 * 50 * el
	t.Logf("%d taken in %.2fs by 3 nodes (bounds %.0f..%.0f), %d redis calls", total, el, lo, hi,
		nodes[0].Calls()+nodes[1].Calls()+nodes[2].Calls())
	if float64(total) > hi || float64(total) < lo {
		t.Fatalf("taken %d, want within %.0f..%.0f", total, lo, hi)
	}
}

// TestTakeAllAllOrNothing: a key without a token keeps the other key's
// token unspent.
func TestTakeAllAllOrNothing(t *testing.T) {
	r := redistest.Start(t)
	c := newNode(t, r, "a")
	slow := Rate{N: 1, Per: time.Hour}
	fast := Rate{N: 1000, Per: time.Second}
	now := time.Now()
	if ok, _ := c.Take("slow", slow, now); !ok {
		t.Fatal("first token of a fresh budget refused")
	}
	ok, next := c.TakeAll([]string{"fast", "slow"}, []Rate{fast, slow}, now)
	if ok || next.Sub(now) < 59*time.Minute {
		t.Fatalf("TakeAll = %v, next in %v; want refused for about an hour", ok, next.Sub(now))
	}
	if got := c.budgets.m["fast"].tokens; got != batchSize(fast) {
		t.Fatalf("fast budget holds %d tokens after a refused TakeAll, want the whole batch %d", got, batchSize(fast))
	}
	if ok, _ := c.Ready([]string{"slow"}, []Rate{slow}, now); ok {
		t.Fatal("Ready says yes for a refused budget")
	}
}

func TestBatchSize(t *testing.T) {
	for _, tc := range []struct {
		r    Rate
		want int
	}{
		{Rate{10, time.Minute}, 1},
		{Rate{5, time.Second}, 1},
		{Rate{100, time.Second}, 10},
		{Rate{1e6, time.Second}, 100000},
		{Rate{2.5, time.Second}, 1},
	} {
		if got := batchSize(tc.r); got != tc.want {
			t.Errorf("batchSize(%v) = %d, want %d", tc.r, got, tc.want)
		}
	}
}

// TestLeaseCap: three nodes asking for 4 leases each under a cap of 5
// get 5 between them; a release lets one more in.
func TestLeaseCap(t *testing.T) {
	r := redistest.Start(t)
	nodes := []*Cluster{newNode(t, r, "a"), newNode(t, r, "b"), newNode(t, r, "c")}
	var mu sync.Mutex
	var got []*Lease
	var wg sync.WaitGroup
	for _, c := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				l, ok, err := c.Acquire("site:x", 5)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					got = append(got, l)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(got) != 5 {
		t.Fatalf("%d leases granted under a cap of 5", len(got))
	}
	if n, err := nodes[0].Count(context.Background(), "site:x"); err != nil || n != 5 {
		t.Fatalf("Count = %d, %v; want 5", n, err)
	}
	if _, ok, _ := nodes[2].Acquire("site:x", 5); ok {
		t.Fatal("a 6th lease granted")
	}
	got[0].Release()
	got[0].Release() // twice does nothing
	l, ok, _ := nodes[2].Acquire("site:x", 5)
	if !ok {
		t.Fatal("no lease after a release")
	}
	l.Release()
}

// TestLeaseExpiry: a node's leases outlive their TTL while it renews
// them, and return within the TTL once it stops (killed: no release).
func TestLeaseExpiry(t *testing.T) {
	r := redistest.Start(t)
	ttl := 600 * time.Millisecond
	a := newNode(t, r, "a", func(c *Config) { c.LeaseTTL = ttl })
	b := newNode(t, r, "b", func(c *Config) { c.LeaseTTL = ttl })
	if _, ok, _ := a.Acquire("pair", 1); !ok {
		t.Fatal("no lease")
	}
	// Held across 3 TTLs by renewal.
	for deadline := time.Now().Add(3 * ttl); time.Now().Before(deadline); time.Sleep(ttl / 4) {
		if _, ok, _ := b.Acquire("pair", 1); ok {
			t.Fatal("a renewed lease was lost: another node got the cap's only slot")
		}
	}
	// "Kill" a: its goroutines stop, nothing is released.
	killed := time.Now()
	a.stop()
	a.wg.Wait()
	var back time.Duration
	for i := 0; i < 100; i++ {
		if l, ok, _ := b.Acquire("pair", 1); ok {
			back = time.Since(killed)
			l.Release()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if back == 0 || back > ttl+ttl/3+200*time.Millisecond {
		t.Fatalf("the dead node's lease came back after %v (0: never), want within the TTL %v", back, ttl)
	}
	t.Logf("lease back %v after the node stopped (ttl %v)", back, ttl)
}

// TestSharedPropagation: a record put on one node reaches the others
// within a second, with its source; a delete likewise.
func TestSharedPropagation(t *testing.T) {
	r := redistest.Start(t)
	type seen struct {
		node string
		recs map[string]Record
	}
	ch := make(chan seen, 16)
	follow := func(name string) nodeOpt {
		return func(c *Config) {
			c.Heartbeat = time.Hour // only pub/sub can deliver within the test
			c.SharedKinds = []string{"susp"}
			c.OnShared = func(kind string, recs map[string]Record) {
				if kind == "susp" {
					ch <- seen{name, recs}
				}
			}
		}
	}
	a := newNode(t, r, "a")
	newNode(t, r, "b", follow("b"))
	newNode(t, r, "c", follow("c"))
	time.Sleep(100 * time.Millisecond) // subscriptions settle (not a result: a miss fails below)
	wait := func(want int) map[string]map[string]Record {
		got := map[string]map[string]Record{}
		deadline := time.After(time.Second)
		for len(got) < 2 {
			select {
			case s := <-ch:
				if len(s.recs) == want {
					got[s.node] = s.recs
				}
			case <-deadline:
				t.Fatalf("after 1 s only %d of 2 nodes saw %d records", len(got), want)
			}
		}
		return got
	}
	if err := a.Put(context.Background(), "susp", "s1", time.Now(), time.Now().Add(time.Hour), []byte(`{"domain":"x.example"}`)); err != nil {
		t.Fatal(err)
	}
	for n, recs := range wait(1) {
		if rec := recs["s1"]; rec.Source != "a" || string(rec.Data) != `{"domain":"x.example"}` {
			t.Fatalf("node %s saw %+v", n, rec)
		}
	}
	if err := a.Lift(context.Background(), "susp", "s1", time.Now(), time.Now().Add(time.Hour), "ops", "done"); err != nil {
		t.Fatal(err)
	}
	for n, recs := range wait(1) {
		if rec := recs["s1"]; !rec.Lifted || rec.Source != "a" || rec.By != "ops" || rec.Reason != "done" {
			t.Fatalf("node %s saw %+v after the lift, want a tombstone from a", n, rec)
		}
	}
}

// TestMembers lists the nodes with version and queued count, and drops a
// dead one.
func TestMembers(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Queued = func() int { return 7 } })
	b := newNode(t, r, "b")
	ms, err := a.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Name != "a" || ms[0].Queued != 7 || ms[0].Version != "test-1" || ms[1].Name != "b" ||
		time.Since(ms[1].Heartbeat) > time.Minute {
		t.Fatalf("members %+v", ms)
	}
	b.Close()
	ms, _ = a.Members(context.Background())
	if len(ms) != 1 || ms[0].Name != "a" {
		t.Fatalf("after b closed: %+v", ms)
	}
}

// TestFallback: with redis-server killed, nodes fall back to their share
// (1/3 of a cap of 6: 2 leases each; of a 30/s budget: about 10/s), say
// so once, and take the shared limits up again when it is back.
func TestFallback(t *testing.T) {
	r := redistest.Start(t)
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	nodes := []*Cluster{
		newNode(t, r, "a", func(c *Config) { c.Log = log }),
		newNode(t, r, "b"), newNode(t, r, "c"),
	}
	a := nodes[0]
	if err := a.Status(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50 && a.members.Load() != 3; i++ {
		time.Sleep(50 * time.Millisecond) // a's next heartbeats count b and c
	}
	r.Kill()
	// The first call after the kill fails within the timeout and falls back.
	t0 := time.Now()
	l, ok, err := a.Acquire("site:y", 6)
	if took := time.Since(t0); took > time.Second {
		t.Errorf("Acquire on a dead redis took %v", took)
	}
	if err != nil || !ok {
		t.Fatalf("fallback Acquire = %v, %v", ok, err)
	}
	defer l.Release()
	// Fallback is declared at the second failed heartbeat (100 ms each).
	for i := 0; i < 100; i++ {
		if down, _ := a.Fallback(); down {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if down, mode := a.Fallback(); !down || mode != FallbackShare {
		t.Fatalf("Fallback() = %v, %v", down, mode)
	}
	if err := a.Status(); err == nil || !strings.Contains(err.Error(), "1/3") {
		t.Fatalf("Status() = %v, want the 1/3 share named", err)
	}
	if _, ok, _ := a.Acquire("site:y", 6); !ok {
		t.Fatal("second lease of a share of 2 refused")
	}
	if _, ok, _ := a.Acquire("site:y", 6); ok {
		t.Fatal("third lease granted over a share of 2")
	}
	// A cap of 2 over 3 nodes: a and b (first by name) 1 each, c none,
	// so the three together stay within 2.
	got := 0
	for _, c := range nodes {
		for i := 0; i < 3; i++ {
			if _, ok, _ := c.Acquire("site:two", 2); ok {
				got++
			}
		}
	}
	if got != 2 {
		t.Fatalf("three nodes in fallback took %d leases under a cap of 2", got)
	}
	if _, ok, _ := nodes[2].Acquire("site:z", 2); ok {
		t.Fatal("node c, third of three, got a lease under a cap of 2")
	}
	// Rate at 1/3 of 30/s over 1 s: about 10 (+1 start token), not 30.
	r30 := Rate{N: 30, Per: time.Second}
	n := 0
	start := time.Now()
	for i := 0; i < 10000 && time.Since(start) < time.Second; i++ {
		if ok, next := a.Take("site:y", r30, time.Now()); ok {
			n++
		} else {
			time.Sleep(time.Until(next))
		}
	}
	if el := time.Since(start).Seconds(); float64(n) > 10*el+2 || float64(n) < 0.7*10*el {
		t.Fatalf("fallback took %d in %.2fs, want about 10/s", n, el)
	}
	if c := logs.FilterMessageSnippet("redis unreachable").Len(); c != 1 {
		t.Fatalf("fallback logged %d times, want once", c)
	}

	r.Restart()
	for i := 0; i < 50; i++ {
		if down, _ := a.Fallback(); !down {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := a.Status(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if c := logs.FilterMessageSnippet("redis answers again").Len(); c != 1 {
		t.Fatalf("recovery logged %d times, want once", c)
	}
	// The leases held through the outage are counted in Redis again by
	// the next renewal (LeaseTTL/3 = 10 s is too slow for a test: renew now).
	a.renew()
	if n, err := a.Count(context.Background(), "site:y"); err != nil || n != 2 {
		t.Fatalf("after recovery Redis counts %d leases (%v), want the 2 held", n, err)
	}
	for i, c := range nodes {
		if ok, _ := c.Take(fmt.Sprint("after", i), r30, time.Now()); !ok {
			t.Fatalf("node %d: shared budget refused after recovery", i)
		}
	}
}

// TestShareOf: the parts of a cap add up to it over the nodes, the first
// ranked taking the remainder.
func TestShareOf(t *testing.T) {
	for _, tc := range []struct {
		cap, n int
		want   []int
	}{
		{6, 3, []int{2, 2, 2}},
		{7, 3, []int{3, 2, 2}},
		{2, 3, []int{1, 1, 0}},
		{1, 4, []int{1, 0, 0, 0}},
		{5, 1, []int{5}},
		{0, 2, []int{0, 0}},
	} {
		sum := 0
		for i, w := range tc.want {
			got := ShareOf(tc.cap, tc.n, i)
			if got != w {
				t.Errorf("ShareOf(%d, %d, %d) = %d, want %d", tc.cap, tc.n, i, got, w)
			}
			sum += got
		}
		if sum != tc.cap {
			t.Errorf("cap %d over %d nodes: parts add up to %d", tc.cap, tc.n, sum)
		}
	}
}

// TestSlowReplyNotFallback: redis-server stopped (SIGSTOP) across one
// heartbeat is a slow reply, not an outage: the calls made meanwhile are
// answered locally within the timeout, but the node does not declare
// fallback; stopped across two heartbeats in a row, it does. The
// heartbeats are driven by hand (Heartbeat is an hour) so that each
// pause spans exactly the beats the test says.
func TestSlowReplyNotFallback(t *testing.T) {
	r := redistest.Start(t)
	core, logs := observer.New(zap.InfoLevel)
	a := newNode(t, r, "a", func(c *Config) { c.Heartbeat = time.Hour; c.Log = zap.New(core) })
	defer r.Resume() // before Cleanup's Close and Kill

	r.Pause()
	t0 := time.Now()
	_, ok, err := a.Acquire("site:s", 2)
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("Acquire on a stopped redis took %v", took)
	}
	if err != nil || !ok {
		t.Fatalf("Acquire on a stopped redis = %v, %v, want a local answer", ok, err)
	}
	if a.beat() {
		t.Fatal("heartbeat answered by a stopped redis")
	}
	a.beatFailed()
	if down, _ := a.Fallback(); down || a.Status() != nil {
		t.Fatalf("one failed heartbeat declared fallback: %v", a.Status())
	}
	r.Resume()
	if !a.beat() {
		t.Fatal("heartbeat failed after SIGCONT")
	}
	if a.InFallback() {
		t.Fatal("calls still answered locally after a heartbeat answered")
	}
	if c := logs.FilterMessageSnippet("redis unreachable").Len(); c != 0 {
		t.Fatalf("fallback logged %d times for one slow heartbeat", c)
	}

	r.Pause()
	for i := 0; i < 2; i++ {
		if a.beat() {
			t.Fatal("heartbeat answered by a stopped redis")
		}
		a.beatFailed()
	}
	r.Resume()
	if down, _ := a.Fallback(); !down {
		t.Fatal("two failed heartbeats in a row did not declare fallback")
	}
	if c := logs.FilterMessageSnippet("redis unreachable").Len(); c != 1 {
		t.Fatalf("fallback logged %d times, want once", c)
	}
	if !a.beat() {
		t.Fatal("heartbeat failed after SIGCONT")
	}
	if down, _ := a.Fallback(); down {
		t.Fatal("still in fallback after a heartbeat answered")
	}
}

// TestLeaseWaiters: a refusal marks its node waiting under the key
// (Acquire, and AcquireAll for the keys that refused); other nodes see it,
// the node itself does not count as another node waiting, and a key where
// nobody was refused has no waiters.
func TestLeaseWaiters(t *testing.T) {
	r := redistest.Start(t)
	a, b, c := newNode(t, r, "a"), newNode(t, r, "b"), newNode(t, r, "c")
	for range 2 {
		if _, ok, err := a.Acquire("site:x", 2); !ok || err != nil {
			t.Fatalf("lease under a cap of 2: %v, %v", ok, err)
		}
	}
	if c.OthersWaiting("site:x") {
		t.Fatal("c sees a node waiting under site:x before any refusal")
	}
	if _, ok, _ := a.Acquire("site:x", 2); ok {
		t.Fatal("a 3rd lease under a cap of 2")
	}
	if a.OthersWaiting("site:x") {
		t.Fatal("a counts its own refusal as another node waiting")
	}
	if !b.OthersWaiting("site:x") {
		t.Fatal("b does not see a waiting under site:x")
	}
	// AcquireAll: only the key that refused is marked.
	if _, ok, _ := c.Acquire("site:w", 1); !ok {
		t.Fatal("no lease under site:w")
	}
	if _, ok, _ := b.AcquireAll([]string{"site:z", "site:w"}, []int{5, 1}); ok {
		t.Fatal("AcquireAll granted over the cap of site:w")
	}
	if a.OthersWaiting("site:y") { // never asked for
		t.Fatal("a sees a node waiting under site:y")
	}
	if c.OthersWaiting("site:z") {
		t.Fatal("site:z (granted, given back) marked waiting")
	}
	if !c.OthersWaiting("site:w") {
		t.Fatal("c does not see b waiting under site:w")
	}
	if n, err := c.Count(context.Background(), "site:z"); err != nil || n != 0 {
		t.Fatalf("site:z leases after a refused AcquireAll: %d, %v", n, err)
	}
}
