package queue_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mk(id, domain string, slot, prio int32, arrival int64) *queue.Delivery {
	return &queue.Delivery{MsgID: id, Domain: domain, Slot: slot, Priority: prio, Arrival: arrival,
		Rcpts: []queue.Rcpt{{Idx: 0, Addr: "rcpt@" + domain}}}
}

func popAll(p *queue.Pair) []string {
	var ids []string
	for range 1000 {
		d := p.Pop()
		if d == nil {
			break
		}
		ids = append(ids, d.MsgID)
	}
	return ids
}

func TestActiveOrder(t *testing.T) {
	t.Parallel()
	type in struct {
		id      string
		prio    int32
		arrival int64
	}
	tests := []struct {
		name string
		push []in
		want []string
	}{
		{"priority first", []in{{"a", 5, 1}, {"b", 0, 9}, {"c", -1, 50}}, []string{"c", "b", "a"}},
		{"then arrival", []in{{"a", 0, 30}, {"b", 0, 10}, {"c", 0, 20}}, []string{"b", "c", "a"}},
		{"then push order", []in{{"a", 0, 10}, {"b", 0, 10}, {"c", 0, 10}}, []string{"a", "b", "c"}},
		{"mixed", []in{{"a", 1, 1}, {"b", 0, 5}, {"c", 0, 5}, {"d", 0, 2}, {"e", 1, 0}},
			[]string{"d", "b", "c", "e", "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := queue.New()
			var p *queue.Pair
			for _, x := range tt.push {
				p = q.Push(mk(x.id, "example.com", 0, x.prio, x.arrival))
			}
			if got := p.Peek(); got == nil || got.MsgID != tt.want[0] {
				t.Fatalf("Peek = %v, want %s", got, tt.want[0])
			}
			if p.Len() != len(tt.want) {
				t.Fatalf("Len = %d, want %d", p.Len(), len(tt.want))
			}
			if h, n := p.Head(); h == nil || h.MsgID != tt.want[0] || n != len(tt.want) {
				t.Fatalf("Head = %v, %d; want %s, %d", h, n, tt.want[0], len(tt.want))
			}
			if got := popAll(p); !slices.Equal(got, tt.want) {
				t.Fatalf("pop order %v, want %v", got, tt.want)
			}
			if h, n := p.Head(); h != nil || n != 0 {
				t.Fatalf("Head of the emptied queue = %v, %d", h, n)
			}
		})
	}
}

// A delivery that goes round the delayed queue keeps its seq, so it does not
// lose its place to a later delivery with the same priority and arrival.
func TestSeqKeptAcrossDelay(t *testing.T) {
	t.Parallel()
	q := queue.New()
	a, b := mk("a", "x.org", 0, 0, 1), mk("b", "x.org", 0, 0, 1)
	p := q.Push(a)
	q.Push(b)
	if d := p.Pop(); d != a {
		t.Fatalf("first pop %v, want a", d.MsgID)
	}
	now := time.Unix(100, 0)
	q.Delay(a, now)
	due := q.Due(now, 10, nil)
	if len(due) != 1 || due[0] != a {
		t.Fatalf("Due = %v, want [a]", due)
	}
	q.Push(a)
	if got := popAll(p); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("order %v, want [a b]", got)
	}
}

func TestPairsBySlotAndDomainCase(t *testing.T) {
	t.Parallel()
	q := queue.New()
	d := mk("m1", "Example.COM", 3, 0, 1)
	p := q.Push(d)
	if p.Slot() != 3 || p.Domain().Name != "example.com" || d.Domain != "example.com" {
		t.Fatalf("pair slot %d domain %q delivery domain %q", p.Slot(), p.Domain().Name, d.Domain)
	}
	dr := q.Domain("EXAMPLE.com")
	if dr != p.Domain() || dr.Pair(3) != p {
		t.Fatal("Domain/Pair did not return the same record and pair")
	}
	if dr.Pair(1).Len() != 0 || dr.Pair(1).Pop() != nil || dr.Pair(1).Peek() != nil {
		t.Fatal("slot 1 should be empty")
	}
	if got := dr.Pairs(nil); len(got) != 2 || got[0].Slot() != 1 || got[1].Slot() != 3 {
		t.Fatalf("Pairs = %v", got)
	}
	if dr.Queued() != 1 {
		t.Fatalf("Queued = %d, want 1", dr.Queued())
	}
	if _, ok := q.Lookup("nowhere.test"); ok {
		t.Fatal("Lookup created a record")
	}
}

func readySet(q *queue.Queues) map[string]bool {
	m := map[string]bool{}
	for _, p := range q.Ready(nil) {
		m[fmt.Sprintf("%s/%d", p.Domain().Name, p.Slot())] = true
	}
	return m
}

