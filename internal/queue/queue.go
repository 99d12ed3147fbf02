// Package queue owns mtad's in-memory queues: the domain records, the active
// queue of every domain/binding pair, the delayed queue, and the index of
// pairs that have work. It is a set of data structures and never starts a
// goroutine, reads a clock, touches the disk or the network: the scheduler
// drives it, the connection pool drains it.
//
// # Shape
//
// A Delivery is the part of a spooled message bound for one recipient domain.
// It carries metadata only (ids, addresses, priority, times, size) — never a
// body — so that a million queued deliveries fit in memory (DESIGN invariant
// 5; BenchmarkHeapPerDelivery measures the cost).
//
// Each DomainRecord holds one Pair per binding slot, made lazily. A Pair's
// active queue is a huandu/skiplist ordered by (priority, arrival, seq): lower
// priority values go first, then older messages, then the order deliveries
// were first queued. Deliveries waiting for a later attempt sit in one delayed
// queue ordered by (next attempt, seq); Due hands back those whose time has
// come and the caller pushes (or expires) them.
//
// The ready index is the set of pairs whose active queue is non-empty. A pair
// joins it when its queue goes from empty to non-empty and leaves it when the
// queue empties, so a maintenance tick walks Ready() and costs in proportion
// to the pairs with work, not to every domain ever seen (invariant 6).
//
// # Locking
//
// Every structure here is safe for concurrent use. The locks, in the only
// order in which they are ever nested:
//
//  1. Queues.domainsMu — the map of domain records (held alone by Domain,
//     and around a whole Sweep).
//  2. DomainRecord.mu — that record's pairs, their skiplists, its
//     connection counters (writes), its sweep marks.
//  3. Queues.readyMu — the ready index (taken under DomainRecord.mu when a
//     pair's queue empties or fills, so membership always matches emptiness).
//
// Queues.delayMu guards the delayed queue and is a leaf: nothing else is
// ever held with it. Counters read by Stats and the connection accessors are
// atomics and need no lock.
//
// # Forgetting domains
//
// Sweep drops domain records that were idle (no active or delayed
// deliveries, no open or connecting connections, not suspended) at the previous Sweep and were not
// touched since, so memory follows the domains in use, not every domain ever
// seen. A dropped record is marked dead: Push re-resolves the domain name and
// TryConnect refuses, so a stale pointer can neither lose a delivery nor
// push a connection count past a cap.
package queue

import (
	"maps"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/huandu/skiplist"
)

// Rcpt is one envelope recipient of a delivery.
type Rcpt struct {
	Idx    int32  // index into spool.Message.Recipients
	Notify uint8  // the RFC 3461 NOTIFY set (a spool.Notify); 0 = not given
	Addr   string // the recipient address as given
	ORcpt  string // RFC 3461 ORCPT, "addr-type;address"; "" = not given
}

// Delivery is the part of a message bound for one recipient domain, queued
// on one binding slot. Its fields must not change while it is in a queue
// (they are the queue's sort keys); Pop and Due hand it back to the caller,
// who may then change it and queue it again. A Delivery is in at most one
// queue at a time: pushing or delaying it twice panics.
type Delivery struct {
	MsgID  string // queue id of the message
	Domain string // recipient domain; Push replaces it with the record's lower-case name
	Sender string // envelope sender; "" is the null sender
	Rcpts  []Rcpt

	Arrival int64 // unix nanos the message was received
	Expires int64 // unix nanos after which it expires
	Size    int64 // body size in bytes

	seq uint64 // first-queued order, the last sort key; assigned once
	at  int64  // next attempt, unix nanos, while delayed

	Priority int32 // lower is sooner; 0 is normal
	Attempts int32 // delivery attempts made so far
	Slot     int32 // binding slot

	queued uint32 // 1 while in a queue; atomic, catches double queueing

	// The injecting client's declarations, passed on to the next hop:
	// SMTPUTF8, BODY=8BITMIME and RFC 3461's RET (a spool.Ret). They fit
	// in the struct's padding.
	UTF8     bool
	EightBit bool
	Ret      uint8
	EnvID    string // RFC 3461 ENVID, "" = not given
}

