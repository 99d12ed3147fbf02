package scheduler

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// The scale benchmarks answer the performance issue's questions at the size
// it names (1,000,000 queued deliveries, 100,000 domains × 4 bindings). Run
// them with `make bench-scale`; they are benchmarks only, so `go test`
// without -bench never pays for them.
//
// Their scheduler never delivers: a MailQueueMaintain hook registered first
// returns hooks.Handled, so the default action (which would dial) never
// runs, and the ticker is never started. What is measured is the
// scheduler's own bookkeeping and the walk over the queues.

// scaleRig is a scheduler with a real (empty) spool, four bindings, a fixed
// clock and a maintain chain that stops at its first hook.
type scaleRig struct {
	s        *Scheduler
	q        *queue.Queues
	sp       *spool.Spool
	clock    *fakeClock
	bindings []string      // binding names by slot
	calls    *atomic.Int64 // maintain chain runs
}

// newScaleRig builds the rig on sp, or on a new spool when sp is nil; b's
// cleanup closes the scheduler and the spool it opened.
func newScaleRig(b *testing.B, sp *spool.Spool) *scaleRig {
	b.Helper()
	r := &scaleRig{q: queue.New(), clock: newFakeClock(), calls: new(atomic.Int64)}
	var cfgs []binding.Config
	for i, a := range bindingIPs {
		name := "b" + strconv.Itoa(i)
		r.bindings = append(r.bindings, name)
		cfgs = append(cfgs, binding.Config{Name: name, Address: a, EHLO: name + ".mta.test"})
	}
	set, err := binding.New(cfgs, nil, "mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		b.Fatal(err)
	}
	ownSpool := sp == nil
	if ownSpool {
		sp, err = spool.Open(b.TempDir(), spool.Options{MemTableSize: 64 << 20, CacheSize: 16 << 20})
		if err != nil {
			b.Fatal(err)
		}
	}
	r.sp = sp
	// Never asked: no connection is ever opened.
	res, err := mx.New(mx.Options{Servers: []string{"127.0.0.1:1"}, AllowLoopback: true})
	if err != nil {
		b.Fatal(err)
	}
	reg := hooks.NewRegistry()
	reg.MailQueueMaintain.RegisterFirst(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int {
		r.calls.Add(1)
		return hooks.Handled
	})
	s, err := New(Options{
		Spool: sp, Queues: r.q, Bindings: set, Hooks: reg, Hostname: "mta.test",
		Clock: r.clock,
		Pool: connpool.Options{
			MaxConnections: 2000, Resolver: res,
			Policy: func(*queue.DomainRecord, int) connpool.Policy {
				return connpool.Policy{MaxConnections: 10, MaxConnectionsPerBinding: 10, MaxDeliveriesPerConnection: 100}
			},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	r.s = s
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			b.Errorf("scheduler close: %v", err)
		}
		if !ownSpool {
			return
		}
		if err := sp.Close(); err != nil {
			b.Errorf("spool close: %v", err)
		}
	})
	return r
}

// message is the i-th message of a bulk sender: its own VERP sender, one
// recipient at dom, sent from the binding named bind ("" picks from the
// default group). It is not spooled.
func (r *scaleRig) message(i int, dom, bind string) *spool.Message {
	is := strconv.Itoa(i)
	return &spool.Message{
		ID:         r.sp.NewID(),
		Sender:     "bounces+" + is + "@mail.sender.example",
		Recipients: []spool.Recipient{{Addr: "user" + is + "@" + dom}},
		Received:   r.clock.Now(),
		MessageID:  "<" + is + "@mail.sender.example>",
		Binding:    bind,
		Size:       5000,
	}
}

func domainNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = "customer-" + strconv.Itoa(i) + ".example.com"
	}
	return names
}

