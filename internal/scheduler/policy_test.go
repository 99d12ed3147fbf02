package scheduler

// End-to-end tests of issue 9's shaping, suspensions and response rules in
// the scheduler: a real spool, real DNS and real SMTP sinks on loopback,
// and the harness's fake clock. Rates are measured in simulated time: at a
// fixed clock a token bucket hands out a fixed number of tokens, so once
// every session has ended (pool.Total() == 0) the sinks' counts are final
// for that instant, and the test moves the clock on by hand. No assertion
// depends on how fast anything runs.

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	_ "github.com/mtad/mtad/internal/hooks/adaptive" // registers the plugin for hooks.Enable
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

func ptr[T any](v T) *T { return &v }

// testShaper compiles a shaping config: config.Default() with the
// harness's bindings b0..b3 and its timings (retry 10m, idle 50ms, so a
// session waiting for a token ends at once rather than after a real-time
// wait), edited by edit.
func testShaper(t testing.TB, edit func(*config.Shaping)) *policy.Shaper {
	t.Helper()
	cfg := config.Default()
	for i, a := range bindingIPs {
		cfg.Bindings = append(cfg.Bindings, config.Binding{Name: fmt.Sprintf("b%d", i), Address: a})
	}
	cfg.Delivery.RetryInterval, cfg.Delivery.MaxRetryInterval = 10*time.Minute, time.Hour
	cfg.Delivery.MaxAge, cfg.Delivery.IdleTimeout = 24*time.Hour, 50*time.Millisecond
	if edit != nil {
		edit(&cfg.Shaping)
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// injectVia spools a message for rcpt pinned to binding b (so that the
// delivery is one known pair) and submits it; sender "" is the null
// sender, whose failures send no DSN.
func injectVia(h *harness, b, sender, rcpt string) *spool.Message {
	h.t.Helper()
	m := &spool.Message{Sender: sender, Received: h.clock.Now(), Binding: b,
		Recipients: []spool.Recipient{{Addr: rcpt}}}
	if err := h.sp.Put(m, []byte("Subject: policy\r\n\r\nhello\r\n")); err != nil {
		h.t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil {
		h.t.Fatal(err)
	}
	return m
}

// until polls cond until it holds; the limit is a hang guard, never a
// timing assertion.
func (h *harness) until(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// quiet waits until no connection is open or opening: at a fixed clock no
// session can start again unless a budget has room, so what the sinks
// hold then is all that this instant allows.
func (h *harness) quiet() {
	h.t.Helper()
	h.until("every session to end", func() bool { return h.s.Pool().Total() == 0 })
}

// step moves the clock on by d, runs a tick and waits for quiet.
func (h *harness) step(d time.Duration) {
	h.t.Helper()
	h.s.Tick(h.clock.Advance(d))
	h.quiet()
}

// policyEvent returns the next policy record with the given action,
// skipping every other event.
func (h *harness) policyEvent(action string) event {
	h.t.Helper()
	for {
		e := h.next("policy")
		if e.str("action") == action {
			return e
		}
	}
}

// noPolicyBefore returns the next event named one of names, failing if a
// policy record comes first: no rule may fire before it.
func (h *harness) noPolicyBefore(names ...string) event {
	h.t.Helper()
	e := h.next(append([]string{"policy"}, names...)...)
	if e.name == "policy" {
		h.t.Fatalf("a policy record %v came before %v", e.fields, names)
	}
	return e
}

// count is how many messages the sinks hold that match keep (nil: all).
func count(keep func(loopbacktest.Message) bool, sinks ...*loopbacktest.Sink) int {
	n := 0
	for _, s := range sinks {
		for _, m := range s.Messages() {
			if keep == nil || keep(m) {
				n++
			}
		}
	}
	return n
}

func fromIP(ip string) func(loopbacktest.Message) bool {
	return func(m loopbacktest.Message) bool { return m.RemoteIP == ip }
}

func toDomain(d string) func(loopbacktest.Message) bool {
	return func(m loopbacktest.Message) bool { return len(m.To) > 0 && strings.HasSuffix(m.To[0], "@"+d) }
}

// countPerSecond runs the clock one simulated second at a time from the
// current instant (already quiet) and returns how many messages matching
// keep the sinks got at that instant and in each second after, until
// total have arrived (bounded by rounds).
func countPerSecond(h *harness, total, rounds int, keep func(loopbacktest.Message) bool, sinks ...*loopbacktest.Sink) []int {
	h.t.Helper()
	got := []int{count(keep, sinks...)}
	seen := got[0]
	for range rounds {
		if seen >= total {
			break
		}
		h.step(time.Second)
		n := count(keep, sinks...)
		got = append(got, n-seen)
		seen = n
	}
	return got
}

func eqInts(a, b []int) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// TestMessageRatePerSimulatedSecond: a pair shaped 10/s sends 10 at once
// (policy.Rate.Burst of 10/s is one second's worth, 10) and then 10 per
// simulated second, never more.
func TestMessageRatePerSimulatedSecond(t *testing.T) {
	t.Parallel()
	if b := (policy.Rate{N: 10, Per: time.Second}).Burst(); b != 10 {
		t.Fatalf("Burst of 10/s is %d; this test assumes 10", b)
	}
	sinks, port := loopbacktest.StartSinks(t, []string{ip(50, 10)}, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MaxMessageRate = ptr("10/s") })
	})
	h.mxFor("rate.test", ip(50, 10))
	h.resolved("rate.test")
	for i := range 35 {
		injectOn(h, fmt.Sprintf("r%d@rate.test", i))
	}
	h.quiet()
	got := countPerSecond(h, 35, 10, nil, sinks[0])
	if want := []int{10, 10, 10, 5}; !eqInts(got, want) {
		t.Fatalf("deliveries per simulated second %v, want %v", got, want)
	}
	h.step(time.Second)
	if n := count(nil, sinks[0]); n != 35 {
		t.Fatalf("%d messages at the sink, want 35", n)
	}
}

// sharedSite gives domains the same two MX hosts, both on addr.
func sharedSite(h *harness, addr string, domains ...string) {
	for _, d := range domains {
		h.dns.Add(h.t, d+". 60 IN MX 10 mx1.shared.test.", d+". 60 IN MX 20 mx2.shared.test.")
	}
	h.dns.Add(h.t, "mx1.shared.test. 60 IN A "+addr, "mx2.shared.test. 60 IN A "+addr)
}

// TestMXRollupSharesOneBudget: two domains on the same MX host set share
// one 10/s budget; with mx_rollup: false on one, each has its own.
func TestMXRollupSharesOneBudget(t *testing.T) {
	t.Parallel()
	for _, rollup := range []bool{true, false} {
		t.Run(fmt.Sprintf("rollup=%v", rollup), func(t *testing.T) {
			t.Parallel()
			sinks, port := loopbacktest.StartSinks(t, []string{ip(51, 10)}, nil)
			h := newHarness(t, port, func(o *Options) {
				o.Shaper = testShaper(t, func(s *config.Shaping) {
					s.Default.MaxMessageRate = ptr("10/s")
					if !rollup {
						s.Domains = []config.ShapingDomain{{Match: "b.test", MXRollup: ptr(false)}}
					}
				})
			})
			sharedSite(h, ip(51, 10), "a.test", "b.test")
			h.resolved("a.test", "b.test")
			for i := range 15 {
				injectOn(h, fmt.Sprintf("r%d@a.test", i))
				injectOn(h, fmt.Sprintf("r%d@b.test", i))
			}
			h.quiet()
			if rollup {
				got := countPerSecond(h, 30, 10, nil, sinks[0])
				if want := []int{10, 10, 10}; !eqInts(got, want) {
					t.Fatalf("both domains together per simulated second %v, want %v", got, want)
				}
				return
			}
			a, b := count(toDomain("a.test"), sinks[0]), count(toDomain("b.test"), sinks[0])
			if a != 10 || b != 10 {
				t.Fatalf("at the first instant a.test got %d and b.test %d, want 10 each (own budgets)", a, b)
			}
			h.step(time.Second)
			if a, b := count(toDomain("a.test"), sinks[0]), count(toDomain("b.test"), sinks[0]); a != 15 || b != 15 {
				t.Fatalf("after a second a.test has %d and b.test %d, want 15 each", a, b)
			}
		})
	}
}

// providerSites points p1.test and p2.test at two sites of provider
// "prov" (MX hosts under .prov.test), on sinks at addrs[0] and addrs[1].
func providerSites(h *harness, addrs []string) {
	h.dns.Add(h.t, "p1.test. 60 IN MX 10 mx.a.prov.test.", "mx.a.prov.test. 60 IN A "+addrs[0],
		"p2.test. 60 IN MX 10 mx.b.prov.test.", "mx.b.prov.test. 60 IN A "+addrs[1])
}

// TestProviderConnectionCapAcrossSites: provider_max_connections 2 holds
// across two sites of the provider, each of which alone could open 20.
func TestProviderConnectionCapAcrossSites(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var h *harness
	var peak atomic.Int64
	sample := func() {
		if n := int64(h.s.Pool().Total()); n > peak.Load() {
			peak.Store(n) // samples come from several goroutines; a lost max only weakens the check
		}
	}
	addrs := []string{ip(52, 10), ip(52, 11)}
	sinks, port := loopbacktest.StartSinks(t, addrs, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { sample(); <-gate; return nil }}
	})
	h = newHarness(t, port, func(o *Options) {
		o.Pool.IdleTimeout = waitLimit
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Providers = []config.Provider{{Name: "prov", MatchMX: []string{".prov.test"},
				ShapingValues: config.ShapingValues{ProviderMaxConnections: ptr(2)}}}
		})
	})
	h.reg.PostInitiateConnectionSMTP.RegisterFirst(func(*queue.DomainRecord, int, time.Time, int) { sample() })
	providerSites(h, addrs)
	h.resolved("p1.test", "p2.test")
	for i := range 20 {
		injectOn(h, fmt.Sprintf("r%d@p1.test", i))
		injectOn(h, fmt.Sprintf("r%d@p2.test", i))
	}
	h.until("two sessions in DATA", func() bool { return sinks[0].Sessions()+sinks[1].Sessions() == 2 })
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
		if n := h.s.Pool().Total(); n != 2 {
			close(gate)
			t.Fatalf("%d connections to the provider's two sites, cap 2", n)
		}
	}
	if hw := sinks[0].HighWater() + sinks[1].HighWater(); hw != 2 {
		close(gate)
		t.Fatalf("the sites' sessions peaked at %d together while DATA was held, want 2", hw)
	}
	close(gate)
	for i := 0; count(nil, sinks...) < 40 && i < 20; i++ {
		h.quiet()
		h.s.Tick(h.clock.Advance(time.Second))
	}
	if n := count(nil, sinks...); n != 40 {
		t.Fatalf("%d of 40 messages delivered", n)
	}
	if p := peak.Load(); p > 2 {
		t.Fatalf("the pool held %d connections at once, provider cap 2", p)
	}
}