// Seq reports the order in which the delivery was first queued (0 before
// that). It breaks ties between equal priority and arrival.
func (d *Delivery) Seq() uint64 { return d.seq }

// NextAttempt reports when the delivery was last scheduled by Delay.
func (d *Delivery) NextAttempt() time.Time { return time.Unix(0, d.at) }

func (d *Delivery) markQueued() {
	if !atomic.CompareAndSwapUint32(&d.queued, 0, 1) {
		panic("queue: delivery " + d.MsgID + " to " + d.Domain + " is already queued")
	}
}

func (d *Delivery) markUnqueued() { atomic.StoreUint32(&d.queued, 0) }

// Stats is a snapshot of the queues' sizes. Its JSON keys are snake_case,
// as every key of the admin API (/api/v1/status shows it).
type Stats struct {
	Active     int `json:"active"`      // deliveries in active queues
	Delayed    int `json:"delayed"`     // deliveries in the delayed queue
	Domains    int `json:"domains"`     // domain records held
	ReadyPairs int `json:"ready_pairs"` // pairs with at least one active delivery
}

// Queues is the set of domain records, their active queues, the delayed
// queue and the ready index. The zero value is not usable; call New.
type Queues struct {
	seq    atomic.Uint64 // source of Delivery.seq
	seeds  atomic.Uint64 // seeds for the skiplists' level generators
	active atomic.Int64

	// Empty lists copied by newList; never modified after New.
	activeTmpl, delayedTmpl *skiplist.SkipList

	domainsMu sync.Mutex
	domains   map[string]*DomainRecord
	// domainsPeak is the most records domains held since it was last
	// made: a Go map keeps the buckets of its largest size.
	domainsPeak int

	readyMu sync.Mutex
	ready   []*Pair // unordered; Pair.readyIdx is each pair's position

	delayMu sync.Mutex
	delayed *skiplist.SkipList // of *Delivery by (at, seq)
}

// New returns empty queues.
func New() *Queues {
	q := &Queues{
		domains:     make(map[string]*DomainRecord),
		activeTmpl:  newTemplate(activeOrder{}),
		delayedTmpl: newTemplate(delayedOrder{}),
	}
	q.delayed = q.newList(q.delayedTmpl)
	return q
}

// listMaxLevel caps the skiplists' height: 2^24 deliveries on one pair
// before lookups slow down, and 192 bytes of header per list instead of 384.
const listMaxLevel = 24

// newList makes an empty skiplist cheaply. skiplist.New gives every list its
// own math/rand source: ≈5 KB allocated and ≈10 µs of seeding, which with
// hundreds of thousands of pairs would cost more than the deliveries
// themselves. So each order has one template made by skiplist.New, and a new
// list is a copy of the (always empty) template given fresh levels by Init
// and an eight-byte splitmix source. The lists are only used under our
// locks, so the source needs no locking of its own.
func (q *Queues) newList(tmpl *skiplist.SkipList) *skiplist.SkipList {
	l := new(skiplist.SkipList)
	*l = *tmpl
	l.Init()
	s := splitmix(q.seeds.Add(0x9e3779b97f4a7c15))
	l.SetRandSource(&s)
	return l
}

func newTemplate(c skiplist.Comparable) *skiplist.SkipList {
	l := skiplist.New(c)
	l.SetMaxLevel(listMaxLevel)
	return l
}

// Domain returns the record for the domain name (compared without case),
// creating it when it does not exist.
func (q *Queues) Domain(name string) *DomainRecord {
	name = strings.ToLower(name)
	q.domainsMu.Lock()
	defer q.domainsMu.Unlock()
	dr := q.domains[name]
	if dr == nil {
		dr = &DomainRecord{Name: name, q: q}
		q.domains[name] = dr
		q.domainsPeak = max(q.domainsPeak, len(q.domains))
	}
	return dr
}

// Lookup returns the record for the domain name if one is held.
func (q *Queues) Lookup(name string) (*DomainRecord, bool) {
	name = strings.ToLower(name)
	q.domainsMu.Lock()
	defer q.domainsMu.Unlock()
	dr, ok := q.domains[name]
	return dr, ok
}

