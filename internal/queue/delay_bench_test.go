package queue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

// BenchmarkDelayDue: one delivery into the delayed queue and out again,
// with 1,000 domains holding 100,000 delayed deliveries: what counting
// each pair's delayed deliveries (view.go) adds to a deferral.
func BenchmarkDelayDue(b *testing.B) {
	q := queue.New()
	now := time.Unix(1e6, 0)
	for i := range 100_000 {
		q.Delay(&queue.Delivery{MsgID: fmt.Sprint(i), Domain: fmt.Sprintf("d%d.test", i%1000), Arrival: int64(i),
			Rcpts: []queue.Rcpt{{Addr: "a@b"}}}, now.Add(time.Hour))
	}
	ds := make([]*queue.Delivery, 1000)
	for i := range ds {
		ds[i] = &queue.Delivery{MsgID: fmt.Sprint("x", i), Domain: fmt.Sprintf("d%d.test", i), Rcpts: []queue.Rcpt{{Addr: "a@b"}}}
	}
	var buf []*queue.Delivery
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := ds[i%len(ds)]
		q.Delay(d, now)
		buf = q.Due(now, 1, buf[:0])
		if len(buf) != 1 {
			b.Fatalf("due %d", len(buf))
		}
	}
}