// TestProviderMessageRateAcrossSites: provider_max_message_rate 10/s is
// one budget for both sites.
func TestProviderMessageRateAcrossSites(t *testing.T) {
	t.Parallel()
	addrs := []string{ip(53, 10), ip(53, 11)}
	sinks, port := loopbacktest.StartSinks(t, addrs, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Providers = []config.Provider{{Name: "prov", MatchMX: []string{".prov.test"},
				ShapingValues: config.ShapingValues{ProviderMaxMessageRate: ptr("10/s")}}}
		})
	})
	providerSites(h, addrs)
	h.resolved("p1.test", "p2.test")
	for i := range 15 {
		injectOn(h, fmt.Sprintf("r%d@p1.test", i))
		injectOn(h, fmt.Sprintf("r%d@p2.test", i))
	}
	h.quiet()
	got := countPerSecond(h, 30, 10, nil, sinks...)
	if want := []int{10, 10, 10}; !eqInts(got, want) {
		t.Fatalf("the provider's two sites per simulated second %v, want %v", got, want)
	}
}

// TestDomainBeatsProviderAndBindingNarrows: a domain entry's rate beats
// its provider's; a binding narrowing applies to that binding only.
func TestDomainBeatsProviderAndBindingNarrows(t *testing.T) {
	t.Parallel()
	addrs := []string{ip(54, 10), ip(54, 11), ip(54, 12)}
	sinks, port := loopbacktest.StartSinks(t, addrs, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Providers = []config.Provider{{Name: "prov", MatchMX: []string{".prov.test"},
				ShapingValues: config.ShapingValues{MaxMessageRate: ptr("5/s")}}}
			s.Domains = []config.ShapingDomain{
				{Match: "p1.test", ShapingValues: config.ShapingValues{MaxMessageRate: ptr("8/s")}},
				{Match: "bn.test", ShapingValues: config.ShapingValues{MaxMessageRate: ptr("6/s")},
					Bindings: []config.BindingShaping{{Binding: "b1", ShapingValues: config.ShapingValues{MaxMessageRate: ptr("3/s")}}}},
			}
		})
	})
	providerSites(h, addrs)
	h.mxFor("bn.test", addrs[2])
	h.resolved("p1.test", "p2.test", "bn.test")
	if r, err := h.s.ResolveShaping("p1.test", "b0"); err != nil || r.Sources["max_message_rate"] != "domain p1.test" || r.Provider != "prov" {
		t.Fatalf("ResolveShaping(p1.test, b0) = %+v, %v", r.Shaping, err)
	}
	for i := range 12 {
		injectOn(h, fmt.Sprintf("r%d@p1.test", i))
		injectOn(h, fmt.Sprintf("r%d@p2.test", i))
		injectVia(h, "b0", "a@origin.test", fmt.Sprintf("b0-%d@bn.test", i))
		injectVia(h, "b1", "a@origin.test", fmt.Sprintf("b1-%d@bn.test", i))
	}
	h.quiet()
	check := func(when string, p1, p2, b0, b1 int) {
		t.Helper()
		got := []int{count(nil, sinks[0]), count(nil, sinks[1]), count(fromIP(bindingIPs[0]), sinks[2]), count(fromIP(bindingIPs[1]), sinks[2])}
		if want := []int{p1, p2, b0, b1}; !eqInts(got, want) {
			t.Fatalf("%s: p1.test, p2.test, bn.test from b0, bn.test from b1 got %v, want %v", when, got, want)
		}
	}
	check("at once", 8, 5, 6, 3)
	h.step(time.Second)
	check("after a second", 12, 10, 12, 6)
}

