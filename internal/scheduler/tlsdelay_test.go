package scheduler

import (
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestTLSPolicyFailureDelaysAtOnce: a pair whose TLS policy cannot be met
// (required, and the receiver does not offer STARTTLS) is deferred after
// its first connection attempt, with 4.7.4 naming the policy, although
// consecutive_connection_failures_before_delay is 5: retrying every tick
// cannot change the receiver's TLS. Later ticks make no attempt (the mail
// waits in the delayed queue), and nothing is sent in clear text.
func TestTLSPolicyFailureDelaysAtOnce(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(80, 10)}, nil)
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) {
			s.Default.ConsecutiveConnectionFailuresBeforeDelay = ptr(5)
			s.Domains = []config.ShapingDomain{{Match: "strict.test", ShapingValues: config.ShapingValues{TLS: ptr("required")}}}
		})
	})
	h.mxFor("strict.test", ip(80, 10))
	h.resolved("strict.test")
	injectOn(h, "x@strict.test")
	e := h.next(outcomeEvents...)
	if e.name != "deferred" || e.str("enhanced_code") != "4.7.4" || !strings.Contains(e.str("response"), "TLS policy required requires it") {
		t.Fatalf("%s %s %q, want deferred 4.7.4 naming the policy", e.name, e.str("enhanced_code"), e.str("response"))
	}
	h.quiet()
	for range 3 {
		h.step(0)
	}
	if n := h.connects.Load(); n != 1 {
		t.Errorf("%d connection attempts, want 1", n)
	}
	if p := h.q.Domain("strict.test").Pair(0); p.Len() != 0 {
		t.Errorf("%d deliveries still ready, want the mail delayed", p.Len())
	}
	if n := sinks[0].ClearMails(); n != 0 {
		t.Errorf("%d MAIL FROM in clear text", n)
	}
}
