package scheduler

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
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

// TestRetiredBindingLateMail: mail that reaches a retired binding's slot
// after RetireBinding's walk (here: the reload retires b0 and the walk
// finds nothing yet; b0's deferred delivery comes due after) is moved to
// a binding left when its pair is maintained, and is never sent from b0.
func TestRetiredBindingLateMail(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	h := newHarness(t, deferringSink(t, ip(94, 11), &deferring), nil)
	h.mxFor("x.test", ip(94, 11))
	for i := range 4 {
		h.inject("s@src.test", fmt.Sprintf("r%d@x.test", i)) // one per binding, round robin
	}
	h.deferredAll(4)
	var cfgs []binding.Config
	for i, a := range bindingIPs[1:] {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i+1), Address: a})
	}
	if _, err := h.set.Apply(cfgs, nil); err != nil {
		t.Fatal(err)
	}
	// No RetireBinding: b0's delivery stays on slot 0, as one landing
	// there after the walk would.
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

// TestRetiredBindingSessionStops: a session busy on b0 when a reload
// retires it sends nothing more from b0: the delivery queued behind the
// one in flight waits on the pair when the session ends, and the next
// tick moves it to a binding left.
func TestRetiredBindingSessionStops(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	_, port := loopbacktest.StartSinks(t, []string{ip(94, 12)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(from string, _ []string, _ []byte) error {
			if strings.Contains(from, "first@") {
				close(entered)
				<-release
			}
			return nil
		}}
	})
	h := newHarness(t, port, func(o *Options) {
		o.Pool.Policy = func(*queue.DomainRecord, int) connpool.Policy {
			return connpool.Policy{MaxConnections: 1, MaxConnectionsPerBinding: 1, MaxDeliveriesPerConnection: 100}
		}
	})
	h.mxFor("x.test", ip(94, 12))
	h.resolved("x.test")
	send := func(sender string) {
		m := &spool.Message{Sender: sender, Received: h.clock.Now(), Binding: "b0",
			Recipients: []spool.Recipient{{Addr: "r@x.test"}}}
		if err := h.sp.Put(m, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := h.s.Submit(m); err != nil {
			t.Fatal(err)
		}
	}
	send("first@src.test")
	<-entered // in DATA on b0's one connection
	send("second@src.test")
	var cfgs []binding.Config
	for i, a := range bindingIPs[1:] {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i+1), Address: a})
	}
	if _, err := h.set.Apply(cfgs, nil); err != nil {
		t.Fatal(err)
	}
	close(release)
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b0" {
		t.Fatalf("first: %s from %s, want delivered from b0 (it was in flight)", e.name, e.str("binding"))
	}
	dr, _ := h.q.Lookup("x.test")
	p := dr.Pair(0)
	for i := 0; p.Open()+p.Connecting() > 0; i++ { // the session ends: a wait, bounded
		if i == 2000 {
			t.Fatal("b0's session did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.s.Tick(h.clock.Now())
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") == "b0" {
		t.Fatalf("second: %s from %s, want delivered from a binding left", e.name, e.str("binding"))
	}
}