// tss04 is Yahoo's deferral text, as the issue quotes it.
const tss04 = "[TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints"

func shippedRules(t testing.TB) *policy.Rules {
	t.Helper()
	r, err := policy.CompileRules(nil, "../../configs/response-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTSS04SuspendsBindingSite: a 421 4.7.0 [TSS04] suspends that binding
// × site under the shipped rule; the other binding keeps sending; the
// suspension is listed, ends on time, and an operator's Resume ends the
// next one early.
func TestTSS04SuspendsBindingSite(t *testing.T) {
	t.Parallel()
	var blocked atomic.Bool
	blocked.Store(true)
	sinks, port := loopbacktest.StartSinks(t, []string{ip(55, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if blocked.Load() && strings.HasPrefix(to, "b0-") {
				return loopbacktest.Reply(421, smtp.EnhancedCode{4, 7, 0}, tss04)
			}
			return nil
		}}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, nil)
		o.Rules = shippedRules(t)
	})
	h.mxFor("y.test", ip(55, 10))
	h.resolved("y.test")
	pair0 := h.q.Domain("y.test").Pair(h.set.ByName("b0").Slot)

	injectVia(h, "b0", "", "b0-1@y.test")
	rec := h.policyEvent("suspend")
	if rec.str("rule") != "yahoo-tss04-tss05" || rec.str("binding") != "b0" || rec.str("scope") != "site" ||
		rec.str("name") != "mx.y.test" || !strings.Contains(rec.str("reason"), "[TSS04]") {
		t.Fatalf("suspend record %v", rec.fields)
	}
	until, ok := rec.fields["until"].(time.Time)
	if !ok || !until.Equal(h.clock.Now().Add(2*time.Hour)) {
		t.Fatalf("suspend record until %v, want now + 2h", rec.fields["until"])
	}
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "deferred" || e.str("recipient") != "b0-1@y.test" {
		t.Fatalf("after the 421: %s %v, want b0-1 deferred", e.name, e.fields)
	}
	sus := h.s.Suspensions(h.clock.Now())
	if len(sus) != 1 || sus[0].Kind != policy.ScopeSite || sus[0].Name != "mx.y.test" || sus[0].Binding != "b0" ||
		sus[0].Source != policy.SourceRule || sus[0].Rule != "yahoo-tss04-tss05" || !sus[0].Until.Equal(until) {
		t.Fatalf("Suspensions = %+v", sus)
	}

	// b1 keeps sending to the site; b0 sends nothing, tick after tick.
	h.quiet()
	injectVia(h, "b0", "", "b0-2@y.test")
	injectVia(h, "b1", "", "b1-1@y.test")
	if e := h.noPolicyBefore("delivered"); e.str("recipient") != "b1-1@y.test" {
		t.Fatalf("delivered %v, want b1-1", e.fields)
	}
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Minute))
		if n := conns(pair0); n != 0 {
			t.Fatalf("the suspended pair has %d connections", n)
		}
	}
	h.quiet()
	if n := count(fromIP(bindingIPs[0]), sinks[0]); n != 0 {
		t.Fatalf("%d messages from b0 while it was suspended", n)
	}

	// The suspension ends on time, and b0 delivers both.
	blocked.Store(false)
	h.clock.Advance(until.Sub(h.clock.Now()))
	h.s.Tick(h.clock.Now())
	if e := h.policyEvent("suspension_ended"); e.str("rule") != "yahoo-tss04-tss05" || e.str("binding") != "b0" {
		t.Fatalf("suspension_ended %v", e.fields)
	}
	for range 2 {
		if e := h.next("delivered"); !strings.HasPrefix(e.str("recipient"), "b0-") {
			t.Fatalf("delivered %v, want b0's", e.fields)
		}
	}
	if sus := h.s.Suspensions(h.clock.Now()); len(sus) != 0 {
		t.Fatalf("Suspensions after the end = %+v", sus)
	}

	// Suspended again; an operator's Resume ends it early.
	h.quiet()
	blocked.Store(true)
	injectVia(h, "b0", "", "b0-3@y.test")
	id := h.policyEvent("suspend").str("id")
	h.next("deferred")
	blocked.Store(false)
	if _, ok := h.s.Resume(id, "operator", "test"); !ok {
		t.Fatalf("Resume(%s) found no suspension", id)
	}
	if e := h.policyEvent("resume"); e.str("id") != id {
		t.Fatalf("resume record %v", e.fields)
	}
	if sus := h.s.Suspensions(h.clock.Now()); len(sus) != 0 {
		t.Fatalf("Suspensions after Resume = %+v", sus)
	}
	injectVia(h, "b0", "", "b0-4@y.test")
	if e := h.next("delivered"); e.str("recipient") != "b0-4@y.test" {
		t.Fatalf("delivered %v, want b0-4 (resumed before the end)", e.fields)
	}
}