// BenchmarkScaleHeapPerQueuedMessage measures the live heap one queued
// message costs through Submit: the queue's Delivery, recipient, skiplist
// node and share of the domain records, pairs and lists, plus the
// scheduler's per-message msgState and its map entry. 1,000,000 messages
// of one recipient over 100,000 domains × 4 bindings (400,000 pairs). The
// spool's work is left out (Submit only needs the *spool.Message); so is
// the Message struct itself, which Submit does not keep. Target ≤ 1 KiB.
// It also reports the mean Submit time at this scale.
func BenchmarkScaleHeapPerQueuedMessage(b *testing.B) {
	const (
		msgs    = 1_000_000
		domains = 100_000
		slots   = 4
	)
	for b.Loop() {
		b.StopTimer()
		r := newScaleRig(b, nil)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()

		names := domainNames(domains)
		start := time.Now()
		for i := range msgs {
			m := r.message(i, names[i%domains], r.bindings[i/domains%slots])
			if err := r.s.Submit(m); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		names = nil

		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := r.q.Stats()
		if st.Active != msgs || st.ReadyPairs != domains*slots || st.Domains != domains || r.s.Pending() != msgs {
			b.Fatalf("Stats = %+v, Pending = %d", st, r.s.Pending())
		}
		if n := r.calls.Load(); n != msgs {
			b.Fatalf("maintain chain ran %d times, want one per Submit (%d)", n, msgs)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/msgs, "bytes/msg")
		b.ReportMetric(float64(elapsed.Nanoseconds())/msgs, "submit-ns/msg")
		runtime.KeepAlive(r)
		b.StartTimer()
	}
}

// BenchmarkScaleTick measures one maintenance tick among 100,000
// domain/binding pairs (25,000 domains × 4 bindings) holding 1,000,000
// queued deliveries: when 1% of the pairs have work (1,000 pairs of 1,000
// deliveries; the other 99,000 pairs had work once and were drained) and
// when all do (10 deliveries each). The chain's first hook answers
// Handled, so a tick costs the ready walk, the head-expiry check, the goal
// and the chain call per pair with work — no dialing. Target < 20 ms at
// 100,000 active pairs.
func BenchmarkScaleTick(b *testing.B) {
	const (
		domains = 25_000
		slots   = 4
		pairs   = domains * slots
		queued  = 1_000_000
		ticks   = 20 // per benchmark iteration, so -benchtime 1x still averages
	)
	for _, tc := range []struct {
		name   string
		active int // pairs with work
	}{{"1pct", pairs / 100}, {"all", pairs}} {
		b.Run(tc.name, func(b *testing.B) {
			r := newScaleRig(b, nil)
			names := domainNames(domains)
			pairOf := func(p int) (string, string) { return names[p/slots], r.bindings[p%slots] }
			// Every pair gets one delivery, so every pair exists and has
			// been ready once.
			n := 0
			for p := range pairs {
				dom, bind := pairOf(p)
				if err := r.s.Submit(r.message(n, dom, bind)); err != nil {
					b.Fatal(err)
				}
				n++
			}
			// Drain all but the active pairs, as sessions would have.
			for p := tc.active; p < pairs; p++ {
				dom, _ := pairOf(p)
				pr := r.q.Domain(dom).Pair(p % slots)
				if pr.Pop() == nil || pr.Len() != 0 {
					b.Fatalf("pair %d: expected exactly one delivery", p)
				}
			}
			// Fill the active pairs up to 1,000,000 deliveries in all.
			for i := tc.active; i < queued; i++ {
				dom, bind := pairOf(i % tc.active)
				if err := r.s.Submit(r.message(n, dom, bind)); err != nil {
					b.Fatal(err)
				}
				n++
			}
			if st := r.q.Stats(); st.Active != queued || st.ReadyPairs != tc.active {
				b.Fatalf("Stats = %+v, want %d active in %d ready pairs", st, queued, tc.active)
			}
			names = nil
			runtime.GC()

			now := r.clock.Now()
			var worst, total time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				r.calls.Store(0)
				for range ticks {
					t0 := time.Now()
					r.s.Tick(now)
					d := time.Since(t0)
					total += d
					worst = max(worst, d)
				}
				if c := r.calls.Load(); c != int64(ticks*tc.active) {
					b.Fatalf("maintain chain ran %d times in %d ticks, want %d per tick", c, ticks, tc.active)
				}
			}
			b.StopTimer()
			if st := r.q.Stats(); st.Active != queued || st.ReadyPairs != tc.active {
				b.Fatalf("a tick changed the queues: Stats = %+v", st)
			}
			nt := float64(b.N * ticks)
			b.ReportMetric(float64(total.Microseconds())/1000/nt, "ms/tick")
			b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms/tick")
			b.ReportMetric(float64(tc.active), "pairs/tick")
			b.ReportMetric(float64(total.Nanoseconds())/nt/float64(tc.active), "ns/pair")
		})
	}
}

// BenchmarkScaleSubmit measures the inject-to-queue step: Submit of a
// message already spooled (one recipient, 1 KB body, 10,000 domains, the
// binding picked by the default group's round robin), from one goroutine.
// It reports ns, allocations and bytes allocated per Submit; the spool
// write before it is BenchmarkPut5KB's business.
func BenchmarkScaleSubmit(b *testing.B) {
	const (
		msgs    = 100_000
		domains = 10_000
		writers = 64
	)
	setup := newScaleRig(b, nil)
	names := domainNames(domains)
	body := []byte("Subject: scale\r\n\r\n" + string(make([]byte, 1024)))
	spooled := make([]*spool.Message, msgs)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < msgs; i += writers {
				m := setup.message(i, names[i%domains], "")
				m.ID = ""
				if err := setup.sp.Put(m, body); err != nil {
					errs <- fmt.Errorf("put %d: %w", i, err)
					return
				}
				spooled[i] = m
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	var ns, allocs, bytes float64
	for b.Loop() {
		b.StopTimer()
		// A fresh scheduler each round: a message is submitted once.
		r := newScaleRig(b, setup.sp)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		start := time.Now()
		for _, m := range spooled {
			if err := r.s.Submit(m); err != nil {
				b.Fatal(err)
			}
		}
		el := time.Since(start)
		b.StopTimer()
		runtime.ReadMemStats(&after)
		if st := r.q.Stats(); st.Active != msgs {
			b.Fatalf("Stats = %+v, want %d active", st, msgs)
		}
		ns += float64(el.Nanoseconds()) / msgs
		allocs += float64(after.Mallocs-before.Mallocs) / msgs
		bytes += float64(after.TotalAlloc-before.TotalAlloc) / msgs
		b.StartTimer()
	}
	b.ReportMetric(ns/float64(b.N), "ns/submit")
	b.ReportMetric(allocs/float64(b.N), "allocs/submit")
	b.ReportMetric(bytes/float64(b.N), "B/submit")
}