// maxSweptRetries bounds Push's retry when the record it found was swept in
// the instant between lookup and lock. A fresh record needs two Sweeps to go,
// so one retry almost always suffices.
const maxSweptRetries = 16

// Push adds d to the active queue of (d.Domain, d.Slot) and returns that
// pair; the pair joins the ready index if it had no work. d.Domain is
// replaced by the record's name so that deliveries share one string. It
// panics if d is already queued or d.Slot is negative.
func (q *Queues) Push(d *Delivery) *Pair {
	if d.Slot < 0 {
		panic("queue: negative binding slot")
	}
	d.markQueued()
	if d.seq == 0 {
		d.seq = q.seq.Add(1)
	}
	for range maxSweptRetries {
		dr := q.Domain(d.Domain)
		dr.mu.Lock()
		if dr.dead {
			dr.mu.Unlock()
			continue
		}
		p := dr.pairLocked(int(d.Slot))
		d.Domain = dr.Name
		if p.list == nil {
			p.list = q.newList(q.activeTmpl)
		}
		p.list.Set(d, nil)
		dr.queued++
		dr.touched = true
		if p.list.Len() == 1 {
			q.addReady(p)
		}
		dr.mu.Unlock()
		q.active.Add(1)
		return p
	}
	panic("queue: domain record " + d.Domain + " swept repeatedly during Push")
}

// Delay puts d in the delayed queue until at. d.Domain is replaced by the
// record's name, as Push does. It panics if d is already queued or d.Slot
// is negative.
func (q *Queues) Delay(d *Delivery, at time.Time) {
	if d.Slot < 0 {
		panic("queue: negative binding slot")
	}
	d.markQueued()
	if d.seq == 0 {
		d.seq = q.seq.Add(1)
	}
	d.at = at.UnixNano()
	q.countDelayed(d, 1) // before the delayed queue's lock: it is a leaf
	q.delayMu.Lock()
	q.delayed.Set(d, nil)
	q.delayMu.Unlock()
}

// Due removes from the delayed queue up to max deliveries whose next attempt
// is at or before now, earliest first, and appends them to buf. The caller
// owns them: it pushes them to their active queue or expires them. max ≤ 0
// returns buf unchanged.
func (q *Queues) Due(now time.Time, max int, buf []*Delivery) []*Delivery {
	t := now.UnixNano()
	start := len(buf)
	defer func() { q.uncountDelayed(buf[start:]) }() // after delayMu is released
	q.delayMu.Lock()
	defer q.delayMu.Unlock()
	for n := 0; n < max; n++ {
		e := q.delayed.Front()
		if e == nil {
			break
		}
		d := e.Key().(*Delivery)
		if d.at > t {
			break
		}
		q.delayed.RemoveFront()
		d.markUnqueued()
		buf = append(buf, d)
	}
	return buf
}

// NextDue reports the earliest next attempt in the delayed queue, and false
// when it is empty.
func (q *Queues) NextDue() (time.Time, bool) {
	q.delayMu.Lock()
	defer q.delayMu.Unlock()
	e := q.delayed.Front()
	if e == nil {
		return time.Time{}, false
	}
	return time.Unix(0, e.Key().(*Delivery).at), true
}

// Ready appends to buf[:0] the pairs that have active work and returns it.
// It is a snapshot: a pair may have been drained by the time the caller
// looks at it, so callers check Len or Peek. The order is unspecified.
func (q *Queues) Ready(buf []*Pair) []*Pair {
	q.readyMu.Lock()
	defer q.readyMu.Unlock()
	return append(buf[:0], q.ready...)
}

// Stats returns the current sizes.
func (q *Queues) Stats() Stats {
	var s Stats
	s.Active = int(q.active.Load())
	q.delayMu.Lock()
	s.Delayed = q.delayed.Len()
	q.delayMu.Unlock()
	q.domainsMu.Lock()
	s.Domains = len(q.domains)
	q.domainsMu.Unlock()
	q.readyMu.Lock()
	s.ReadyPairs = len(q.ready)
	q.readyMu.Unlock()
	return s
}

