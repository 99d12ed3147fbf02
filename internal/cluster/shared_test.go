package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mtad/mtad/internal/cluster/redistest"
)

// rawRecord reads kind/id straight from Redis (ok false: missing).
func rawRecord(t *testing.T, r *redistest.Server, c *Cluster, kind, id string) (Record, bool) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, err := rdb.HGet(ctx, c.hashKey(kind), id).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, false
	}
	if err != nil {
		return Record{}, false // down: the caller waits
	}
	var rec Record
	if err := json.Unmarshal([]byte(v), &rec); err != nil {
		t.Fatalf("record %s/%s: %v", kind, id, err)
	}
	return rec, true
}

// waitFor polls cond every 20 ms for at most 5 s (bounded; a machine
// under load does not fail what works) and fails with what.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("after 5 s: %s", what)
}

// TestSharedRepublishedAfterEmptyRestart: Redis restarted without its
// data gets the node's live record back (the epoch changed), and no node
// is told it was lifted.
func TestSharedRepublishedAfterEmptyRestart(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a")
	now := time.Now()
	if err := a.Put(context.Background(), "susp", "s1", now, now.Add(time.Hour), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	r.Restart()
	waitFor(t, "the record is back in the restarted Redis", func() bool {
		rec, ok := rawRecord(t, r, a, "susp", "s1")
		return ok && !rec.Lifted && rec.Source == "a"
	})
}

// TestSharedChangesDuringFallback: a lift made on b while Redis is
// stalled (SIGSTOP) is queued and written when Redis answers, and a sees
// it; a's own record, re-put before the lift, stays lifted.
func TestSharedChangesDuringFallback(t *testing.T) {
	r := redistest.Start(t)
	seen := make(chan Record, 64)
	a := newNode(t, r, "a", func(c *Config) {
		c.SharedKinds = []string{"susp"}
		c.OnShared = func(kind string, recs map[string]Record) {
			if rec, ok := recs["s1"]; ok {
				seen <- rec
			}
		}
	})
	b := newNode(t, r, "b")
	now := time.Now()
	if err := a.Put(context.Background(), "susp", "s1", now, now.Add(time.Hour), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	r.Pause()
	waitFor(t, "b in fallback", func() bool { down, _ := b.Fallback(); return down })
	if err := b.Lift(context.Background(), "susp", "s1", time.Now(), now.Add(time.Hour), "", ""); !errors.Is(err, ErrPending) {
		r.Resume()
		t.Fatalf("lift in fallback: %v, want ErrPending", err)
	}
	r.Resume()
	waitFor(t, "b's lift reaches Redis", func() bool {
		rec, ok := rawRecord(t, r, b, "susp", "s1")
		return ok && rec.Lifted && rec.Source == "b"
	})
	waitFor(t, "a sees b's lift", func() bool {
		for {
			select {
			case rec := <-seen:
				if rec.Lifted && rec.Source == "b" {
					return true
				}
			default:
				return false
			}
		}
	})
	// a replays its own record after recovery: refused (older than the lift).
	if !a.replay(true) {
		t.Fatal("replay failed")
	}
	if rec, _ := rawRecord(t, r, a, "susp", "s1"); !rec.Lifted {
		t.Fatalf("a's replay undid b's lift: %+v", rec)
	}
}

// TestSharedConditional: a shorter record does not replace a longer one,
// and the shorter one's expiry does not delete the longer; a record set
// after a lift replaces the tombstone, one set before it does not.
func TestSharedConditional(t *testing.T) {
	r := redistest.Start(t)
	a, b := newNode(t, r, "a"), newNode(t, r, "b")
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	long, short := now.Add(time.Hour), now.Add(10*time.Minute)
	if err := b.Put(ctx, "susp", "s1", now, long, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := a.Put(ctx, "susp", "s1", now, short, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if rec, _ := rawRecord(t, r, a, "susp", "s1"); rec.Source != "b" || rec.Until != long.UnixMilli() {
		t.Fatalf("after a's shorter put Redis holds %+v, want b's hour", rec)
	}
	if err := a.Expire(ctx, "susp", "s1", short); err != nil {
		t.Fatal(err)
	}
	if rec, ok := rawRecord(t, r, a, "susp", "s1"); !ok || rec.Source != "b" {
		t.Fatalf("a's expiry removed b's longer record: %+v %v", rec, ok)
	}
	lift := now.Add(time.Minute)
	if err := a.Lift(ctx, "susp", "s1", lift, short, "", ""); err != nil {
		t.Fatal(err)
	}
	rec, _ := rawRecord(t, r, a, "susp", "s1")
	if !rec.Lifted || rec.Until != long.UnixMilli() {
		t.Fatalf("tombstone %+v, want lifted and kept until the lifted hour", rec)
	}
	if err := b.Put(ctx, "susp", "s1", now, long.Add(time.Hour), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if rec, _ := rawRecord(t, r, a, "susp", "s1"); !rec.Lifted {
		t.Fatalf("a record set before the lift replaced it: %+v", rec)
	}
	if err := b.Put(ctx, "susp", "s1", lift.Add(time.Second), short, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if rec, _ := rawRecord(t, r, a, "susp", "s1"); rec.Lifted || rec.Source != "b" {
		t.Fatalf("a record set after the lift did not replace it: %+v", rec)
	}
	if err := b.Expire(ctx, "susp", "s1", short); err != nil {
		t.Fatal(err)
	}
	if _, ok := rawRecord(t, r, a, "susp", "s1"); ok {
		t.Fatal("the expired record is still there")
	}
}

// TestLeasesRenewedOnRecovery: two nodes hold a cap of 4 through an
// outage (2 each by rank); Redis comes back empty. Before either takes a
// lease against Redis's count again, the leases held through fallback
// are in Redis: a fifth is refused.
func TestLeasesRenewedOnRecovery(t *testing.T) {
	r := redistest.Start(t)
	a, b := newNode(t, r, "a"), newNode(t, r, "b")
	waitFor(t, "a counts 2 nodes", func() bool { return a.members.Load() == 2 && b.members.Load() == 2 })
	r.Kill()
	for _, c := range []*Cluster{a, b} {
		waitFor(t, c.Node()+" in fallback", func() bool { down, _ := c.Fallback(); return down })
		for i := range 2 {
			l, ok, _ := c.Acquire("site:z", 4)
			if !ok {
				t.Fatalf("%s: fallback lease %d of its share of 2 refused", c.Node(), i+1)
			}
			defer l.Release()
		}
	}
	r.Restart()
	for _, c := range []*Cluster{a, b} {
		waitFor(t, c.Node()+" out of fallback", func() bool { return !c.InFallback() })
	}
	if n, err := a.Count(context.Background(), "site:z"); err != nil || n != 4 {
		t.Fatalf("Redis counts %d leases (%v) after recovery, want the 4 held", n, err)
	}
	if l, ok, _ := a.Acquire("site:z", 4); ok {
		l.Release()
		t.Fatal("a fifth lease under a cap of 4 after recovery")
	}
}

// countHook counts the round trips a client makes (a command, or a
// pipeline), and the ZREMs sent alone; delay, if set, holds each command
// that long (widening the window for concurrent callers).
type countHook struct {
	mu          sync.Mutex
	trips, zrem int
	delay       time.Duration
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "subscribe", "ping", "hello", "client":
			return next(ctx, cmd) // the pub/sub reader's connection, not a call
		}
		h.mu.Lock()
		h.trips++
		if cmd.Name() == "zrem" {
			h.zrem++
		}
		h.mu.Unlock()
		time.Sleep(h.delay)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		h.trips++
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestCloseReleasesInOneTrip: Close gives back 20 leases over two keys
// in one round trip (so a hung Redis costs one timeout), and they are
// gone from Redis; with Redis stalled, Close still returns.
func TestCloseReleasesInOneTrip(t *testing.T) {
	r := redistest.Start(t)
	b := newNode(t, r, "b")
	for _, stalled := range []bool{false, true} {
		a, err := New(Config{Addrs: []string{r.Addr()}, Node: "a", Timeout: 100 * time.Millisecond, Prefix: "t:" + t.Name() + ":"})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if _, ok, _ := a.Acquire(fmt.Sprintf("k%d", i%2), 100); !ok {
				t.Fatal("lease refused")
			}
		}
		h := &countHook{}
		a.rdb.AddHook(h)
		if stalled {
			r.Pause()
		}
		a.Close()
		if stalled {
			r.Resume()
		}
		if h.trips != 1 || h.zrem != 0 {
			t.Fatalf("stalled=%v: Close made %d round trips (%d lone ZREMs), want 1", stalled, h.trips, h.zrem)
		}
		if !stalled {
			for _, k := range []string{"k0", "k1"} {
				if n, err := b.Count(context.Background(), k); err != nil || n != 0 {
					t.Fatalf("%s: %d leases left after Close (%v)", k, n, err)
				}
			}
		}
	}
}

// TestKeysPrefixed: every key a node writes (rate budgets, leases,
// records, membership) starts with its Prefix, so an ACL such as
// ~mtad:* covers them.
func TestKeysPrefixed(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Prefix = "pfx:" })
	if ok, _ := a.Take("site:x|b1", Rate{N: 10, Per: time.Second}, time.Now()); !ok {
		t.Fatal("first token refused")
	}
	if _, ok, _ := a.Acquire("site:x|b1", 3); !ok {
		t.Fatal("lease refused")
	}
	if err := a.Put(context.Background(), "susp", "s1", time.Now(), time.Now().Add(time.Hour), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	hasRate := false
	for _, k := range keys {
		if !strings.HasPrefix(k, "pfx:") {
			t.Errorf("key %q does not start with the prefix", k)
		}
		hasRate = hasRate || strings.Contains(k, "rate:site:x|b1")
	}
	if !hasRate {
		t.Fatalf("no rate key among %q", keys)
	}
}

// inFlightHook holds each command until a second one is in flight (or
// its deadline): it shows whether two calls reach Redis at once.
type inFlightHook struct {
	mu      sync.Mutex
	n, most int
	arrived chan struct{}
	once    sync.Once
}

func (h *inFlightHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *inFlightHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *inFlightHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name != "evalsha" && name != "eval" {
			return next(ctx, cmd) // the rate script only
		}
		h.mu.Lock()
		h.n++
		h.most = max(h.most, h.n)
		if h.n >= 2 {
			h.once.Do(func() { close(h.arrived) })
		}
		h.mu.Unlock()
		select {
		case <-h.arrived:
		case <-ctx.Done():
		}
		defer func() { h.mu.Lock(); h.n--; h.mu.Unlock() }()
		return next(ctx, cmd)
	}
}

// TestTakesNotSerialized: Takes of different keys reach Redis together
// (no node-wide lock across the round trip): two refills are in flight at
// once. With the lock held across the call the first waits alone until
// its deadline.
func TestTakesNotSerialized(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Timeout = 2 * time.Second; c.Heartbeat = time.Hour })
	h := &inFlightHook{arrived: make(chan struct{})}
	a.rdb.AddHook(h)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Take(fmt.Sprintf("site:k%d", i), Rate{N: 100, Per: time.Second}, time.Now())
		}()
	}
	wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.most < 2 {
		t.Fatalf("at most %d Redis calls in flight for 8 Takes of 8 keys, want them concurrent", h.most)
	}
}

