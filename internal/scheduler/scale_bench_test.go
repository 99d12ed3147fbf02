package scheduler

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
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
//
// A domain is maintained only once its MX set is known (resolve.go), so
// the rig serves every domain an MX from a loopback DNS server and
// resolves them all before the measurement, as the resolver workers would
// have at their first mail. Most domains are spread over scaleSites
// hosting MX hosts (several domains per site, as MX rollup expects); one
// in 100 is on a provider's MX hosts (shippedProviderMX).

// scaleSites is how many hosting MX hosts the rig's domains share.
const scaleSites = 1000

// shippedProviderMX are MX hosts that the providers of configs/mtad.yaml
// match, one per provider.
var shippedProviderMX = []string{
	"alt1.aspmx.l.google.com", "example-com.mail.protection.outlook.com", "mta5.am0.yahoodns.net",
	"mx01.mail.icloud.com", "mx1.comcast.net", "eu-smtp-inbound-1.mimecast.com",
}

// scaleMX is the MX host of the i-th domain of domainNames.
func scaleMX(i int) string {
	if i%100 == 0 {
		return shippedProviderMX[i/100%len(shippedProviderMX)]
	}
	return "mx" + strconv.Itoa(i%scaleSites) + ".hosting.example.net"
}

// scaleReserve is the reserve in the shipped proportion (configs/mtad.yaml:
// 50 of 1,000 connections) of a cap of max.
func scaleReserve(max int) int { return max * 50 / 1000 }

// scaleRig is a scheduler with a real (empty) spool, four bindings, a fixed
// clock, a loopback DNS server and a maintain chain that stops at its
// first hook.
type scaleRig struct {
	s        *Scheduler
	q        *queue.Queues
	sp       *spool.Spool
	dns      *loopbacktest.DNS
	clock    *fakeClock
	bindings []string      // binding names by slot
	calls    *atomic.Int64 // maintain chain runs
	// askShaping makes the first hook ask for the pair's shaping
	// (hooks.Registry.ShapingOf), as a hook deciding by it would: set
	// before the first Submit. shaped and suspended count its answers.
	askShaping                   bool
	shaped, suspended, throttled *atomic.Int64
}

// newScaleRig builds the rig on sp, or on a new spool when sp is nil,
// without shaping; b's cleanup closes the scheduler and the spool it
// opened.
func newScaleRig(b *testing.B, sp *spool.Spool) *scaleRig { return newScaleRigWith(b, sp, nil, false) }

