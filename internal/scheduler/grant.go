package scheduler

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
)

// grantor is the one grantor of connection slots (DESIGN.md): the default
// maintenance action opens connections through it (it is the
// hooks.Opener), the pool asks it whether a session should give up its
// slot and tells it when a slot is free (it is the connpool.Grantor), and
// the pool only dials under the hard caps.
//
// Under max − reserve it keeps two queues of pairs that were refused for
// want of room:
//
//   - first: pairs with work and no connection at all, in the order they
//     were refused. While one waits, no pair that has a connection gets
//     another, a session of a pair that can spare one ends after its
//     transaction, and every slot that frees goes to the head of first.
//     So no domain waits behind busy ones.
//   - more: pairs that have connections and want more. A freed slot goes
//     to its head only when first is empty; a pair refused again goes to
//     its tail, so when more pairs have work than there are slots they
//     take turns (each session also ends after the pair's
//     max_deliveries_per_connection).
//
// A pair stays queued while it keeps being refused: one that was not
// refused again during a tick (held by a hook, suspended, throttled, its
// work gone) is dropped at the next, so it cannot block the others.
type grantor struct {
	s    *Scheduler
	pool *connpool.Pool

	mu    sync.Mutex
	first list.List // of *waiter
	more  list.List // of *waiter
	at    map[*queue.Pair]*waiter
	tick  uint64 // Tick count, for dropping stale waiters
	// yielding counts, per pair, the sessions ending to give their slot to
	// a pair in first.
	yielding map[*queue.Pair]int
	// nfirst is first.Len(), read without mu before every transaction.
	nfirst atomic.Int32

	// Connections per shaping budget key (a site's or a provider's from
	// one binding), and the keys each pair's connections count under
	// (kept until they close, even if a reload moves the pair).
	byKey  map[string]int
	counts map[*queue.Pair]*keyCount
	// leaving counts, per key, the sessions told to end because the
	// key's cap was lowered below its connections.
	leaving map[string]int

	// observe, when set before the scheduler runs (tests), sees each slot
	// taken, in the order taken.
	observe func(*queue.Pair)
	// observeHand, likewise, sees each pair of first handed a freed slot,
	// in hand-off order (under mu: the order the queue gives, which the
	// sessions' own Opened calls may not keep when the machine is busy).
	observeHand func(*queue.Pair)
}

// keyCount is a pair's connections counted under its budget keys.
type keyCount struct {
	site, prov, dom string // "" for none
	n               int
	leaving         int // of n, sessions ending for a lowered cap
}

// keys are the budget keys the pair's connections count under.
func (c *keyCount) keys() []string {
	ks := make([]string, 0, 3)
	for _, k := range [...]string{c.site, c.prov, c.dom} {
		if k != "" {
			ks = append(ks, k)
		}
	}
	return ks
}

// waiter is a pair in first or more.
type waiter struct {
	pair    *queue.Pair
	el      *list.Element
	inFirst bool
	refused uint64 // bumped by every refusal
	tick    uint64 // the tick of the last refusal
	// handed: a freed slot was offered to it and its maintenance has not
	// answered yet, so the next freed slot goes to the next pair.
	handed bool
}

var (
	_ hooks.Opener     = (*grantor)(nil)
	_ connpool.Grantor = (*grantor)(nil)
)

func newGrantor(s *Scheduler) *grantor {
	return &grantor{s: s, at: make(map[*queue.Pair]*waiter), yielding: make(map[*queue.Pair]int),
		byKey: make(map[string]int), counts: make(map[*queue.Pair]*keyCount), leaving: make(map[string]int)}
}

func conns(p *queue.Pair) int { return p.Open() + p.Connecting() }

// Max is the global cap.
func (g *grantor) Max() int { return g.pool.Max() }

// Total is the connections open or opening.
func (g *grantor) Total() int { return g.pool.Total() }