// TestThrottleRuleRamps: a throttle rule holds the rate at its override
// for its duration, then the rate climbs over the ramp in steps
// (geometrically: 1/s to 32/s is 2, 4, 8, 16, then 32 per second) and
// throttle_ended is logged at the end.
func TestThrottleRuleRamps(t *testing.T) {
	t.Parallel()
	const (
		dur  = 10 * time.Second
		ramp = 50 * time.Second // five steps of 10s
	)
	var triggered atomic.Bool
	sinks, port := loopbacktest.StartSinks(t, []string{ip(56, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if to == "trigger@th.test" && triggered.CompareAndSwap(false, true) {
				return loopbacktest.Reply(451, smtp.EnhancedCode{4, 7, 1}, "slow down")
			}
			return nil
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "slow-down", Code: 451, Enhanced: "4.7.1",
		Text: "slow down", Scope: "site", Action: "throttle", Duration: dur, Ramp: ramp,
		Throttle: &config.RuleThrottle{MaxMessageRate: "1/s"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MaxMessageRate = ptr("32/s") })
		o.Rules = rules
	})
	h.mxFor("th.test", ip(56, 10))
	h.resolved("th.test")
	start := h.clock.Now()
	end := start.Add(dur)

	injectVia(h, "b0", "", "trigger@th.test")
	if e := h.policyEvent("throttle"); e.str("rule") != "slow-down" || e.str("settings") != "max_message_rate=1/s" {
		t.Fatalf("throttle record %v", e.fields)
	}
	if th := h.s.Throttles(h.clock.Now()); len(th) != 1 || th[0].Rule != "slow-down" {
		t.Fatalf("Throttles = %+v", th)
	}
	h.quiet()
	for i := range 160 {
		injectVia(h, "b0", "", fmt.Sprintf("r%d@th.test", i))
	}
	h.quiet()
	if n := count(nil, sinks[0]); n != 1 {
		t.Fatalf("%d delivered at once under a 1/s throttle, want 1 (its burst)", n)
	}
	// In force: 1 per simulated second.
	for range 3 {
		before := count(nil, sinks[0])
		h.step(time.Second)
		if n := count(nil, sinks[0]) - before; n != 1 {
			t.Fatalf("%d in a simulated second under the 1/s throttle, want 1", n)
		}
	}
	// The ramp: in each step, drain the bucket, then count one second.
	prev := 1
	for k := range 5 {
		h.clock.Advance(end.Add(time.Duration(k)*ramp/5 + time.Second).Sub(h.clock.Now()))
		h.step(0)
		before := count(nil, sinks[0])
		h.step(time.Second)
		n := count(nil, sinks[0]) - before
		want := 32 * math.Pow(1.0/32, float64(4-k)/5) // 2, 4, 8, 16, 32
		if float64(n) < math.Floor(want-1e-9) || float64(n) > math.Ceil(want+1e-9) {
			t.Fatalf("ramp step %d: %d in a simulated second, want %.2f", k, n, want)
		}
		if n <= prev {
			t.Fatalf("ramp step %d: %d per second, not above the step before (%d)", k, n, prev)
		}
		prev = n
	}
	if prev != 32 {
		t.Fatalf("the last step sends %d per second, want the normal 32", prev)
	}
	h.clock.Advance(end.Add(ramp).Sub(h.clock.Now()))
	h.s.Tick(h.clock.Now())
	if e := h.policyEvent("throttle_ended"); e.str("rule") != "slow-down" {
		t.Fatalf("throttle_ended %v", e.fields)
	}
	if th := h.s.Throttles(h.clock.Now()); len(th) != 0 {
		t.Fatalf("Throttles after the ramp = %+v", th)
	}
}

