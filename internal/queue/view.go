package queue

// What the operator's views (scheduler/views.go, GET /api/v1/queues and
// /api/v1/messages) read of the queues. The delayed queue is one list for
// every domain, so how much of it is a pair's is counted as deliveries
// enter and leave it, not found by a walk: a view of 100,000 domains must
// not walk 500,000 delayed deliveries. Each Delay, Due and RemoveDelayed
// pays one map lookup and one record lock per delivery for it
// (BenchmarkEndToEnd before and after, in the branch's report).
//
// A record with delayed deliveries is not idle for Sweep: its counts must
// stay on the record the deliveries will come back to.

import "time"

// countDelayed adds n (±1) to the delayed count of d's pair. No queue lock
// may be held: it takes the domain map's and the record's.
func (q *Queues) countDelayed(d *Delivery, n int32) {
	for range maxSweptRetries {
		dr := q.Domain(d.Domain)
		dr.mu.Lock()
		if dr.dead {
			dr.mu.Unlock()
			continue
		}
		d.Domain = dr.Name
		p := dr.pairLocked(int(d.Slot))
		dr.delayed += int(n)
		c := p.delayed.Add(n)
		switch {
		case c <= 0:
			p.delayedOldest.Store(0)
		case n > 0:
			if o := p.delayedOldest.Load(); o == 0 || d.Arrival < o {
				p.delayedOldest.Store(d.Arrival)
			}
		}
		dr.touched = true
		dr.mu.Unlock()
		return
	}
	panic("queue: domain record " + d.Domain + " swept repeatedly while counting delayed")
}

// uncountDelayed takes deliveries just removed from the delayed queue out
// of their pairs' counts.
func (q *Queues) uncountDelayed(ds []*Delivery) {
	for _, d := range ds {
		q.countDelayed(d, -1)
	}
}

// Delayed reports the pair's deliveries in the delayed queue.
func (p *Pair) Delayed() int { return int(p.delayed.Load()) }

// DelayedOldest reports the earliest arrival among the deliveries delayed
// on the pair since its delayed count was last zero, and false when none
// is delayed. It is kept as deliveries are delayed, not found by a walk,
// so once the oldest has left it may be older than what is left: the
// view's oldest age errs towards alarm until the pair's delayed mail has
// all gone back to the active queue once.
func (p *Pair) DelayedOldest() (time.Time, bool) {
	n := p.delayedOldest.Load()
	if n == 0 || p.delayed.Load() <= 0 {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// Delayed reports the domain's deliveries in the delayed queue, all slots.
func (dr *DomainRecord) Delayed() int {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	return dr.delayed
}

// WalkActive calls fn with each delivery in the record's active queues,
// slot by slot, each queue in its order, until fn returns false. fn runs
// under the record's lock: it must only read the delivery and must not
// call into the queues. It is for operators' queries, never the delivery
// path.
func (dr *DomainRecord) WalkActive(fn func(*Delivery) bool) {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	for _, p := range dr.pairs {
		if p == nil || p.list == nil {
			continue
		}
		for e := p.list.Front(); e != nil; e = e.Next() {
			if !fn(e.Key().(*Delivery)) {
				return
			}
		}
	}
}

// WalkDelayed calls fn with each delivery in the delayed queue, earliest
// next attempt first, until fn returns false. fn runs under the delayed
// queue's lock (a leaf): it must only read the delivery and must not call
// into the queues. Every Delay and Due waits while it runs, so it is for
// operators' queries, never the delivery path.
func (q *Queues) WalkDelayed(fn func(*Delivery) bool) {
	q.delayMu.Lock()
	defer q.delayMu.Unlock()
	for e := q.delayed.Front(); e != nil; e = e.Next() {
		if !fn(e.Key().(*Delivery)) {
			return
		}
	}
}
