package scheduler

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

// BenchmarkMessagesPage lists pages of a bulk sender's mail with 200,000
// deliveries queued (delayed, over 50 domains): what one page of
// /api/v1/messages?sender= costs. Its allocations per page are the
// point: they should follow the page (limit 100), not the queue.
func BenchmarkMessagesPage(b *testing.B) {
	const queued = 200_000
	r := newScaleRig(b, nil)
	at := r.clock.Now().Add(time.Hour)
	ids := make([]string, queued)
	for i := range ids {
		ids[i] = r.sp.NewID()
	}
	for i, id := range ids {
		dom := "customer-" + strconv.Itoa(i%50) + ".example.com"
		r.q.Delay(&queue.Delivery{MsgID: id, Domain: dom, Sender: "bulk@sender.example",
			Rcpts: []queue.Rcpt{{Addr: "u" + strconv.Itoa(i) + "@" + dom}}, Arrival: r.clock.Now().UnixNano()}, at)
	}
	b.ReportAllocs()
	after := ""
	for b.Loop() {
		p, err := r.s.Messages(MessageQuery{Sender: "bulk@sender.example", Limit: 100, After: after})
		if err != nil {
			b.Fatal(err)
		}
		if len(p.Items) != 100 {
			b.Fatalf("%d items after %q, want 100", len(p.Items), after)
		}
		after = p.Next
		if after == ids[queued-1] || after == "" {
			after = "" // wrapped round: the first page again
		}
	}
}

// TestMessagesPageCostFollowsLimit: a page's allocations follow its
// limit, not the queue: 20,000 deliveries of one sender queued, a page of
// 10 allocates for a few dozen items. Before, every matching delivery
// was remembered (a map entry and a built item each) before any trim.
func TestMessagesPageCostFollowsLimit(t *testing.T) {
	const queued, limit = 20_000, 10
	h := newHarness(t, 25, nil)
	at := h.clock.Now().Add(time.Hour)
	for i := range queued {
		dom := "customer-" + strconv.Itoa(i%50) + ".example.com"
		h.q.Delay(&queue.Delivery{MsgID: h.sp.NewID(), Domain: dom, Sender: "bulk@sender.example",
			Rcpts: []queue.Rcpt{{Addr: "u" + strconv.Itoa(i) + "@" + dom}}}, at)
	}
	var n int
	allocs := testing.AllocsPerRun(3, func() {
		p, err := h.s.Messages(MessageQuery{Sender: "bulk@sender.example", Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		n = len(p.Items)
	})
	if n != limit {
		t.Fatalf("%d items, want %d", n, limit)
	}
	// About a dozen allocations per item kept (the item, its
	// recipients, the sort), times the 4×limit held before a trim.
	if max := 60.0*limit + 200; allocs > max {
		t.Errorf("a page of %d with %d queued made %.0f allocations, want at most %.0f", limit, queued, allocs, max)
	}
}

// TestMsgPicksOnce: a delivery both walks see (Tick moved it from the
// delayed queue to an active one between them) is listed once, as the
// later walk saw it; past the cutoff nothing is kept.
func TestMsgPicksOnce(t *testing.T) {
	h := newHarness(t, 25, nil)
	m := &msgPicks{limit: 2}
	d := func(id, dom string, slot int32) *queue.Delivery {
		return &queue.Delivery{MsgID: id, Domain: dom, Slot: slot, Rcpts: []queue.Rcpt{{Addr: "a@" + dom}}}
	}
	m.add(h.s, d("01B", "x.test", 0), true)
	m.add(h.s, d("01A", "x.test", 0), true)
	m.add(h.s, d("01C", "x.test", 0), true)
	m.add(h.s, d("01B", "x.test", 0), false) // moved to its active queue
	m.add(h.s, d("01B", "y.test", 0), false) // the same message to another domain
	m.add(h.s, d("01A", "x.test", 1), false) // another pair: another delivery
	m.trim()
	var got []string
	for _, it := range m.items {
		got = append(got, it.QueueID+" "+it.Domain+" "+it.Binding+" "+it.State)
	}
	want := []string{"01A x.test b0 delayed", "01A x.test b1 active", "01B x.test b0 active", "01B y.test b0 active"}
	if !slices.Equal(got, want) {
		t.Fatalf("picks %q, want %q", got, want)
	}
	if m.cutoff != "01B" {
		t.Errorf("cutoff %q, want 01B", m.cutoff)
	}
	m.add(h.s, d("01D", "x.test", 0), true)
	if len(m.items) != len(want) {
		t.Errorf("01D past the cutoff was kept: %d items", len(m.items))
	}
}