// TestDeferAndBounceRules: a 550 5.7.1 matched by a defer rule is retried
// and delivered; the same reply without a rule bounces; a bounce rule on a
// 4xx bounces.
func TestDeferAndBounceRules(t *testing.T) {
	t.Parallel()
	var once sync.Once
	sinks, port := loopbacktest.StartSinks(t, []string{ip(57, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			var err error
			switch to {
			case "x@d1.test":
				once.Do(func() { err = loopbacktest.Reply(550, smtp.EnhancedCode{5, 7, 1}, "blocked, try later") })
			case "y@d2.test":
				err = loopbacktest.Reply(550, smtp.EnhancedCode{5, 7, 1}, "blocked, try later")
			case "q@d3.test":
				err = loopbacktest.Reply(452, smtp.EnhancedCode{4, 2, 2}, "mailbox over quota")
			}
			return err
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{
		{Name: "defer-571", Code: 550, Enhanced: "5.7.1", MatchDomain: []string{"d1.test"}, Action: "defer", Duration: 15 * time.Minute},
		{Name: "bounce-quota", Code: 452, Enhanced: "4.2.2", Action: "bounce"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, nil)
		o.Rules = rules
	})
	for _, d := range []string{"d1.test", "d2.test", "d3.test"} {
		h.mxFor(d, ip(57, 10))
	}
	h.resolved("d1.test", "d2.test", "d3.test")

	injectVia(h, "b0", "", "x@d1.test")
	if e := h.policyEvent("defer"); e.str("rule") != "defer-571" {
		t.Fatalf("defer record %v", e.fields)
	}
	e := h.next(outcomeEvents...)
	if e.name != "deferred" || e.str("recipient") != "x@d1.test" {
		t.Fatalf("%s %v, want x@d1.test deferred", e.name, e.fields)
	}
	next, _ := e.fields["next_attempt"].(time.Time)
	if want := h.clock.Now().Add(15 * time.Minute); !next.Equal(want) {
		t.Fatalf("next attempt %v, want the rule's 15m: %v", next, want)
	}
	h.step(14 * time.Minute)
	if n := count(toDomain("d1.test"), sinks[0]); n != 0 {
		t.Fatalf("x@d1.test delivered before its retry time")
	}
	h.s.Tick(h.clock.Advance(time.Minute))
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "x@d1.test" {
		t.Fatalf("%s %v, want x@d1.test delivered on retry", e.name, e.fields)
	}

	injectVia(h, "b0", "", "y@d2.test")
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "bounced" || e.str("recipient") != "y@d2.test" {
		t.Fatalf("%s %v, want y@d2.test bounced (no rule)", e.name, e.fields)
	}

	injectVia(h, "b0", "", "q@d3.test")
	if e := h.policyEvent("bounce"); e.str("rule") != "bounce-quota" {
		t.Fatalf("bounce record %v", e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.str("recipient") != "q@d3.test" || e.fields["code"] != int64(452) {
		t.Fatalf("%s %v, want q@d3.test bounced on its 452", e.name, e.fields)
	}
}

// TestLoweredCapClosesSessions: a reload lowering max_connections from 5
// to 2 while five sessions are open ends three after their transaction;
// the sink never holds more than two again, and every message arrives
// once.
func TestLoweredCapClosesSessions(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var inData atomic.Int64
	var after atomic.Bool // the drop to two was seen
	var over atomic.Int64 // sessions seen above two after it
	var sink *loopbacktest.Sink
	sinks, port := loopbacktest.StartSinks(t, []string{ip(58, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error {
			if n := sink.Sessions(); after.Load() && n > 2 {
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
	h := newHarness(t, port, func(o *Options) {
		o.Pool.IdleTimeout = waitLimit
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MaxConnections = ptr(5) })
	})
	h.mxFor("cap.test", ip(58, 10))
	h.resolved("cap.test")
	for i := range 60 {
		injectOn(h, fmt.Sprintf("r%d@cap.test", i))
	}
	h.until("five sessions in DATA", func() bool { return inData.Load() == 5 })
	if n := sink.Sessions(); n != 5 {
		t.Fatalf("%d sessions, want 5", n)
	}
	h.s.SetShaper(testShaper(t, func(s *config.Shaping) { s.Default.MaxConnections = ptr(2) }))
	for range 5 {
		select {
		case release <- struct{}{}:
		case <-time.After(waitLimit):
			t.Fatal("a held DATA did not take its release")
		}
	}
	// The sink sees a QUIT before the pool has given the slot back: wait
	// for both.
	h.until("two sessions, both in their next DATA", func() bool {
		return sink.Sessions() == 2 && inData.Load() == 2 && h.s.Pool().Total() == 2
	})
	after.Store(true)
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
		if n := h.s.Pool().Total(); n != 2 {
			t.Fatalf("%d connections after the reload, cap 2", n)
		}
	}
	open()
	msgs := sink.WaitMessages(t, 60)
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.To[0]] = true
	}
	if len(msgs) != 60 || len(seen) != 60 {
		t.Fatalf("%d messages for %d recipients, want 60 and 60", len(msgs), len(seen))
	}
	if n := over.Load(); n != 0 {
		t.Fatalf("the sink held %d sessions after the cap dropped to 2", n)
	}
}

// refusing gives domain an MX on an address where nothing listens (the
// harness port, another 127.x address): every connection is refused.
func refusing(h *harness, domain string) { h.mxFor(domain, ip(59, 99)) }

// attempt waits for one connection attempt to domain and for its session
// to end (its outcome settled).
func (h *harness) attempt(domain string) {
	h.t.Helper()
	select {
	case in := <-h.inits:
		if in[0] != domain || in[1].(int) >= 0 {
			h.t.Fatalf("connection attempt %v, want a refused one to %s", in, domain)
		}
	case <-time.After(waitLimit):
		h.t.Fatalf("no connection attempt to %s", domain)
	}
	h.quiet()
}

// TestFailuresBeforeDelay: with
// consecutive_connection_failures_before_delay 3 a refusing destination
// gets three attempts, one per maintenance, before its mail is deferred.
func TestFailuresBeforeDelay(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(59, 10)}, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.ConsecutiveConnectionFailuresBeforeDelay = ptr(3) })
	})
	refusing(h, "dead.test")
	h.resolved("dead.test")
	pair := h.q.Domain("dead.test").Pair(0)
	injectOn(h, "x@dead.test")
	for i := 1; i <= 2; i++ {
		h.attempt("dead.test")
		if pair.Len() != 1 {
			t.Fatalf("after failure %d the mail left the ready queue", i)
		}
		h.s.Tick(h.clock.Now())
	}
	h.attempt("dead.test")
	if e := h.next(outcomeEvents...); e.name != "deferred" || e.str("recipient") != "x@dead.test" {
		t.Fatalf("%s %v, want x@dead.test deferred", e.name, e.fields)
	}
	h.step(0)
	if n := h.connects.Load(); n != 3 {
		t.Fatalf("%d connection attempts before the delay, want 3", n)
	}
}

