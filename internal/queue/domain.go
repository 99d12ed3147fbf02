package queue

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/huandu/skiplist"
)

// DomainRecord is what the queues know about one destination domain: its
// pairs (one per binding slot, made on first use), its connection counters
// and its suspension. Get one from Queues.Domain; it is never copied.
type DomainRecord struct {
	// Name is the lower-case domain name. It never changes.
	Name string

	q *Queues

	mu         sync.Mutex
	pairs      []*Pair // by binding slot; nil entries not made yet
	queued     int     // deliveries in this record's active queues
	delayed    int     // deliveries of this record in the delayed queue (view.go)
	touched    bool    // activity since the last Sweep
	idleMarked bool    // idle at the last Sweep
	dead       bool    // dropped by Sweep; Push goes elsewhere, TryConnect refuses

	// Sums over the pairs; written under mu, read lock-free.
	connecting atomic.Int32
	open       atomic.Int32

	suspendedUntil atomic.Int64 // unix nanos; 0 is not suspended

	ext      atomic.Pointer[any] // the scheduler's own per-domain state (Ext)
	resolved atomic.Int64        // Resolved's value
}

// Resolved returns the time (unix nanoseconds) SetResolved last recorded,
// 0 for none: when the scheduler last resolved the domain's MX set. It
// lives here rather than in Ext's state because the tick reads it for
// every ready pair, next to the record's lock it takes anyway.
func (dr *DomainRecord) Resolved() int64 { return dr.resolved.Load() }

// SetResolved records when the domain's MX set was resolved.
func (dr *DomainRecord) SetResolved(unixNano int64) { dr.resolved.Store(unixNano) }

// Ext returns what SetExt stored, or nil. The queues never look at it: it
// lets a higher layer keep per-domain state (resolved MX set, shaping) that
// lives and is forgotten with the record.
func (dr *DomainRecord) Ext() any {
	if p := dr.ext.Load(); p != nil {
		return *p
	}
	return nil
}

// InitExt stores v unless something is stored already, and returns what is
// stored: the first caller's v wins.
func (dr *DomainRecord) InitExt(v any) any {
	if dr.ext.CompareAndSwap(nil, &v) {
		return v
	}
	return *dr.ext.Load()
}

// Pair returns the domain/binding pair for the slot, creating it when it
// does not exist. It panics if slot is negative.
func (dr *DomainRecord) Pair(slot int) *Pair {
	if slot < 0 {
		panic("queue: negative binding slot")
	}
	dr.mu.Lock()
	defer dr.mu.Unlock()
	return dr.pairLocked(slot)
}

func (dr *DomainRecord) pairLocked(slot int) *Pair {
	for len(dr.pairs) <= slot {
		dr.pairs = append(dr.pairs, nil)
	}
	p := dr.pairs[slot]
	if p == nil {
		p = &Pair{dr: dr, slot: int32(slot), readyIdx: -1}
		dr.pairs[slot] = p
	}
	return p
}

// Pairs appends to buf[:0] the pairs made so far, in slot order.
func (dr *DomainRecord) Pairs(buf []*Pair) []*Pair {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	buf = buf[:0]
	for _, p := range dr.pairs {
		if p != nil {
			buf = append(buf, p)
		}
	}
	return buf
}

// Queued reports the deliveries in the domain's active queues, all slots.
func (dr *DomainRecord) Queued() int {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	return dr.queued
}

// Connecting reports the domain's connections being set up, all slots.
func (dr *DomainRecord) Connecting() int { return int(dr.connecting.Load()) }

// Open reports the domain's established connections, all slots.
func (dr *DomainRecord) Open() int { return int(dr.open.Load()) }

// SuspendUntil suspends deliveries to the domain until t (a zero t lifts the
// suspension). The queues only record it; the scheduler honours it.
func (dr *DomainRecord) SuspendUntil(t time.Time) {
	var n int64
	if !t.IsZero() {
		n = t.UnixNano()
	}
	dr.suspendedUntil.Store(n)
	dr.mu.Lock()
	dr.touched = true
	dr.mu.Unlock()
}