// TestOneRefillPerKey: eight concurrent Takes of one key whose batch is
// ten tokens make one refill between them, not one each.
func TestOneRefillPerKey(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Timeout = 2 * time.Second; c.Heartbeat = time.Hour })
	a.Take("site:warm", Rate{N: 100, Per: time.Second}, time.Now()) // loads the script (EVALSHA's NOSCRIPT, then EVAL)
	h := &countHook{delay: 50 * time.Millisecond}
	a.rdb.AddHook(h)
	var wg sync.WaitGroup
	var mu sync.Mutex
	took := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, _ := a.Take("site:one", Rate{N: 100, Per: time.Second}, time.Now()); ok {
				mu.Lock()
				took++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	if took != 8 || h.trips != 1 {
		t.Fatalf("8 Takes of one key: %d took a token, %d Redis calls; want 8 and 1 refill of 10", took, h.trips)
	}
}

// TestAcquireAllOneTrip: a connection's three leases take one round
// trip; when one key is at its cap none is held and the others' counts
// are as before.
func TestAcquireAllOneTrip(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Heartbeat = time.Hour })
	keys := []string{"site:s", "domain:d", "provider:p"}
	h := &countHook{}
	a.rdb.AddHook(h)
	set, ok, err := a.AcquireAll(keys, []int{5, 5, 1})
	if err != nil || !ok || len(set) != 3 {
		t.Fatalf("AcquireAll = %d leases, %v, %v", len(set), ok, err)
	}
	h.mu.Lock()
	trips := h.trips
	h.mu.Unlock()
	if trips != 1 {
		t.Fatalf("three leases took %d round trips, want 1", trips)
	}
	if _, ok, _ := a.AcquireAll(keys, []int{5, 5, 1}); ok {
		t.Fatal("a second set granted over the provider's cap of 1")
	}
	for i, k := range keys {
		if n, err := a.Count(context.Background(), k); err != nil || n != 1 {
			t.Fatalf("%s holds %d leases (%v) after a refused set, want 1", k, n, err)
		}
		if a.Held(k) != 1 {
			t.Fatalf("%s: Held = %d", keys[i], a.Held(k))
		}
	}
	for _, l := range set {
		l.Release()
	}
}