// TestAdaptivePauseIsASuspension: the adaptive plugin's pause after
// connection failures is a suspension with source adaptive, listed by
// Suspensions, holding the pair until Resume lifts it.
func TestAdaptivePauseIsASuspension(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(60, 10)}, nil)
	var h *harness
	h = newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.ConsecutiveConnectionFailuresBeforeDelay = ptr(10) })
		base := hooks.PluginConfig{Logger: o.Logger, Now: func() time.Time { return h.clock.Now() }}
		err := hooks.Enable(o.Hooks, []string{"adaptive"},
			map[string]map[string]any{"adaptive": {"failures": 3, "pause": "30s", "max_pause": "10m"}}, base)
		if err != nil {
			t.Fatalf("Enable: %v", err)
		}
	})
	refusing(h, "flaky.test")
	h.resolved("flaky.test")
	injectOn(h, "x@flaky.test")
	for range 2 {
		h.attempt("flaky.test")
		h.s.Tick(h.clock.Now())
	}
	h.attempt("flaky.test")
	rec := h.policyEvent("suspend")
	if rec.str("source") != policy.SourceAdaptive || rec.str("scope") != "pair" || rec.str("name") != "flaky.test" || rec.str("binding") != "b0" {
		t.Fatalf("adaptive's suspend record %v", rec.fields)
	}
	sus := h.s.Suspensions(h.clock.Now())
	if len(sus) != 1 || sus[0].Source != policy.SourceAdaptive || sus[0].Kind != policy.ScopePair ||
		sus[0].Name != "flaky.test" || sus[0].Binding != "b0" || !sus[0].Until.Equal(h.clock.Now().Add(30*time.Second)) {
		t.Fatalf("Suspensions = %+v", sus)
	}
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
		if n := h.s.Pool().Total(); n != 0 {
			t.Fatalf("%d connections opened for the paused pair", n)
		}
	}
	if n := h.connects.Load(); n != 3 {
		t.Fatalf("%d connection attempts, want 3 (none while paused)", n)
	}
	if _, ok := h.s.Resume(sus[0].ID, "operator", "test"); !ok {
		t.Fatal("Resume found no suspension")
	}
	if sus := h.s.Suspensions(h.clock.Now()); len(sus) != 0 {
		t.Fatalf("Suspensions after Resume = %+v", sus)
	}
	h.s.Tick(h.clock.Now())
	h.attempt("flaky.test") // the pair is tried again before the pause's end
}