func TestReadyIndex(t *testing.T) {
	t.Parallel()
	q := queue.New()
	pa := q.Push(mk("1", "a.test", 0, 0, 1))
	q.Push(mk("2", "a.test", 0, 0, 2))
	pb := q.Push(mk("3", "b.test", 1, 0, 1))
	pc := q.Push(mk("4", "c.test", 0, 0, 1))
	if got := readySet(q); len(got) != 3 || !got["a.test/0"] || !got["b.test/1"] || !got["c.test/0"] {
		t.Fatalf("ready = %v", got)
	}
	// Creating a pair without work does not make it ready.
	q.Domain("d.test").Pair(2)
	if got := readySet(q); len(got) != 3 {
		t.Fatalf("empty pair joined the ready index: %v", got)
	}
	pb.Pop()
	if got := readySet(q); len(got) != 2 || got["b.test/1"] {
		t.Fatalf("after draining b: ready = %v", got)
	}
	pa.Pop()
	if got := readySet(q); !got["a.test/0"] {
		t.Fatalf("a still has work but left the ready index: %v", got)
	}
	pa.Pop()
	pc.Pop()
	if got := readySet(q); len(got) != 0 {
		t.Fatalf("ready = %v, want empty", got)
	}
	if pa.Pop() != nil {
		t.Fatal("Pop on empty pair returned a delivery")
	}
	// Refill: the pair joins again.
	q.Push(mk("5", "c.test", 0, 0, 1))
	if got := readySet(q); len(got) != 1 || !got["c.test/0"] {
		t.Fatalf("after refill: ready = %v", got)
	}
	st := q.Stats()
	if st != (queue.Stats{Active: 1, Delayed: 0, Domains: 4, ReadyPairs: 1}) {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestDue(t *testing.T) {
	t.Parallel()
	q := queue.New()
	if _, ok := q.NextDue(); ok {
		t.Fatal("NextDue on empty queue reported a time")
	}
	base := time.Unix(1000, 0)
	at := map[string]time.Duration{"a": 30, "b": 10, "c": 20, "d": 10, "e": 50}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		q.Delay(mk(id, "x.test", 0, 0, 1), base.Add(at[id]*time.Second))
	}
	if next, ok := q.NextDue(); !ok || !next.Equal(base.Add(10*time.Second)) {
		t.Fatalf("NextDue = %v %v", next, ok)
	}
	ids := func(ds []*queue.Delivery) []string {
		var s []string
		for _, d := range ds {
			s = append(s, d.MsgID)
		}
		return s
	}
	if got := q.Due(base, 10, nil); len(got) != 0 {
		t.Fatalf("nothing is due yet, got %v", ids(got))
	}
	if got := q.Due(base.Add(30*time.Second), 0, nil); len(got) != 0 {
		t.Fatalf("max 0 returned %v", ids(got))
	}
	got := q.Due(base.Add(30*time.Second), 2, nil)
	if !slices.Equal(ids(got), []string{"b", "d"}) {
		t.Fatalf("Due max 2 = %v, want [b d]", ids(got))
	}
	if !got[0].NextAttempt().Equal(base.Add(10 * time.Second)) {
		t.Fatalf("NextAttempt = %v", got[0].NextAttempt())
	}
	got = q.Due(base.Add(30*time.Second), 10, got[:0])
	if !slices.Equal(ids(got), []string{"c", "a"}) {
		t.Fatalf("Due = %v, want [c a]", ids(got))
	}
	if st := q.Stats(); st.Delayed != 1 || st.Active != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if next, _ := q.NextDue(); !next.Equal(base.Add(50 * time.Second)) {
		t.Fatalf("NextDue = %v", next)
	}
	// A due delivery belongs to the caller and may be pushed.
	q.Push(got[0])
	if st := q.Stats(); st.Active != 1 || st.ReadyPairs != 1 {
		t.Fatalf("Stats after push = %+v", st)
	}
}

func TestDoubleQueuePanics(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		second func(q *queue.Queues, d *queue.Delivery)
	}{
		{"push twice", func(q *queue.Queues, d *queue.Delivery) { q.Push(d) }},
		{"delay while active", func(q *queue.Queues, d *queue.Delivery) { q.Delay(d, time.Unix(1, 0)) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := queue.New()
			d := mk("m", "x.test", 0, 0, 1)
			q.Push(d)
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			tt.second(q, d)
		})
	}
}