// Open opens up to n connections for the pair under the hard caps, unless
// a pair without any connection waits for a slot and this one has one
// already: it then waits too, behind it.
func (g *grantor) Open(dr *queue.DomainRecord, slot int, n int) int {
	if n <= 0 {
		return 0
	}
	pair := dr.Pair(slot)
	ps := g.s.shapeOf(pair)
	var l limits
	if ps != nil {
		if n, l = g.shapedRoom(pair, ps, n); n <= 0 {
			return 0
		}
	}
	if g.nfirst.Load() > 0 && g.behind(pair) {
		// Pairs wait for their first connection: this one gets in line
		// (a second connection, or a first one jumping the queue at a
		// tick, would take a slot from the head).
		g.Wait(dr, slot, n)
		return 0
	}
	leased := g.s.cl != nil && g.s.cl.shared && ps != nil
	if leased {
		// Across the nodes: a lease under each capped key per
		// connection (cluster.go).
		if n = g.takeLeases(pair, ps, l, n); n <= 0 {
			return 0
		}
	}
	if ps != nil {
		want := n
		n = g.connTokens(pair, ps, l, n)
		if leased && n < want {
			g.dropPending(pair, want-n)
		}
		if n <= 0 {
			return 0
		}
	}
	opened := g.pool.Open(dr, slot, n)
	if leased && opened < n {
		g.dropPending(pair, n-opened)
	}
	g.mu.Lock()
	if w := g.at[pair]; w != nil && (opened == n || w.inFirst && opened > 0) {
		g.removeLocked(w)
	}
	g.mu.Unlock()
	if opened < n && g.pool.Total() >= g.pool.Max() {
		// The hard cap (a hook spending the reserve got there first).
		g.Wait(dr, slot, n-opened)
	}
	return opened
}

// held reports whether the pair's shaping keeps it from a new connection
// now whatever the room: a suspension, an empty message budget, or a
// connection cap of its site, domain or provider already reached.
func (g *grantor) held(ps *pairShape) bool {
	now := g.s.clock.Now()
	if _, ok := g.s.suspended(ps, now); ok {
		return true
	}
	l := g.s.limitsOf(ps, now)
	if ok, _ := g.s.msgReady(ps, l, now); !ok {
		return true
	}
	return g.capRoom(ps, l, 1) <= 0
}

// capRoom is how many of n connections the pair's connection caps (its
// site's, its domain's, its provider's) leave room for.
func (g *grantor) capRoom(ps *pairShape, l limits, n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.maxConns > 0 {
		n = min(n, l.maxConns-g.byKey[ps.siteKey])
	}
	if ps.domKey != "" && l.domConns > 0 {
		n = min(n, l.domConns-g.byKey[ps.domKey])
	}
	if ps.provKey != "" && l.provConns > 0 {
		n = min(n, l.provConns-g.byKey[ps.provKey])
	}
	return n
}

// shapedRoom is how many of n connections the pair's shaping allows now:
// none while a suspension covers it or its message budget has no token
// (its maintenance is run again when the token is due), and within its
// connection caps. Connection-rate tokens are taken later, by connTokens,
// once the pair is sure to get its slots.
func (g *grantor) shapedRoom(pair *queue.Pair, ps *pairShape, n int) (int, limits) {
	now := g.s.clock.Now()
	if _, ok := g.s.suspended(ps, now); ok {
		return 0, limits{}
	}
	l := g.s.limitsOf(ps, now)
	if ok, next := g.s.msgReady(ps, l, now); !ok {
		g.s.wakeAt(pair, next)
		return 0, l
	}
	return g.capRoom(ps, l, n), l
}

// connTokens takes a connection-rate token (the site's and the domain's)
// for each of n connections and returns for how many it got one; short,
// the pair is woken when the next is due.
func (g *grantor) connTokens(pair *queue.Pair, ps *pairShape, l limits, n int) int {
	if l.connRate.Unlimited() && l.domConnRate.Unlimited() {
		return n
	}
	now := g.s.clock.Now()
	rates := [2]policy.Rate{l.connRate, l.domConnRate}
	for i := range n {
		if ok, next := g.s.budgets.TakeAll(ps.connKeys[:], rates[:], now); !ok {
			g.s.wakeAt(pair, next)
			return i
		}
	}
	return n
}

// Opened is connpool.Grantor's: a session of pair took a slot; it counts
// under the pair's budget keys until Released.
func (g *grantor) Opened(pair *queue.Pair) {
	if g.observe != nil {
		g.observe(pair)
	}
	if g.s.cl != nil {
		g.leasesOpened(pair)
	}
	ps := g.s.shapeOf(pair)
	if ps == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.counts[pair]
	if c == nil {
		c = &keyCount{site: ps.siteKey, prov: ps.provKey, dom: ps.domKey}
		g.counts[pair] = c
	}
	c.n++
	for _, k := range c.keys() {
		g.byKey[k]++
	}
}