// TestRulesIgnoreLocalFailures: a rule matching any text fires on a
// remote reply, but never on mtad's own failures: a refused connection, a
// DNS answer of no such domain, a DNS server failure.
func TestRulesIgnoreLocalFailures(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(61, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error { return loopbacktest.Reply(450, smtp.EnhancedCode{4, 2, 0}, "busy") }}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "anything", Text: ".", Scope: "pair",
		Action: "suspend", Duration: time.Hour}}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.ConsecutiveConnectionFailuresBeforeDelay = ptr(1) })
		o.Rules = rules
	})
	refusing(h, "refused.test")
	h.dns.SetRcode("servfail.test.", 2) // SERVFAIL
	h.resolved("refused.test")

	injectVia(h, "b0", "", "x@refused.test")
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "deferred" {
		t.Fatalf("refused: %s %v, want deferred", e.name, e.fields)
	}
	injectVia(h, "b0", "", "x@nxdomain.test")
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "bounced" || e.str("domain") != "nxdomain.test" {
		t.Fatalf("NXDOMAIN: %s %v, want bounced", e.name, e.fields)
	}
	injectVia(h, "b0", "", "x@servfail.test")
	if e := h.noPolicyBefore(outcomeEvents...); e.name != "deferred" || e.str("domain") != "servfail.test" {
		t.Fatalf("SERVFAIL: %s %v, want deferred", e.name, e.fields)
	}
	if sus := h.s.Suspensions(h.clock.Now()); len(sus) != 0 {
		t.Fatalf("Suspensions after local failures = %+v", sus)
	}
	// The same rule does fire on what a receiver says.
	h.mxFor("busy.test", ip(61, 10))
	h.resolved("busy.test")
	injectVia(h, "b0", "", "x@busy.test")
	if e := h.policyEvent("suspend"); e.str("rule") != "anything" || e.str("domain") != "busy.test" {
		t.Fatalf("suspend record %v", e.fields)
	}
}

