package queue_test

import (
	"testing"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

// TestDelayedCounts: a pair's delayed count and oldest arrival follow
// Delay, Due and RemoveDelayed, and a record with delayed mail outlives
// Sweeps.
func TestDelayedCounts(t *testing.T) {
	t.Parallel()
	q := queue.New()
	now := time.Unix(1000, 0)
	a, b, c := mk("a", "X.test", 0, 0, 1), mk("b", "x.test", 0, 0, 1), mk("c", "x.test", 1, 0, 1)
	a.Arrival, b.Arrival, c.Arrival = 30, 10, 20
	q.Delay(a, now.Add(time.Minute))
	q.Delay(b, now.Add(time.Hour))
	q.Delay(c, now.Add(time.Minute))
	dr, ok := q.Lookup("x.test")
	if !ok {
		t.Fatal("Delay made no record")
	}
	if dr.Delayed() != 3 || dr.Pair(0).Delayed() != 2 || dr.Pair(1).Delayed() != 1 {
		t.Fatalf("delayed %d (%d, %d), want 3 (2, 1)", dr.Delayed(), dr.Pair(0).Delayed(), dr.Pair(1).Delayed())
	}
	if o, ok := dr.Pair(0).DelayedOldest(); !ok || o.UnixNano() != 10 {
		t.Fatalf("oldest %v %v, want 10ns", o.UnixNano(), ok)
	}
	for range 3 {
		if n := q.Sweep(now); n != 0 {
			t.Fatalf("Sweep dropped %d records with delayed mail", n)
		}
	}
	if due := q.Due(now.Add(time.Minute), 10, nil); len(due) != 2 {
		t.Fatalf("%d due, want 2", len(due))
	}
	if dr.Pair(0).Delayed() != 1 || dr.Pair(1).Delayed() != 0 {
		t.Fatalf("after Due: %d, %d, want 1, 0", dr.Pair(0).Delayed(), dr.Pair(1).Delayed())
	}
	if _, ok := dr.Pair(1).DelayedOldest(); ok {
		t.Fatal("an empty pair reports an oldest delayed delivery")
	}
	var walked []string
	q.WalkDelayed(func(d *queue.Delivery) bool { walked = append(walked, d.MsgID); return true })
	if len(walked) != 1 || walked[0] != "b" {
		t.Fatalf("walked %v, want b", walked)
	}
	q.RemoveDelayed(func(*queue.Delivery) bool { return true }, nil)
	if dr.Delayed() != 0 || dr.Pair(0).Delayed() != 0 {
		t.Fatalf("after RemoveDelayed: %d", dr.Delayed())
	}
	q.Sweep(now)
	if q.Sweep(now) != 1 {
		t.Fatal("an idle record was kept after its delayed mail left")
	}
}