// Admit is connpool.Grantor's: a token from the pair's message budgets
// (site and provider, from its binding), or how long until one is due.
func (g *grantor) Admit(pair *queue.Pair) time.Duration {
	ps := g.s.shapeOf(pair)
	if ps == nil {
		return 0
	}
	now := g.s.clock.Now()
	l := g.s.limitsOf(ps, now)
	if l.unlimited() {
		return 0
	}
	rates := l.rates()
	ok, next := g.s.budgets.TakeAll(ps.msgKeys[:], rates[:], now)
	if ok {
		return 0
	}
	g.s.wakeAt(pair, next) // in case the session gives up waiting
	return next.Sub(now)
}

// overCap reports whether a session of pair should end because a
// suspension now covers the pair, or a cap of its site, domain or provider
// was lowered below the connections under it (counting those already
// leaving); it counts the session as leaving. With a shared cluster the
// connections are the cluster's (leases, overCapShared), so the nodes
// together come down to the cap.
func (g *grantor) overCap(pair *queue.Pair) bool {
	ps := g.s.shapeOf(pair)
	if ps == nil {
		return false
	}
	now := g.s.clock.Now()
	if _, ok := g.s.suspended(ps, now); ok {
		return true
	}
	l := g.s.limitsOf(ps, now)
	g.mu.Lock()
	c := g.counts[pair]
	if c == nil {
		g.mu.Unlock()
		return false
	}
	caps := [3]keyCap{{c.site, l.maxConns}, {c.dom, l.domConns}, {c.prov, l.provConns}}
	g.mu.Unlock()
	var sh [3]sharedCount
	if cs := g.s.cl; cs != nil && cs.shared {
		// Round trips (at most one per key a second): not under g.mu.
		sh = cs.sharedCounts(caps)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c = g.counts[pair]; c == nil {
		return false
	}
	over := false
	for i, kc := range caps {
		if kc.key == "" || kc.cap <= 0 {
			continue
		}
		switch s := sh[i]; {
		case s.known:
			over = over || shedOne(kc.cap, s.total, s.mine, s.held, g.leaving[kc.key])
		case s.fallback:
			over = over || g.byKey[kc.key]-g.leaving[kc.key] > s.cap
		default:
			over = over || g.byKey[kc.key]-g.leaving[kc.key] > kc.cap
		}
	}
	if !over {
		return false
	}
	c.leaving++
	for _, k := range c.keys() {
		g.leaving[k]++
	}
	return true
}

// keyCap is a budget key and its connection cap (0: none).
type keyCap struct {
	key string
	cap int
}

// behind reports whether pair must wait behind a pair in first: it has a
// connection and another pair waits for its first, or it has none and is
// not in first itself.
func (g *grantor) behind(pair *queue.Pair) bool {
	if conns(pair) > 0 {
		return g.othersFirst(pair)
	}
	g.mu.Lock()
	_, queued := g.at[pair]
	g.mu.Unlock()
	return !queued && g.othersFirst(pair)
}

// othersFirst reports whether a pair other than pair, with work and no
// connection, is in first.
func (g *grantor) othersFirst(pair *queue.Pair) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for e := g.first.Front(); e != nil; {
		w := e.Value.(*waiter)
		e = e.Next()
		switch {
		case w.pair == pair:
		case w.pair.Len() == 0 || conns(w.pair) > 0:
			g.removeLocked(w) // its work is gone, or it has its connection
		default:
			return true
		}
	}
	return false
}

// Wait queues the pair, which wants n more connections and found no room:
// in first when it has none, else in more. Sessions idling on other
// pairs are told to QUIT so their slots come free.
func (g *grantor) Wait(dr *queue.DomainRecord, slot int, n int) {
	if n <= 0 {
		return
	}
	pair := dr.Pair(slot)
	if ps := g.s.shapeOf(pair); ps != nil && g.held(ps) {
		return // a slot would not help it now
	}
	zero := conns(pair) == 0
	g.mu.Lock()
	w := g.at[pair]
	if w != nil && w.inFirst != zero {
		g.removeLocked(w)
		w = nil
	}
	if w == nil {
		w = &waiter{pair: pair, inFirst: zero}
		if zero {
			w.el = g.first.PushBack(w)
			g.nfirst.Add(1)
		} else {
			w.el = g.more.PushBack(w)
		}
		g.at[pair] = w
	}
	w.refused++
	w.tick = g.tick
	g.mu.Unlock()
	g.pool.ReclaimIdle(pair, n)
}

