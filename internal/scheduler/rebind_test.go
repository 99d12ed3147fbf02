package scheduler

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
)

// TestRebindRule: a reply matched by a rebind rule moves the delivery, and
// for the rule's duration the domain's new mail from that binding, to the
// rule's binding group; one policy record names the rule.
func TestRebindRule(t *testing.T) {
	t.Parallel()
	var refused atomic.Int32
	_, port := loopbacktest.StartSinks(t, []string{ip(46, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			if refused.Add(1) == 1 {
				return loopbacktest.Reply(550, [3]int{5, 7, 1}, "Service unavailable, client host blocked")
			}
			return nil
		}}
	})
	rules, err := policy.CompileRules([]config.ResponseRule{{Name: "blocked-ip", Code: 550, Enhanced: "5.7.1",
		Text: "client host .*blocked", Scope: "pair", Trigger: "immediate", Action: "rebind", Rebind: "clean",
		Duration: time.Hour}}, "")
	if err != nil {
		t.Fatal(err)
	}
	var cfgs []binding.Config
	for i, a := range bindingIPs {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i), Address: a})
	}
	set, err := binding.New(cfgs, []binding.GroupConfig{{Name: "clean", Members: []binding.Member{{Name: "b2", Weight: 1}}}},
		"mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Rules, o.Bindings = rules, set })
	h.mxFor("rb.test", ip(46, 10))
	injectVia(h, "b0", "", "a@rb.test")
	e := h.next("policy")
	if e.str("action") != "rebind" || e.str("rule") != "blocked-ip" || e.str("settings") != "group=clean" {
		t.Fatalf("policy record %v", e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "deferred" || e.str("binding") != "b0" {
		t.Fatalf("first outcome %s %v, want deferred from b0", e.name, e.fields)
	}
	h.s.Tick(h.clock.Now()) // due at once, on its new pair
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b2" {
		t.Fatalf("second outcome %s %v, want delivered from b2", e.name, e.fields)
	}
	// New mail for the domain asking for b0 goes from the group while
	// the rule's hour lasts, and from b0 again after it.
	injectVia(h, "b0", "", "b@rb.test")
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b2" {
		t.Fatalf("new mail: %s %v, want delivered from b2", e.name, e.fields)
	}
	h.clock.Advance(time.Hour)
	injectVia(h, "b0", "", "c@rb.test")
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b0" {
		t.Fatalf("after the hour: %s %v, want delivered from b0", e.name, e.fields)
	}
}