// TestProviderThrottleAcrossSites: a throttle rule scoped to a provider
// (as the shipped Gmail rule is) holds its rate across all the provider's
// sites from the binding, not at that rate per site; and its
// max_connections caps the provider's connections, not each site's.
func TestProviderThrottleAcrossSites(t *testing.T) {
	t.Parallel()
	var triggered atomic.Bool
	addrs := []string{ip(62, 10), ip(62, 11)}
	sinks, port := loopbacktest.StartSinks(t, addrs, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if to == "trigger@p1.test" && triggered.CompareAndSwap(false, true) {
				return loopbacktest.Reply(421, smtp.EnhancedCode{4, 7, 28}, "unusual rate of unsolicited mail")
			}
			return nil
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "prov-rate", Code: 421, Enhanced: "4.7.28",
		Scope: "provider", Action: "throttle", Duration: time.Hour,
		Throttle: &config.RuleThrottle{MaxMessageRate: "2/s", MaxConnections: ptr(1)}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	var h *harness
	var peak atomic.Int64
	h = newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Default.MaxMessageRate = ptr("100/s")
			s.Providers = []config.Provider{{Name: "prov", MatchMX: []string{".prov.test"}}}
		})
		o.Rules = rules
	})
	h.reg.PostInitiateConnectionSMTP.RegisterFirst(func(*queue.DomainRecord, int, time.Time, int) {
		if n := int64(h.s.Pool().Total()); n > peak.Load() {
			peak.Store(n)
		}
	})
	providerSites(h, addrs)
	h.resolved("p1.test", "p2.test")
	injectOn(h, "trigger@p1.test")
	if e := h.policyEvent("throttle"); e.str("scope") != "provider" || e.str("name") != "prov" || e.str("binding") != "b0" {
		t.Fatalf("throttle record %v", e.fields)
	}
	h.quiet()
	// Let the buckets fill at the throttled rate before counting.
	h.step(time.Second)
	peak.Store(0)
	for i := range 10 {
		injectOn(h, fmt.Sprintf("r%d@p1.test", i))
		injectOn(h, fmt.Sprintf("r%d@p2.test", i))
	}
	h.quiet()
	got := countPerSecond(h, 20, 3, nil, sinks...)
	if want := []int{2, 2, 2, 2}; !eqInts(got, want) {
		t.Fatalf("the provider's two sites per simulated second %v under a provider throttle of 2/s, want %v", got, want)
	}
	if p := peak.Load(); p > 1 {
		t.Fatalf("%d connections at once to the provider under a throttle of max_connections 1", p)
	}
}

// TestBindingThrottleAcrossDestinations: a throttle rule scoped to a
// binding holds its rate across every destination of that binding, and
// leaves the other bindings alone.
func TestBindingThrottleAcrossDestinations(t *testing.T) {
	t.Parallel()
	var triggered atomic.Bool
	addrs := []string{ip(63, 10), ip(63, 11)}
	sinks, port := loopbacktest.StartSinks(t, addrs, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if to == "trigger@s1.test" && triggered.CompareAndSwap(false, true) {
				return loopbacktest.Reply(451, smtp.EnhancedCode{4, 7, 1}, "your IP is listed")
			}
			return nil
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "ip-listed", Code: 451, Enhanced: "4.7.1",
		Scope: "binding", Action: "throttle", Duration: time.Hour,
		Throttle: &config.RuleThrottle{MaxMessageRate: "2/s"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MaxMessageRate = ptr("100/s") })
		o.Rules = rules
	})
	h.mxFor("s1.test", addrs[0])
	h.mxFor("s2.test", addrs[1])
	h.resolved("s1.test", "s2.test")
	injectOn(h, "trigger@s1.test")
	if e := h.policyEvent("throttle"); e.str("scope") != "binding" || e.str("binding") != "b0" {
		t.Fatalf("throttle record %v", e.fields)
	}
	h.quiet()
	h.step(time.Second)
	for i := range 6 {
		injectOn(h, fmt.Sprintf("r%d@s1.test", i))
		injectOn(h, fmt.Sprintf("r%d@s2.test", i))
		injectVia(h, "b1", "", fmt.Sprintf("b1-%d@s2.test", i))
	}
	h.quiet()
	b0 := fromIP(bindingIPs[0])
	got := countPerSecond(h, 12, 3, b0, sinks...)
	if want := []int{2, 2, 2}; !eqInts(got[:3], want) {
		t.Fatalf("b0 to both sites per simulated second %v under a binding throttle of 2/s, want %v first", got, want)
	}
	if n := count(fromIP(bindingIPs[1]), sinks...); n != 6 {
		t.Fatalf("b1 delivered %d of 6: the binding throttle held another binding", n)
	}
}

// TestSuspendedDomainNotResolved: a domain an operator suspended (its DNS
// broken, say) is not looked up while the suspension holds, so a lookup's
// NXDOMAIN cannot bounce the mail the suspension was set to hold; after
// the resume it is looked up and the answer applies.
func TestSuspendedDomainNotResolved(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(66, 10)}, nil)
	h := newHarness(t, port, func(o *Options) { o.Shaper = testShaper(t, func(*config.Shaping) {}) })
	h.dns.SetRcode("nx.test.", 3) // NXDOMAIN
	sp := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "nx.test", Source: policy.SourceOperator,
		Reason: "dns broken, hold mail", Until: h.clock.Now().Add(time.Hour)})
	m := h.inject("s@src.test", "a@nx.test")
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
	}
	dr, _ := h.q.Lookup("nx.test")
	ds := stateOf(dr)
	ds.mu.Lock()
	looked := ds.resolved || ds.resolving || !ds.at.IsZero()
	ds.mu.Unlock()
	if looked {
		t.Fatal("a suspended domain was looked up")
	}
	if _, err := h.sp.Get(m.ID); err != nil {
		t.Fatalf("held mail left the spool: %v", err)
	}
	if _, ok := h.s.Resume(sp.ID, "ops", "fixed"); !ok {
		t.Fatal("Resume found no suspension")
	}
	h.s.Tick(h.clock.Advance(time.Second))
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.str("recipient") != "a@nx.test" {
		t.Fatalf("after the resume: %s %v, want the NXDOMAIN bounce", e.name, e.fields)
	}
}
