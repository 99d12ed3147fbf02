package scheduler

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
)

// TestDomainRateIsTheDomainsOwn: a domain entry's rate on a domain rolled
// up on a shared site limits that domain alone; its site-mate, with no
// entry of its own, keeps the site's (unlimited) budget instead of being
// starved by the domain's slow rate set on their shared bucket.
func TestDomainRateIsTheDomainsOwn(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(60, 10)}, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Domains = []config.ShapingDomain{{Match: "slow.test",
				ShapingValues: config.ShapingValues{MaxMessageRate: ptr("1/m")}}}
		})
	})
	sharedSite(h, ip(60, 10), "slow.test", "fast.test")
	h.resolved("slow.test", "fast.test")
	for i := range 5 {
		injectOn(h, fmt.Sprintf("s%d@slow.test", i))
	}
	for i := range 20 {
		injectOn(h, fmt.Sprintf("f%d@fast.test", i))
	}
	h.quiet()
	for range 3 {
		h.step(time.Second)
	}
	if n := count(toDomain("fast.test"), sinks[0]); n != 20 {
		t.Errorf("fast.test, on the site without a rate, got %d of 20", n)
	}
	if n := count(toDomain("slow.test"), sinks[0]); n != 1 {
		t.Errorf("slow.test at 1/m got %d in 3 seconds, want 1", n)
	}
}

// TestRebindToSameBindingBacksOff: a rebind rule whose group has no
// binding but the one that got the reply does not retry at once (the
// same block answers again): the delivery gets the normal backoff.
func TestRebindToSameBindingBacksOff(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(61, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			return loopbacktest.Reply(550, smtp.EnhancedCode{5, 7, 1}, "client host blocked")
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "blocked", Code: 550, Enhanced: "5.7.1",
		Text: "blocked", Scope: "pair", Trigger: "immediate", Action: "rebind", Rebind: "default",
		Duration: time.Hour}}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Rules = rules })
	h.mxFor("rb.test", ip(61, 10))
	// The harness's default group is all four bindings: pin b0 and make
	// every binding of the group answer the same, so the pick may well
	// be b0 again. Either way the delivery must not be retried at once
	// from the same binding.
	injectVia(h, "b0", "", "a@rb.test")
	for range 4 {
		e := h.next(outcomeEvents...)
		if e.name != "deferred" {
			t.Fatalf("outcome %s %v", e.name, e.fields)
		}
		next, _ := e.fields["next_attempt"].(time.Time)
		if !next.After(h.clock.Now()) && e.str("binding") == "b0" {
			// Retried at once: only allowed onto another binding.
			d := h.q.Domain("rb.test")
			if d.Pair(0).Len() != 0 {
				t.Fatalf("retried at once on the same binding: %v", e.fields)
			}
		}
		h.s.Tick(h.clock.Now())
		if !next.After(h.clock.Now()) {
			continue
		}
		break
	}
}

// TestGreetingRuleFiresOnce: a 421 [TSS04] at the greeting fires the
// suspend rule at the first refused connection (not after
// consecutive_connection_failures_before_delay of them), with one policy
// record however many deliveries wait on the pair.
func TestGreetingRuleFiresOnce(t *testing.T) {
	t.Parallel()
	var refused atomic.Int32
	srv := startGreeting(t, ip(62, 10), "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints", &refused)
	h := newHarness(t, srv, func(o *Options) {
		o.Shaper = testShaper(t, nil)
		o.Rules = shippedRules(t)
	})
	h.mxFor("g.test", ip(62, 10))
	h.resolved("g.test")
	const n = 10
	for i := range n {
		injectVia(h, "b0", "", fmt.Sprintf("u%d@g.test", i))
	}
	rec := h.policyEvent("suspend")
	if rec.str("rule") != "yahoo-tss04-tss05" || rec.str("binding") != "b0" {
		t.Fatalf("suspend %v", rec.fields)
	}
	h.quiet()
	// Deliveries queued when a connection was refused are deferred; those
	// queued after the suspension wait, suspended, in the queue. Either
	// way, one suspend record, and no connection once it is in force.
	deferred := 0
	for more := true; more; {
		select {
		case e := <-h.events:
			switch {
			case e.name == "policy" && e.str("action") == "suspend":
				t.Fatalf("a second suspend record: %v", e.fields)
			case e.name == "deferred":
				deferred++
			case e.name == "delivered" || e.name == "bounced":
				t.Fatalf("outcome %s %v", e.name, e.fields)
			}
		default:
			more = false
		}
	}
	queued := h.q.Domain("g.test").Pair(h.set.ByName("b0").Slot).Len()
	if deferred+queued != n-1 && deferred+queued != n {
		t.Errorf("%d deferred and %d queued of %d", deferred, queued, n)
	}
	before := refused.Load()
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
	}
	h.quiet()
	if got := refused.Load(); got != before || before > 2 {
		t.Errorf("%d connections refused before the suspension held, %d after", before, got-before)
	}
}

// startGreeting starts a raw TCP server on addr that greets each
// connection with line and closes it; it counts connections and returns
// its port. The listener and its goroutine end with the test.
func startGreeting(t *testing.T, addr, line string, count *atomic.Int32) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			count.Add(1)
			_ = c.SetDeadline(time.Now().Add(waitLimit))
			_, _ = c.Write([]byte(line + "\r\n"))
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestCountingRuleRetriesPermanentReply: a 5xx matched by a defer rule
// whose threshold is not reached yet is retried, not bounced: the rule
// says the reply is about the sender.
func TestCountingRuleRetriesPermanentReply(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(63, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			return loopbacktest.Reply(554, smtp.EnhancedCode{5, 7, 1}, "Service unavailable; listed at example RBL")
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "rbl", Code: 554, Text: "listed at",
		Scope: "site", Trigger: "3/10m", Action: "defer", Duration: 30 * time.Minute}}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Rules = rules })
	h.mxFor("rbl.test", ip(63, 10))
	injectVia(h, "b0", "", "a@rbl.test")
	if e := h.next(outcomeEvents...); e.name != "deferred" {
		t.Fatalf("a 554 counted by a defer rule: %s %v, want deferred", e.name, e.fields)
	}
	if strings.Contains(fmt.Sprint(h.s.Suspensions(h.clock.Now())), "rbl") {
		t.Error("a rule that did not fire put something in force")
	}
}