func TestConnectionCounters(t *testing.T) {
	t.Parallel()
	q := queue.New()
	dr := q.Domain("caps.test")
	p0, p1 := dr.Pair(0), dr.Pair(1)
	for i := range 2 {
		if !p0.TryConnect(2, 3) {
			t.Fatalf("connection %d of 2 refused", i+1)
		}
	}
	if p0.TryConnect(2, 3) {
		t.Fatal("pair max 2 passed")
	}
	if !p1.TryConnect(2, 3) {
		t.Fatal("third domain connection refused")
	}
	if p1.TryConnect(0, 3) {
		t.Fatal("domain max 3 passed")
	}
	p0.Connected()
	if p0.Open() != 1 || p0.Connecting() != 1 || dr.Open() != 1 || dr.Connecting() != 2 {
		t.Fatalf("counts: pair open %d connecting %d, domain open %d connecting %d",
			p0.Open(), p0.Connecting(), dr.Open(), dr.Connecting())
	}
	p0.ConnectFailed()
	p0.Closed()
	if !p0.TryConnect(0, 0) {
		t.Fatal("no limit refused")
	}
	p0.ConnectFailed()
	p1.ConnectFailed()
	if dr.Open() != 0 || dr.Connecting() != 0 {
		t.Fatalf("domain counts not back to 0: open %d connecting %d", dr.Open(), dr.Connecting())
	}
	for name, f := range map[string]func(){"Closed": p0.Closed, "Connected": p0.Connected, "ConnectFailed": p1.ConnectFailed} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s on zero counter did not panic", name)
				}
			}()
			f()
		}()
	}
}