// TestRedisLogLimited: go-redis's log lines reach zap at most once per
// period, the next one counting those dropped.
func TestRedisLogLimited(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	l := newRedisLog(zap.New(core), time.Hour)
	for i := range 100 {
		l.Printf(context.Background(), "failed to dial after %d attempts", i)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d lines logged for 100, want 1", n)
	}
	if e := logs.All()[0]; e.ContextMap()["msg"] != "failed to dial after 0 attempts" {
		t.Fatalf("logged %v", e.ContextMap())
	}
	if l.dropped.Load() != 99 {
		t.Fatalf("dropped %d, want 99", l.dropped.Load())
	}
}

// TestMembersKeptForStartInFallback: a node that starts while Redis is
// down takes its share among the nodes it saw last (kept in its state
// file), not the whole limit.
func TestMembersKeptForStartInFallback(t *testing.T) {
	r := redistest.Start(t)
	state := filepath.Join(t.TempDir(), "cluster-nodes")
	withState := func(c *Config) { c.StateFile = state }
	a := newNode(t, r, "a", withState)
	newNode(t, r, "b")
	newNode(t, r, "c")
	waitFor(t, "a sees 3 nodes", func() bool { return a.members.Load() == 3 })
	a.Close()
	r.Kill()
	a2 := newNode(t, r, "a", withState)
	if down, _ := a2.Fallback(); !down {
		t.Fatal("started in shared mode on a dead Redis")
	}
	if got := a2.FallbackCap(6); got != 2 {
		t.Fatalf("FallbackCap(6) = %d on a start in fallback after seeing 3 nodes, want 2", got)
	}
	if err := a2.Status(); err == nil || !strings.Contains(err.Error(), "1/3") {
		t.Fatalf("Status = %v, want the 1/3 share", err)
	}
}

