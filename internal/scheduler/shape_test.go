package scheduler

import (
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
)

// TestHookSeesShaping: a maintain hook reads the pair's shaping through
// hooks.Registry.ShapingOf — its caps and rates as resolved from the
// config for the pair's site and binding — and sees a suspension put in
// force by an operator; ResolveShaping says where each value came from.
func TestHookSeesShaping(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(45, 10)}, nil)
	cfg := config.Default()
	cfg.Shaping.Providers = []config.Provider{{Name: "sinkco", MatchMX: []string{".sink.test"},
		ShapingValues: config.ShapingValues{MaxConnections: ptr(4)}}}
	cfg.Shaping.Domains = []config.ShapingDomain{{Match: "shape.test",
		ShapingValues: config.ShapingValues{MaxMessageRate: ptr("5/s")},
		Bindings:      []config.BindingShaping{{Binding: "b0", ShapingValues: config.ShapingValues{MaxConnections: ptr(3)}}}}}
	for i, a := range bindingIPs {
		cfg.Bindings = append(cfg.Bindings, config.Binding{Name: "b" + string(rune('0'+i)), Address: a})
	}
	sh, err := policy.NewShaper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Shaper = sh })
	seen := make(chan hooks.PairShaping, 100)
	h.reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, _ *queue.Pair, now time.Time, _, _ int) int {
		if ps, ok := h.reg.ShapingOf(dr, slot, now); ok {
			select {
			case seen <- ps:
			default:
			}
		}
		return hooks.Handled // hold it: the test looks, nothing is sent
	})
	h.dns.Add(t, "shape.test. 60 IN MX 10 mx.sink.test.", "mx.sink.test. 60 IN A "+ip(45, 10))
	h.resolved("shape.test")
	injectOn(h, "a@shape.test") // binding b0
	ps := <-seen
	if ps.MaxConnections != 3 || ps.MaxMessageRate != 5 || ps.Provider != "sinkco" || ps.Site != "mx.sink.test" || ps.Suspended {
		t.Fatalf("hook saw %+v", ps)
	}
	now := h.clock.Now()
	sp := h.s.Suspend(policy.Suspension{Kind: policy.ScopeProvider, Name: "sinkco", Source: policy.SourceOperator,
		Reason: "maintenance", Until: now.Add(time.Hour)})
	if got, ok := h.reg.ShapingOf(h.q.Domain("shape.test"), 0, now); !ok || !got.Suspended || !got.SuspendedUntil.Equal(sp.Until) {
		t.Fatalf("after suspending the provider the hook sees %+v", got)
	}
	if _, ok := h.s.Resume(sp.ID, "test", "done"); !ok {
		t.Fatal("resume found no suspension")
	}
	if got, _ := h.reg.ShapingOf(h.q.Domain("shape.test"), 0, now); got.Suspended {
		t.Fatal("still suspended after Resume")
	}
	r, err := h.s.ResolveShaping("shape.test", "b0")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"max_connections": "domain shape.test binding b0", "max_message_rate": "domain shape.test"}
	for k, src := range want {
		if r.Sources[k] != src {
			t.Errorf("source of %s = %q, want %q", k, r.Sources[k], src)
		}
	}
	if _, err := h.s.ResolveShaping("shape.test", "nope"); err == nil {
		t.Error("an unknown binding resolved")
	}
	h.q.Domain("shape.test").Pair(0).Pop() // held: not delivered, and not an outcome to wait for
}