func (g *grantor) removeLocked(w *waiter) {
	if w.inFirst {
		g.first.Remove(w.el)
		g.nfirst.Add(-1)
	} else {
		g.more.Remove(w.el)
	}
	delete(g.at, w.pair)
}

// Yield is connpool.Grantor's: a session of pair ends after its
// transaction when a pair in first waits and pair can spare the session
// (it keeps another one, or has no work left).
func (g *grantor) Yield(pair *queue.Pair) bool {
	if g.overCap(pair) || g.idleAtCap(pair) || g.fairYield(pair) {
		return true
	}
	if g.nfirst.Load() == 0 {
		return false
	}
	hasWork := pair.Len() > 0
	if hasWork && pair.Open() <= 1 {
		return false
	}
	if !g.othersFirst(pair) {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if hasWork && pair.Open()-g.yielding[pair] <= 1 {
		return false // its other sessions are leaving already
	}
	g.yielding[pair]++
	return true
}

// Released is connpool.Grantor's: a session of pair ended. Its slot goes
// to the head of first, else of more, through that pair's maintenance (so
// hooks and the default decide, under max − reserve).
func (g *grantor) Released(pair *queue.Pair) {
	if g.s.cl != nil {
		g.leasesReleased(pair) // a round trip: before g.mu, not under it
	}
	g.mu.Lock()
	if g.yielding[pair] > 0 {
		if g.yielding[pair]--; g.yielding[pair] == 0 {
			delete(g.yielding, pair)
		}
	}
	if c := g.counts[pair]; c != nil {
		g.uncountLocked(pair, c)
	}
	w := g.nextLocked()
	var stamp uint64
	if w != nil {
		stamp = w.refused
	}
	g.mu.Unlock()
	if w == nil {
		return
	}
	g.s.maintain(w.pair, g.s.clock.Now())
	g.mu.Lock()
	defer g.mu.Unlock()
	w.handed = false
	if g.at[w.pair] == w && (w.refused == stamp || w.inFirst && conns(w.pair) > 0) {
		// It took the slot, or its maintenance did not want it (a hook
		// held it): either way it no longer waits.
		g.removeLocked(w)
	}
}

// uncountLocked gives back one connection of pair counted under c.
func (g *grantor) uncountLocked(pair *queue.Pair, c *keyCount) {
	dec := func(m map[string]int, k string) {
		if k == "" {
			return
		}
		if m[k]--; m[k] <= 0 {
			delete(m, k)
		}
	}
	c.n--
	for _, k := range c.keys() {
		dec(g.byKey, k)
	}
	if c.leaving > 0 {
		c.leaving--
		for _, k := range c.keys() {
			dec(g.leaving, k)
		}
	}
	if c.n <= 0 {
		delete(g.counts, pair)
	}
}

// nextLocked returns the waiter the next free slot goes to, dropping on
// the way those whose work is gone or that got their connection.
func (g *grantor) nextLocked() *waiter {
	for e := g.first.Front(); e != nil; {
		w := e.Value.(*waiter)
		e = e.Next()
		if w.pair.Len() == 0 || conns(w.pair) > 0 {
			g.removeLocked(w)
			continue
		}
		if w.handed {
			continue
		}
		w.handed = true
		if g.observeHand != nil {
			g.observeHand(w.pair)
		}
		return w
	}
	for e := g.more.Front(); e != nil; {
		w := e.Value.(*waiter)
		e = e.Next()
		if w.pair.Len() == 0 {
			g.removeLocked(w)
			continue
		}
		// Its turn: to the back, so the next slot goes to the next pair.
		g.more.MoveToBack(w.el)
		return w
	}
	return nil
}

// startTick drops the pairs not refused since the tick before last: their
// maintenance stopped asking (a hook holds them, they are suspended or
// throttled), and they must not keep others from a second connection.
func (g *grantor) startTick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tick++
	for _, l := range []*list.List{&g.first, &g.more} {
		for e := l.Front(); e != nil; {
			w := e.Value.(*waiter)
			e = e.Next()
			if g.tick-w.tick > 1 || w.pair.Len() == 0 {
				g.removeLocked(w)
			}
		}
	}
}

// waiting reports the pairs in first and in more, for tests and metrics.
func (g *grantor) waiting() (first, more int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.first.Len(), g.more.Len()
}