// Sweep forgets the domain records that were idle at the previous Sweep and
// have not been touched (pushed to, popped from, connected to, suspended)
// since, and marks the idle ones it keeps; it returns how many it dropped.
// A record is idle when its queues are empty and none of its deliveries is
// delayed (view.go keeps their count on it), it has no open or connecting
// connections and it is not suspended. Calling Sweep every d therefore drops
// records idle for between d and 2d. It walks every record under the domain
// map's lock, so call it seldom (minutes), not every tick.
func (q *Queues) Sweep(now time.Time) int {
	q.domainsMu.Lock()
	defer q.domainsMu.Unlock()
	dropped := 0
	for name, dr := range q.domains {
		dr.mu.Lock()
		idle := dr.queued == 0 && dr.delayed == 0 && dr.connecting.Load() == 0 && dr.open.Load() == 0 && !dr.Suspended(now)
		switch {
		case !idle:
			dr.idleMarked = false
		case dr.idleMarked && !dr.touched:
			dr.dead = true
			delete(q.domains, name)
			dropped++
		default:
			dr.idleMarked = true
		}
		dr.touched = false
		dr.mu.Unlock()
	}
	// A map keeps the buckets of its largest size, so 100,000 domains
	// that all bounced left ≈4 MiB behind them once forgotten
	// (scheduler/BenchmarkScaleBounceDomains, pprof heap). When the map
	// holds under a quarter of its peak, the records left move to a map
	// of their size: a copy of what survived, paid for by the growth.
	if dropped > 0 && len(q.domains) < q.domainsPeak/4 {
		m := make(map[string]*DomainRecord, len(q.domains))
		maps.Copy(m, q.domains)
		q.domains, q.domainsPeak = m, len(m)
	}
	return dropped
}

// addReady and removeReady are called with the pair's DomainRecord.mu held.
func (q *Queues) addReady(p *Pair) {
	q.readyMu.Lock()
	if p.readyIdx < 0 {
		p.readyIdx = int32(len(q.ready))
		q.ready = append(q.ready, p)
	}
	q.readyMu.Unlock()
}

func (q *Queues) removeReady(p *Pair) {
	q.readyMu.Lock()
	if i := p.readyIdx; i >= 0 {
		last := len(q.ready) - 1
		q.ready[i] = q.ready[last]
		q.ready[i].readyIdx = i
		q.ready[last] = nil
		q.ready = q.ready[:last]
		p.readyIdx = -1
	}
	q.readyMu.Unlock()
}

// activeOrder sorts an active queue by (priority, arrival, seq). The score
// (priority) lets the skiplist skip most key comparisons.
type activeOrder struct{}

func (activeOrder) Compare(lhs, rhs any) int {
	a, b := lhs.(*Delivery), rhs.(*Delivery)
	switch {
	case a.Priority != b.Priority:
		return cmp3(int64(a.Priority), int64(b.Priority))
	case a.Arrival != b.Arrival:
		return cmp3(a.Arrival, b.Arrival)
	}
	return cmp3u(a.seq, b.seq)
}

func (activeOrder) CalcScore(key any) float64 { return float64(key.(*Delivery).Priority) }

// delayedOrder sorts the delayed queue by (next attempt, seq). Converting
// unix nanos to float64 rounds but never reorders, which is all a score needs.
type delayedOrder struct{}

func (delayedOrder) Compare(lhs, rhs any) int {
	a, b := lhs.(*Delivery), rhs.(*Delivery)
	if a.at != b.at {
		return cmp3(a.at, b.at)
	}
	return cmp3u(a.seq, b.seq)
}

func (delayedOrder) CalcScore(key any) float64 { return float64(key.(*Delivery).at) }

func cmp3(a, b int64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func cmp3u(a, b uint64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

// splitmix is splitmix64: eight bytes of state, good enough to pick skiplist
// levels.
type splitmix uint64

var _ rand.Source = (*splitmix)(nil)

func (s *splitmix) Int63() int64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return int64((z ^ (z >> 31)) >> 1)
}

func (s *splitmix) Seed(seed int64) { *s = splitmix(seed) }