// newScaleRigWith is newScaleRig with a Shaper (nil for none) and
// askShaping.
func newScaleRigWith(b *testing.B, sp *spool.Spool, shaper *policy.Shaper, askShaping bool) *scaleRig {
	b.Helper()
	r := &scaleRig{q: queue.New(), clock: newFakeClock(), calls: new(atomic.Int64),
		dns: loopbacktest.StartDNS(b), askShaping: askShaping,
		shaped: new(atomic.Int64), suspended: new(atomic.Int64), throttled: new(atomic.Int64)}
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
	// Asked once per domain by resolveAll; no connection is ever opened.
	res, err := mx.New(mx.Options{Servers: []string{r.dns.Addr}, AllowLoopback: true, Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	reg := hooks.NewRegistry()
	reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, _ *queue.Pair, now time.Time, _, _ int) int {
		r.calls.Add(1)
		if r.askShaping {
			if sh, ok := reg.ShapingOf(dr, slot, now); ok {
				r.shaped.Add(1)
				if sh.Suspended {
					r.suspended.Add(1)
				}
				if !sh.ThrottledUntil.IsZero() {
					r.throttled.Add(1)
				}
			}
		}
		return hooks.Handled
	})
	const maxConns = 2000
	s, err := New(Options{
		Spool: sp, Queues: r.q, Bindings: set, Hooks: reg, Hostname: "mta.test",
		Clock: r.clock, Shaper: shaper, Reserve: scaleReserve(maxConns),
		Pool: connpool.Options{
			MaxConnections: maxConns, Resolver: res,
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

// serve gives the DNS server the records of n domains (domainNames
// order): each its MX (scaleMX), each MX host an address.
func (r *scaleRig) serve(b *testing.B, n int) {
	b.Helper()
	recs := make([]string, 0, n+scaleSites+len(shippedProviderMX))
	hosts := map[string]bool{}
	for i, name := range domainNames(n) {
		h := scaleMX(i)
		recs = append(recs, name+". 3600 IN MX 10 "+h+".")
		if !hosts[h] {
			hosts[h] = true
			recs = append(recs, h+". 3600 IN A 127.0.0.1")
		}
	}
	r.dns.Add(b, recs...)
}

// resolveAll resolves each of names (served by serve) through the
// scheduler's own path (Scheduler.resolve on a bounded set of goroutines,
// as its workers do), creating its domain record. It fails the benchmark
// for a domain that did not resolve.
func (r *scaleRig) resolveAll(b *testing.B, names []string) {
	b.Helper()
	const workers = 32
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(names); i += workers {
				dr := r.q.Domain(names[i])
				r.s.resolve(dr)
				if !stateOf(dr).isResolved() {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d domains did not resolve", n, len(names))
	}
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
		r.serve(b, domains) // the DNS server's records are not the scheduler's heap
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		// The domain records, their MX sets and the resolver's cache
		// count toward the messages' share: every domain is resolved
		// before its first slot.
		names := domainNames(domains)
		r.resolveAll(b, names)
		b.StartTimer()

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
// when all do (10 deliveries each). The chain's first hook asks for the
// pair's shaping (hooks.Registry.ShapingOf, as a hook deciding by it
// would) and answers Handled, so a tick costs the ready walk, the
// head-expiry check, the goal, the pool's policy and the chain call per
// pair with work — no dialing. Target < 20 ms at 100,000 active pairs.
//
// The -shaped variants run the same with a Shaper (scaleShaper: the
// shipped providers, a default rate, 100 domain entries) and a few
// suspensions and rule throttles in force (shapeScale), after each active
// pair took one message token, so the tick also pays for each pair's
// resolved shaping, its overrides and suspensions, and its buckets.
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
		shaped bool
	}{
		{"1pct", pairs / 100, false}, {"all", pairs, false},
		{"1pct-shaped", pairs / 100, true}, {"all-shaped", pairs, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var shaper *policy.Shaper
			if tc.shaped {
				shaper = scaleShaper(b)
			}
			r := newScaleRigWith(b, nil, shaper, true)
			names := domainNames(domains)
			r.serve(b, domains)
			r.resolveAll(b, names)
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
			now := r.clock.Now()
			if tc.shaped {
				shapeScale(b, r, names, now)
				// Each active pair sent a message, as a session does
				// (grantor.Admit, without its wake timer: the rig's
				// clock stands still): its site's and provider's buckets
				// exist, and the small ones that many pairs share are
				// empty, so those pairs are throttled.
				for p := range tc.active {
					dom, _ := pairOf(p)
					ps := r.s.shapeOf(r.q.Domain(dom).Pair(p % slots))
					l := r.s.limitsOf(ps, now)
					rates := l.rates()
					r.s.throttles.TakeAll(ps.msgKeys[:], rates[:], now)
				}
			}
			names = nil
			runtime.GC()

			var worst, total time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				r.calls.Store(0)
				r.shaped.Store(0)
				r.suspended.Store(0)
				r.throttled.Store(0)
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
				sh, su := r.shaped.Load(), r.suspended.Load()
				switch {
				case !tc.shaped && sh != 0:
					b.Fatalf("%d pairs had a shaping without a Shaper", sh)
				case tc.shaped && sh != int64(ticks*tc.active):
					b.Fatalf("%d of %d pairs were shaped", sh, ticks*tc.active)
				case tc.shaped && (su == 0 || su >= sh):
					b.Fatalf("%d of %d pairs suspended, want some but not all", su, sh)
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
			if tc.shaped {
				b.ReportMetric(float64(r.suspended.Load())/float64(b.N*ticks), "suspended-pairs")
				b.ReportMetric(float64(r.throttled.Load())/float64(b.N*ticks), "throttled-pairs")
			}
		})
	}
}

// scaleShaper is the shaping of the -shaped benchmarks: configs/mtad.yaml's
// (its default and its six providers) with a default max_message_rate, and
// 100 domain entries (customer-0 … customer-99: a rate and a cap, every
// tenth with mx_rollup off, every fifth narrowed for binding b1).
func scaleShaper(b *testing.B) *policy.Shaper {
	b.Helper()
	cfg, err := config.Load(filepath.Join("..", "..", "configs", "mtad.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	if len(cfg.Shaping.Providers) != len(shippedProviderMX) {
		b.Fatalf("configs/mtad.yaml has %d providers; shippedProviderMX names %d", len(cfg.Shaping.Providers), len(shippedProviderMX))
	}
	rate, conns, off := "100/s", 10, false
	cfg.Shaping.Default.MaxMessageRate = &rate
	for i := range 100 {
		r, c := "50/s", 5
		d := config.ShapingDomain{Match: "customer-" + strconv.Itoa(i) + ".example.com",
			ShapingValues: config.ShapingValues{MaxMessageRate: &r, MaxConnections: &c}}
		if i%10 == 0 {
			d.MXRollup = &off
		}
		if i%5 == 0 {
			nr := "20/s"
			d.Bindings = []config.BindingShaping{{Binding: "b1", ShapingValues: config.ShapingValues{MaxMessageRate: &nr, MaxConnections: &conns}}}
		}
		cfg.Shaping.Domains = append(cfg.Shaping.Domains, d)
	}
	cfg.Bindings = nil
	for i, a := range bindingIPs {
		cfg.Bindings = append(cfg.Bindings, config.Binding{Name: "b" + strconv.Itoa(i), Address: a})
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return sh
}

// shapeScale puts a few suspensions and rule throttles in force until an
// hour after now: two domains, a site, a provider from one binding and two
// pairs suspended; a site from one binding, a domain, and a provider from
// one binding throttled (rate and connections, with a ramp).
func shapeScale(b *testing.B, r *scaleRig, names []string, now time.Time) {
	b.Helper()
	until := now.Add(time.Hour)
	site := func(i int) string { return policy.SiteKey([]string{scaleMX(i)}) }
	for _, sp := range []policy.Suspension{
		{Kind: policy.ScopeDomain, Name: names[201]},
		{Kind: policy.ScopeDomain, Name: names[202]},
		{Kind: policy.ScopeSite, Name: site(7)},
		{Kind: policy.ScopeProvider, Name: "yahoo", Binding: "b1"},
		{Kind: policy.ScopePair, Name: names[303], Binding: "b0"},
		{Kind: policy.ScopePair, Name: names[304], Binding: "b2"},
	} {
		sp.Source, sp.Reason, sp.Start, sp.Until = policy.SourceOperator, "scale benchmark", now, until
		r.s.Suspend(sp)
	}
	slow, one := policy.Rate{N: 1, Per: time.Minute}, 1
	for _, scope := range []string{
		policy.ScopeKey(policy.ScopeSite, site(11), "b0"),
		policy.ScopeKey(policy.ScopeDomain, names[405], ""),
		policy.ScopeKey(policy.ScopeProvider, "google", "b3"),
	} {
		r.s.overrides.Set(policy.Override{Rule: "scale-benchmark", Scope: scope, MaxMessageRate: &slow,
			MaxConnections: &one, Start: now, End: until, Ramp: 30 * time.Minute})
	}
	if n := len(r.s.Suspensions(now)); n != 6 {
		b.Fatalf("%d suspensions in force, want 6", n)
	}
	if n := len(r.s.Throttles(now)); n != 3 {
		b.Fatalf("%d throttles in force, want 3", n)
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
		// Its domains are resolved first, as they would be after their
		// first mail.
		r := newScaleRig(b, setup.sp)
		r.serve(b, domains)
		r.resolveAll(b, names)
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

// BenchmarkScaleBounceDomains: 100,000 messages to as many distinct
// domains that do not exist all bounce (real pool, real DNS answering
// NXDOMAIN on loopback), under shaping (scaleShaper: the shipped
// providers, a default rate, 100 domain entries) and the shipped reserve,
// then two sweeps pass. Shaping state lives on the domain records and
// must be forgotten with them, and the throttle buckets are swept with
// them. It reports the live heap (after a GC) before the first message,
// once every message has bounced, and after the sweeps, and what is left
// of the records and buckets. MTAD_BENCH_HEAP_PROFILE=FILE writes a heap
// profile after the sweeps (go tool pprof -sample_index=inuse_space), to
// see what holds the heap that did not come back.
func BenchmarkScaleBounceDomains(b *testing.B) {
	const (
		domains  = 100_000
		maxConns = 200
	)
	shaper := scaleShaper(b)
	heap := func() float64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return float64(m.HeapAlloc) / (1 << 20)
	}
	for b.Loop() {
		b.StopTimer()
		h := newHarness(b, 25, func(o *Options) {
			o.SweepInterval = time.Minute
			o.Logger = zap.NewNop()
			o.Pool.MaxConnections = maxConns
			o.Reserve = scaleReserve(maxConns)
			o.Shaper = shaper
		})
		before := heap()
		b.StartTimer()
		start := time.Now()
		for i := range domains {
			m := &spool.Message{Sender: "", Received: h.clock.Now(),
				Recipients: []spool.Recipient{{Addr: fmt.Sprintf("u@gone%d.test", i)}}}
			if err := h.sp.Put(m, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
				b.Fatal(err)
			}
			if err := h.s.Submit(m); err != nil {
				b.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Minute)
		for h.s.Pending() > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("%d still pending after 5 min", h.s.Pending())
			}
			time.Sleep(50 * time.Millisecond) // polling a count: no event to wait on
		}
		elapsed := time.Since(start)
		b.StopTimer()
		peak := h.q.Stats().Domains
		// The bounced domains were shaped (their retry schedule and
		// max_age come from it), so there is shaping state to forget.
		shapedDomains := 0
		for i := range domains {
			if dr, ok := h.q.Lookup(fmt.Sprintf("gone%d.test", i)); ok {
				if sp := stateOf(dr).shapes.Load(); sp != nil && len(*sp) > 0 {
					shapedDomains++
				}
			}
		}
		afterBounces := heap()
		h.s.Tick(h.clock.Now())
		h.s.Tick(h.clock.Advance(time.Minute))
		h.s.Tick(h.clock.Advance(time.Minute))
		left, buckets := h.q.Stats().Domains, h.s.throttles.Len()
		afterSweep := heap()
		if p := os.Getenv("MTAD_BENCH_HEAP_PROFILE"); p != "" {
			writeHeapProfile(b, p)
		}
		if left != 0 {
			b.Errorf("%d domain records left after two sweeps", left)
		}
		b.ReportMetric(float64(domains)/elapsed.Seconds(), "bounces/s")
		b.ReportMetric(float64(peak), "domains-before-sweep")
		b.ReportMetric(float64(shapedDomains), "shaped-domains")
		b.ReportMetric(float64(left), "domains-after-sweep")
		b.ReportMetric(float64(buckets), "buckets-after-sweep")
		b.ReportMetric(before, "heap-before-MiB")
		b.ReportMetric(afterBounces, "heap-bounced-MiB")
		b.ReportMetric(afterSweep, "heap-swept-MiB")
		b.ReportMetric(afterSweep-before, "heap-growth-MiB")
		runtime.KeepAlive(h)
		h.close()
		b.StartTimer()
	}
}

// writeHeapProfile writes the live heap's profile to path.
func writeHeapProfile(b *testing.B, path string) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}
