package scheduler

import (
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
)

// TestShapingTLSPolicy: a shaping scope's tls: reaches the pool through
// the pair's shaping. To a receiver without STARTTLS the default
// (opportunistic) delivers in clear text, and a domain set to required is
// deferred with 4.7.4; both records carry the tls field.
func TestShapingTLSPolicy(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(46, 10)}, nil)
	cfg := config.Default()
	cfg.Shaping.Domains = []config.ShapingDomain{{Match: "strict.test",
		ShapingValues: config.ShapingValues{TLS: ptr("required"), ConsecutiveConnectionFailuresBeforeDelay: ptr(1)}}}
	cfg.TLS.MTASTS = false // no MTA-STS lookups in this test
	for i, a := range bindingIPs {
		cfg.Bindings = append(cfg.Bindings, config.Binding{Name: "b" + string(rune('0'+i)), Address: a})
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Shaper = sh })
	h.mxFor("lax.test", ip(46, 10))
	h.mxFor("strict.test", ip(46, 10))
	h.resolved("lax.test", "strict.test")

	h.inject("a@origin.test", "x@lax.test")
	e := h.next(outcomeEvents...)
	if e.name != "delivered" || e.str("tls") != "none policy=opportunistic" {
		t.Fatalf("lax.test: %s with tls %q", e.name, e.str("tls"))
	}
	h.inject("a@origin.test", "x@strict.test")
	e = h.next(outcomeEvents...)
	if e.name != "deferred" || e.str("tls") != "none policy=required" || e.str("enhanced_code") != "4.7.4" ||
		!strings.Contains(e.str("response"), "TLS policy required requires it") {
		t.Fatalf("strict.test: %s, tls %q, %s %q", e.name, e.str("tls"), e.str("enhanced_code"), e.str("response"))
	}
	if n := len(sinks[0].Messages()); n != 1 {
		t.Errorf("sink got %d messages, want lax.test's one", n)
	}
	if n := sinks[0].ClearMails(); n != 1 {
		t.Errorf("sink got %d MAIL FROM in clear, want lax.test's one", n)
	}
}
