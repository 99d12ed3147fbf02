package scheduler

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/mtad/mtad/internal/binding"
)

// TestRetireBinding: a reload removes b0, which has deferred mail; the
// mail moves to the bindings left and is delivered from them, and a live
// binding's slot is refused.
func TestRetireBinding(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	h := newHarness(t, deferringSink(t, ip(94, 10), &deferring), nil)
	h.mxFor("x.test", ip(94, 10))
	for i := range 4 {
		h.inject("s@src.test", fmt.Sprintf("r%d@x.test", i)) // one per binding, round robin
	}
	h.deferredAll(4)

	if _, err := h.s.RetireBinding(0); err == nil {
		t.Fatal("RetireBinding of a live binding's slot succeeded")
	}
	var cfgs []binding.Config
	for i, a := range bindingIPs[1:] {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i+1), Address: a})
	}
	ch, err := h.set.Apply(cfgs, nil)
	if err != nil || len(ch.Retired) != 1 || ch.Retired[0].Slot != 0 {
		t.Fatalf("Apply = %+v, %v", ch, err)
	}
	n, err := h.s.RetireBinding(0)
	if err != nil || n != 1 {
		t.Fatalf("RetireBinding(0) = %d, %v; want 1 moved", n, err)
	}
	if st := h.q.Stats(); st.Delayed != 4 {
		t.Errorf("%d delayed after the move, want 4 (the moved one keeps its retry time)", st.Delayed)
	}
	deferring.Store(false)
	if n, err := h.s.Flush("", "", "test"); err != nil || n != 4 {
		t.Fatalf("Flush = %d, %v; want 4", n, err)
	}
	for range 4 {
		e := h.next(outcomeEvents...)
		if e.name != "delivered" || e.str("binding") == "b0" {
			t.Fatalf("outcome %s from %s, want delivered from a binding left", e.name, e.str("binding"))
		}
	}
}
