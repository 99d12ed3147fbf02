package queue_test

import (
	"slices"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

func ids(ds []*queue.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.MsgID)
	}
	slices.Sort(out)
	return out
}

// TestRemoveActive: the matching deliveries leave every slot's queue, the
// rest keep their order, the counters and the ready index follow, and a
// removed delivery can be queued again.
func TestRemoveActive(t *testing.T) {
	t.Parallel()
	q := queue.New()
	p0 := q.Push(mk("a", "x.test", 0, 0, 1))
	q.Push(mk("b", "x.test", 0, 0, 2))
	q.Push(mk("c", "x.test", 0, 0, 3))
	p1 := q.Push(mk("a", "x.test", 1, 0, 1))
	q.Push(mk("d", "y.test", 0, 0, 1))

	dr, _ := q.Lookup("x.test")
	got := dr.RemoveActive(func(d *queue.Delivery) bool { return d.MsgID == "a" || d.MsgID == "c" }, nil)
	if !slices.Equal(ids(got), []string{"a", "a", "c"}) {
		t.Fatalf("removed %v, want a a c", ids(got))
	}
	if st := q.Stats(); st.Active != 2 || st.ReadyPairs != 2 {
		t.Fatalf("stats %+v, want 2 active on 2 ready pairs (x/0, y/0)", st)
	}
	if p1.Len() != 0 || dr.Queued() != 1 {
		t.Fatalf("slot 1 holds %d, record %d; want 0 and 1", p1.Len(), dr.Queued())
	}
	if rest := popAll(p0); !slices.Equal(rest, []string{"b"}) {
		t.Fatalf("slot 0 left %v, want [b]", rest)
	}
	q.Push(got[0]) // owned by the caller now: queueing it again is allowed
	if none := dr.RemoveActive(func(*queue.Delivery) bool { return false }, nil); len(none) != 0 {
		t.Fatalf("a match of nothing removed %v", ids(none))
	}
}

// TestRemoveDelayed: the matching deliveries leave the delayed queue at
// once, whatever their time; the others stay due when they were.
func TestRemoveDelayed(t *testing.T) {
	t.Parallel()
	q := queue.New()
	now := time.Unix(1000, 0)
	q.Delay(mk("a", "x.test", 0, 0, 1), now.Add(time.Hour))
	q.Delay(mk("b", "y.test", 0, 0, 1), now.Add(time.Minute))
	q.Delay(mk("c", "x.test", 1, 0, 1), now.Add(2*time.Hour))
	got := q.RemoveDelayed(func(d *queue.Delivery) bool { return d.Domain == "x.test" }, nil)
	if !slices.Equal(ids(got), []string{"a", "c"}) {
		t.Fatalf("removed %v, want a c", ids(got))
	}
	if st := q.Stats(); st.Delayed != 1 {
		t.Fatalf("%d delayed, want 1", st.Delayed)
	}
	if due := q.Due(now.Add(time.Minute), 10, nil); !slices.Equal(ids(due), []string{"b"}) {
		t.Fatalf("due %v, want b", ids(due))
	}
	q.Push(got[0])
	// Delay makes the records (their delayed counts live there).
	if len(q.Domains(nil)) != 2 {
		t.Fatalf("domains %d, want 2 (x.test and y.test, made by Delay)", len(q.Domains(nil)))
	}
	x, _ := q.Lookup("x.test")
	if x.Delayed() != 0 || x.Pair(0).Delayed() != 0 || x.Pair(1).Delayed() != 0 {
		t.Fatalf("x.test delayed %d after its deliveries were removed", x.Delayed())
	}
}
