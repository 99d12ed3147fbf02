package queue_test

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

// BenchmarkHeapPerDelivery measures the live heap a queued delivery costs,
// everything included: the Delivery, its strings and recipient, its skiplist
// node, and its share of the domain records, pairs and skiplist headers.
// 1,000,000 deliveries over 100,000 domains × 4 binding slots; target ≤ 1 KiB.
func BenchmarkHeapPerDelivery(b *testing.B) {
	const (
		deliveries = 1_000_000
		domains    = 100_000
		slots      = 4
	)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)

		q := queue.New()
		names := make([]string, domains)
		for i := range names {
			names[i] = "customer-" + strconv.Itoa(i) + ".example.com"
		}
		arrival := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
		for i := range deliveries {
			dom := names[i%domains]
			q.Push(&queue.Delivery{
				MsgID:    fmt.Sprintf("01JH%022d", i), // 26 chars, like a ULID
				Domain:   dom,
				Sender:   "bounces+" + strconv.Itoa(i) + "@mail.sender.example",
				Rcpts:    []queue.Rcpt{{Idx: 0, Addr: "user" + strconv.Itoa(i) + "@" + dom}},
				Arrival:  arrival + int64(i),
				Expires:  arrival + int64(72*time.Hour),
				Size:     5000,
				Priority: int32(i % 3),
				Slot:     int32(i / domains % slots),
			})
		}
		names = nil

		runtime.GC()
		runtime.ReadMemStats(&after)
		if st := q.Stats(); st.Active != deliveries || st.ReadyPairs != domains*slots {
			b.Fatalf("Stats = %+v", st)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/deliveries, "bytes/delivery")
		runtime.KeepAlive(q)
	}
}

// BenchmarkReadyScan measures a tick's walk over Ready() among 100,000 pairs
// when 1% of them have work and when all do: the cost follows the pairs with
// work, not the pairs that exist.
func BenchmarkReadyScan(b *testing.B) {
	const pairs = 100_000
	for _, tc := range []struct {
		name  string
		every int
	}{{"1pct", 100}, {"all", 1}} {
		b.Run(tc.name, func(b *testing.B) {
			q := queue.New()
			for i := range pairs {
				dom := "d" + strconv.Itoa(i/4) + ".test"
				p := q.Domain(dom).Pair(i % 4)
				if i%tc.every == 0 {
					q.Push(&queue.Delivery{MsgID: strconv.Itoa(i), Domain: dom, Slot: int32(p.Slot())})
				}
			}
			var buf []*queue.Pair
			b.ResetTimer()
			for b.Loop() {
				buf = q.Ready(buf)
				n := 0
				for _, p := range buf {
					if p.Peek() != nil {
						n++
					}
				}
				if n != pairs/tc.every {
					b.Fatalf("walked %d pairs with work, want %d", n, pairs/tc.every)
				}
			}
			b.ReportMetric(float64(len(buf)), "pairs/scan")
		})
	}
}

// BenchmarkPushPop is the steady-state cost of queueing and taking one
// delivery on a pair that holds a few hundred.
func BenchmarkPushPop(b *testing.B) {
	q := queue.New()
	for i := range 256 {
		q.Push(&queue.Delivery{MsgID: strconv.Itoa(i), Domain: "x.test", Arrival: int64(i)})
	}
	d := &queue.Delivery{MsgID: "m", Domain: "x.test", Arrival: 128}
	for b.Loop() {
		p := q.Push(d)
		d = p.Pop()
		d.Arrival++ // different key each round; it goes to the front when old
	}
}