// SuspendedUntil reports the end of the suspension, zero when none was set.
func (dr *DomainRecord) SuspendedUntil() time.Time {
	n := dr.suspendedUntil.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Suspended reports whether the domain is suspended at now.
func (dr *DomainRecord) Suspended(now time.Time) bool {
	n := dr.suspendedUntil.Load()
	return n != 0 && now.UnixNano() < n
}

// Pair is one domain/binding pair: the active queue of deliveries to a
// domain from one binding slot, and the connections serving it. Its queue
// methods lock the domain record; its counters are atomics.
type Pair struct {
	dr       *DomainRecord
	list     *skiplist.SkipList // of *Delivery by (priority, arrival, seq); under dr.mu, nil until first Push
	readyIdx int32              // position in Queues.ready, -1 when absent; under Queues.readyMu
	slot     int32

	connecting atomic.Int32
	open       atomic.Int32

	// The pair's share of the delayed queue (view.go), written under
	// dr.mu, read lock-free by the operator's views.
	delayed       atomic.Int32
	delayedOldest atomic.Int64 // least Arrival delayed since delayed was last 0; 0 = none
}

// Domain returns the pair's domain record.
func (p *Pair) Domain() *DomainRecord { return p.dr }

// Slot returns the pair's binding slot.
func (p *Pair) Slot() int { return int(p.slot) }

// Len reports the deliveries in the pair's active queue.
func (p *Pair) Len() int {
	p.dr.mu.Lock()
	defer p.dr.mu.Unlock()
	if p.list == nil {
		return 0
	}
	return p.list.Len()
}

// Head returns the delivery at the head of the active queue (nil when it
// is empty) and the queue's length, under one lock: the maintenance tick
// asks both of every ready pair, and at 100,000 pairs each extra lock is a
// cache miss on a domain record.
func (p *Pair) Head() (*Delivery, int) {
	p.dr.mu.Lock()
	defer p.dr.mu.Unlock()
	if p.list == nil {
		return nil, 0
	}
	if e := p.list.Front(); e != nil {
		return e.Key().(*Delivery), p.list.Len()
	}
	return nil, 0
}

// Peek returns the delivery at the head of the active queue without
// removing it, or nil. The delivery still belongs to the queue: read it, do
// not change it (another goroutine may pop it at any moment).
func (p *Pair) Peek() *Delivery {
	p.dr.mu.Lock()
	defer p.dr.mu.Unlock()
	if p.list == nil {
		return nil
	}
	if e := p.list.Front(); e != nil {
		return e.Key().(*Delivery)
	}
	return nil
}

// Pop removes and returns the delivery at the head of the active queue, or
// nil when it is empty. When the queue empties the pair leaves the ready
// index.
func (p *Pair) Pop() *Delivery {
	dr := p.dr
	dr.mu.Lock()
	defer dr.mu.Unlock()
	if p.list == nil {
		return nil
	}
	e := p.list.RemoveFront()
	if e == nil {
		return nil
	}
	d := e.Key().(*Delivery)
	d.markUnqueued()
	dr.queued--
	dr.touched = true
	if p.list.Len() == 0 {
		dr.q.removeReady(p)
	}
	dr.q.active.Add(-1)
	return d
}

// Connecting reports the pair's connections being set up.
func (p *Pair) Connecting() int { return int(p.connecting.Load()) }

// Open reports the pair's established connections.
func (p *Pair) Open() int { return int(p.open.Load()) }

// TryConnect reserves a connecting slot for a new connection on the pair if,
// counting open and connecting connections, the pair stays within pairMax
// and the domain within domainMax (≤ 0 means no limit). The check and the
// reservation are one step, so concurrent callers never pass a cap. It
// refuses on a record dropped by Sweep. Every true must be followed by
// exactly one Connected or ConnectFailed.
func (p *Pair) TryConnect(pairMax, domainMax int) bool {
	dr := p.dr
	dr.mu.Lock()
	defer dr.mu.Unlock()
	if dr.dead {
		return false
	}
	if pairMax > 0 && int(p.connecting.Load()+p.open.Load()) >= pairMax {
		return false
	}
	if domainMax > 0 && int(dr.connecting.Load()+dr.open.Load()) >= domainMax {
		return false
	}
	p.connecting.Add(1)
	dr.connecting.Add(1)
	dr.touched = true
	return true
}

// Connected turns a connecting slot into an open connection. Every
// Connected must be followed by exactly one Closed.
func (p *Pair) Connected() {
	p.move(&p.connecting, &p.dr.connecting, &p.open, &p.dr.open, "Connected without TryConnect")
}

// ConnectFailed releases a connecting slot whose connection was not made.
func (p *Pair) ConnectFailed() {
	p.move(&p.connecting, &p.dr.connecting, nil, nil, "ConnectFailed without TryConnect")
}

// Closed releases an open connection's slot.
func (p *Pair) Closed() {
	p.move(&p.open, &p.dr.open, nil, nil, "Closed without Connected")
}

// move takes one from a pair counter and its domain sum and, when to is
// non-nil, adds one to another such couple; it panics on underflow, which would
// otherwise let a later TryConnect pass a cap.
func (p *Pair) move(from, dfrom, to, dto *atomic.Int32, misuse string) {
	dr := p.dr
	dr.mu.Lock()
	defer dr.mu.Unlock()
	if from.Load() <= 0 {
		panic("queue: " + misuse + " on " + dr.Name)
	}
	from.Add(-1)
	dfrom.Add(-1)
	if to != nil {
		to.Add(1)
		dto.Add(1)
	}
	dr.touched = true
}