func TestSuspend(t *testing.T) {
	t.Parallel()
	q := queue.New()
	dr := q.Domain("s.test")
	now := time.Unix(500, 0)
	if dr.Suspended(now) || !dr.SuspendedUntil().IsZero() {
		t.Fatal("new record is suspended")
	}
	dr.SuspendUntil(now.Add(time.Minute))
	if !dr.Suspended(now) || dr.Suspended(now.Add(time.Minute)) {
		t.Fatal("suspension window wrong")
	}
	dr.SuspendUntil(time.Time{})
	if dr.Suspended(now) {
		t.Fatal("suspension not lifted")
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	q := queue.New()
	now := time.Unix(1000, 0)
	idle := q.Domain("idle.test")
	busy := q.Push(mk("1", "busy.test", 0, 0, 1)).Domain()
	conn := q.Domain("conn.test")
	connPair := conn.Pair(0)
	if !connPair.TryConnect(0, 0) {
		t.Fatal("TryConnect refused")
	}
	q.Domain("susp.test").SuspendUntil(now.Add(time.Hour))
	touched := q.Domain("touched.test")

	if n := q.Sweep(now); n != 0 {
		t.Fatalf("first sweep dropped %d, want 0 (records are only marked)", n)
	}
	q.Push(mk("2", "touched.test", 0, 0, 1))
	touched.Pair(0).Pop()
	if n := q.Sweep(now); n != 1 {
		t.Fatalf("second sweep dropped %d, want 1", n)
	}
	if _, ok := q.Lookup("idle.test"); ok {
		t.Fatal("idle record still held")
	}
	for _, name := range []string{"busy.test", "conn.test", "susp.test", "touched.test"} {
		if _, ok := q.Lookup(name); !ok {
			t.Fatalf("%s was dropped", name)
		}
	}
	// A stale pointer to a dropped record can't take connections, and a push
	// goes to a fresh record.
	if idle.Pair(0).TryConnect(0, 0) {
		t.Fatal("TryConnect on dropped record succeeded")
	}
	p := q.Push(mk("3", "idle.test", 0, 0, 1))
	if p.Domain() == idle {
		t.Fatal("Push used the dropped record")
	}
	if n := q.Sweep(now); n != 1 { // touched.test, now idle twice running
		t.Fatalf("third sweep dropped %d, want 1", n)
	}
	connPair.ConnectFailed()
	busy.Pair(0).Pop()
	q.Sweep(now)
	if n := q.Sweep(now); n != 2 {
		t.Fatalf("after release: dropped %d, want 2 (busy, conn)", n)
	}
	if st := q.Stats(); st.Domains != 2 { // susp.test and the new idle.test
		t.Fatalf("Domains = %d, want 2", st.Domains)
	}
}

// TestSweepShrinks: a sweep that leaves the domain map under a quarter of
// its peak moves the records left to a smaller map; they are the same
// records (their queues and connections go on), found by name, and new
// domains are added as before.
func TestSweepShrinks(t *testing.T) {
	t.Parallel()
	q := queue.New()
	now := time.Unix(1000, 0)
	for i := range 1000 {
		q.Domain(fmt.Sprintf("gone%d.test", i))
	}
	busy := q.Push(mk("1", "busy.test", 0, 0, 1))
	q.Sweep(now)
	if n := q.Sweep(now); n != 1000 {
		t.Fatalf("second sweep dropped %d, want 1000", n)
	}
	if dr, ok := q.Lookup("busy.test"); !ok || dr != busy.Domain() {
		t.Fatalf("busy.test after the shrink: %v, %v; want its record", dr, ok)
	}
	if q.Domain("BUSY.test") != busy.Domain() {
		t.Fatal("Domain made a second record for busy.test")
	}
	if d := busy.Pop(); d == nil || d.MsgID != "1" {
		t.Fatalf("busy.test's queue after the shrink: %v", d)
	}
	fresh := q.Domain("new.test")
	if dr, ok := q.Lookup("new.test"); !ok || dr != fresh {
		t.Fatal("a domain added after the shrink is not found")
	}
	if st := q.Stats(); st.Domains != 2 {
		t.Fatalf("Domains = %d, want 2", st.Domains)
	}
}

// Many goroutines push, pop, delay and take due deliveries at once; every
// delivery must come out exactly once and the index must end empty.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	const (
		pushers = 8
		perPush = 2000
		poppers = 6
		total   = pushers * perPush
	)
	q := queue.New()
	now := time.Unix(0, 0)
	var wg sync.WaitGroup
	for g := range pushers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range perPush {
				d := mk(fmt.Sprintf("%d-%d", g, i), fmt.Sprintf("d%d.test", r.IntN(50)), int32(r.IntN(4)),
					int32(r.IntN(3)), int64(r.IntN(1000)))
				if i%3 == 0 {
					q.Delay(d, now) // already due
				} else {
					q.Push(d)
				}
			}
		})
	}
	var mu sync.Mutex
	seen := make(map[string]int, total)
	done := make(chan struct{})
	var popWG sync.WaitGroup
	for range poppers {
		popWG.Go(func() {
			var buf []*queue.Pair
			var due []*queue.Delivery
			for {
				due = q.Due(now, 16, due[:0])
				for _, d := range due {
					q.Push(d)
				}
				buf = q.Ready(buf)
				n := 0
				for _, p := range buf {
					for range 4 {
						d := p.Pop()
						if d == nil {
							break
						}
						if d.Domain != p.Domain().Name || int(d.Slot) != p.Slot() {
							t.Errorf("delivery %s/%d popped from %s/%d", d.Domain, d.Slot, p.Domain().Name, p.Slot())
						}
						n++
						mu.Lock()
						seen[d.MsgID]++
						mu.Unlock()
					}
				}
				if n == 0 && len(due) == 0 {
					select {
					case <-done:
						return
					default:
					}
				}
			}
		})
	}
	wg.Wait()
	close(done)
	popWG.Wait()
	// Pushers are done and poppers saw empty queues after done: drain any
	// remainder left by the race between the last pop and done.
	for _, d := range q.Due(now, total, nil) {
		q.Push(d)
	}
	for _, p := range q.Ready(nil) {
		for d := p.Pop(); d != nil; d = p.Pop() {
			seen[d.MsgID]++
		}
	}
	if len(seen) != total {
		t.Fatalf("saw %d distinct deliveries, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("delivery %s popped %d times", id, n)
		}
	}
	if st := q.Stats(); st.Active != 0 || st.Delayed != 0 || st.ReadyPairs != 0 {
		t.Fatalf("Stats at end = %+v", st)
	}
}

// Each pair's skiplist is its own: many deliveries pushed to several pairs in
// an interleaved order come out of each pair sorted and complete.
func TestPairsIndependent(t *testing.T) {
	t.Parallel()
	q := queue.New()
	r := rand.New(rand.NewPCG(7, 7))
	const per = 500
	pairs := make([]*queue.Pair, 3)
	for i := range per * len(pairs) {
		k := i % len(pairs)
		pairs[k] = q.Push(mk(strconv.Itoa(i), "p"+strconv.Itoa(k)+".test", 0, 0, r.Int64N(1_000_000)))
	}
	for k, p := range pairs {
		last := int64(-1)
		for n := range per {
			d := p.Pop()
			if d == nil {
				t.Fatalf("pair %d: %d deliveries, want %d", k, n, per)
			}
			if d.Domain != p.Domain().Name || d.Arrival < last {
				t.Fatalf("pair %d: got %s arrival %d after %d", k, d.Domain, d.Arrival, last)
			}
			last = d.Arrival
		}
		if p.Pop() != nil {
			t.Fatalf("pair %d: more than %d deliveries", k, per)
		}
	}
}
