package scheduler

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/spool"
)

// TestIdleDomainsForgotten: mail to many domains that all bounce (no such
// domain) leaves no domain record behind once two sweeps have passed: the
// tick sweeps every SweepInterval, and a record idle at one sweep and
// untouched until the next is dropped.
func TestIdleDomainsForgotten(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 25, func(o *Options) { o.SweepInterval = time.Minute })
	const domains = 200
	for i := range domains {
		// A null sender, so the bounces make no DSN (and no domain of
		// their own).
		h.inject("", fmt.Sprintf("u@gone%d.test", i))
	}
	for range domains {
		if e := h.next(outcomeEvents...); e.name != "bounced" {
			t.Fatalf("outcome %s, want bounced (no such domain)", e.name)
		}
	}
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records after the bounces, want %d", n, domains)
	}
	h.s.Tick(h.clock.Now()) // the first tick starts the sweep clock
	h.s.Tick(h.clock.Advance(time.Minute))
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records after one sweep, want all %d (idle once is kept)", n, domains)
	}
	h.s.Tick(h.clock.Advance(30 * time.Second))
	if n := h.q.Stats().Domains; n != domains {
		t.Fatalf("%d domain records before the sweep interval passed, want %d", n, domains)
	}
	h.s.Tick(h.clock.Advance(30 * time.Second))
	if n := h.q.Stats().Domains; n != 0 {
		t.Errorf("%d domain records after two sweeps, want 0", n)
	}
	// A forgotten domain is mailed again as if new.
	h.inject("", "u@gone1.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" {
		t.Errorf("outcome %s after the record was forgotten", e.name)
	}
}

// BenchmarkScaleBounceDomains: 100,000 messages to as many distinct
// domains that do not exist all bounce (real pool, real DNS answering
// NXDOMAIN on loopback), then two sweeps pass. The heap afterwards is
// compared with the heap before: what the domains cost once forgotten.
func BenchmarkScaleBounceDomains(b *testing.B) {
	const domains = 100_000
	for b.Loop() {
		b.StopTimer()
		h := newHarness(b, 25, func(o *Options) {
			o.SweepInterval = time.Minute
			o.Logger = zap.NewNop()
			o.Pool.MaxConnections = 200
		})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
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
		h.s.Tick(h.clock.Now())
		h.s.Tick(h.clock.Advance(time.Minute))
		h.s.Tick(h.clock.Advance(time.Minute))
		left := h.q.Stats().Domains
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(domains)/elapsed.Seconds(), "bounces/s")
		b.ReportMetric(float64(peak), "domains-before-sweep")
		b.ReportMetric(float64(left), "domains-after-sweep")
		b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/(1<<20), "heap-growth-MiB")
		runtime.KeepAlive(h)
		h.close()
		b.StartTimer()
	}
}