// TestNoPhantomLease: an acquire whose reply is lost (Redis stalled past
// the timeout; it runs the script when it continues) and that fallback
// stop refuses leaves no lease counted once Redis answers again, long
// before the lease TTL.
func TestNoPhantomLease(t *testing.T) {
	r := redistest.Start(t)
	a := newNode(t, r, "a", func(c *Config) { c.Fallback = FallbackStop; c.LeaseTTL = time.Minute })
	if l, ok, _ := a.Acquire("site:warm", 5); ok {
		l.Release() // Redis knows the script: the stalled EVALSHA runs when it continues
	}
	r.Pause()
	_, ok, _ := a.Acquire("site:ph", 5)
	r.Resume()
	if ok {
		t.Fatal("a lease granted on a stalled Redis in fallback stop")
	}
	waitFor(t, "no lease counted", func() bool {
		n, err := a.Count(context.Background(), "site:ph")
		return err == nil && n == 0 && !a.InFallback()
	})
}

// TestEndedRecordsSwept: a record and a tombstone that ended over a
// minute ago, set by a node that is gone, are removed by a node that
// reads the kind; a current one stays.
func TestEndedRecordsSwept(t *testing.T) {
	r := redistest.Start(t)
	gone := newNode(t, r, "gone")
	old := time.Now().Add(-time.Hour)
	ctx := context.Background()
	if err := gone.Put(ctx, "susp", "s-old", old, old.Add(time.Minute), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := gone.Lift(ctx, "susp", "t-old", old, old.Add(time.Minute), "", ""); err != nil {
		t.Fatal(err)
	}
	if err := gone.Put(ctx, "susp", "s-now", time.Now(), time.Now().Add(time.Hour), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	gone.Close()
	a := newNode(t, r, "a", func(c *Config) {
		c.SharedKinds = []string{"susp"}
		c.OnShared = func(string, map[string]Record) {}
	})
	waitFor(t, "the ended record and tombstone swept", func() bool {
		_, s := rawRecord(t, r, a, "susp", "s-old")
		_, tb := rawRecord(t, r, a, "susp", "t-old")
		return !s && !tb
	})
	if _, ok := rawRecord(t, r, a, "susp", "s-now"); !ok {
		t.Fatal("the current record was swept")
	}
}
