package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
)

// Several nodes, one set of limits (internal/cluster). With
// Options.Cluster set:
//
//   - in shared mode the message and connection rate budgets are the
//     cluster's (rateBudgets below: Redis GCRA, tokens in batches) instead
//     of the in-process policy.Throttles, and every connection holds a
//     lease under each capped key (site, domain, provider) counted across
//     the nodes; the global max_connections stays per node;
//   - in both modes, suspensions and rule throttles put in force here are
//     published, and those of the other nodes are applied here (and saved
//     with the others) within a second, naming their source node.
//
// Without it nothing here runs: budgets is the local Throttles and the
// grantor takes no leases.

// rateBudgets is what the grantor asks of a set of rate budgets:
// policy.Throttles in-process, or the cluster's shared ones.
type rateBudgets interface {
	TakeAll(keys []string, rates []policy.Rate, now time.Time) (ok bool, next time.Time)
	Ready(keys []string, rates []policy.Rate, now time.Time) (ok bool, next time.Time)
}

// sharedBudgets adapts *cluster.Cluster's budgets to rateBudgets (the
// cluster may not import policy; the two Rate types have one shape).
type sharedBudgets struct{ c *cluster.Cluster }

func (b sharedBudgets) conv(rates []policy.Rate, buf *[4]cluster.Rate) []cluster.Rate {
	out := buf[:0]
	for _, r := range rates {
		out = append(out, cluster.Rate(r))
	}
	return out
}

func (b sharedBudgets) TakeAll(keys []string, rates []policy.Rate, now time.Time) (bool, time.Time) {
	var buf [4]cluster.Rate
	return b.c.TakeAll(keys, b.conv(rates, &buf), now)
}

func (b sharedBudgets) Ready(keys []string, rates []policy.Rate, now time.Time) (bool, time.Time) {
	var buf [4]cluster.Rate
	return b.c.Ready(keys, b.conv(rates, &buf), now)
}

// The kinds of shared record.
const (
	kindSuspension = "suspension"
	kindThrottle   = "throttle"
)

// clusterState is the scheduler's side of the cluster.
type clusterState struct {
	c      *cluster.Cluster
	shared bool // mode shared: budgets and leases are the cluster's

	mu sync.Mutex
	// gone are ids this node lifted, ignored in reads until then (a read
	// in flight when the lift was written would put it back).
	gone map[string]time.Time

	// leases per pair: pending are taken for connections being opened,
	// held those of open connections (any one of a pair's sets is given
	// back when one of its connections ends: they are interchangeable).
	leaseMu sync.Mutex
	pending map[*queue.Pair][][]*cluster.Lease
	held    map[*queue.Pair][][]*cluster.Lease

	// snaps are the cluster's lease counts per key, as last read (overCap).
	snapMu sync.Mutex
	snaps  map[string]*countSnap
}

// snapEvery is how old a cluster lease count may be when a session asks
// whether to end: a round trip per capped key a second per node while
// sessions run. A count read under another cap is read again at once: the
// first transaction after a cap is lowered decides on current counts.
const snapEvery = time.Second

// countSnap is one key's lease count as last read.
type countSnap struct {
	at          time.Time
	total, mine int
	cap         int  // the cap in force when read
	reading     bool // a caller is refreshing it
}

// sharedCount is what overCap knows of one key across the cluster: the
// lease counts (known), or the node's cap in fallback.
type sharedCount struct {
	known             bool
	total, mine, held int
	fallback          bool
	cap               int
}

// sharedCounts reads each capped key's cluster count (cached for
// snapEvery; one caller refreshes it, the others use the old one), or in
// fallback the node's part of the cap.
func (cs *clusterState) sharedCounts(caps [3]keyCap) (out [3]sharedCount) {
	for i, kc := range caps {
		if kc.key == "" || kc.cap <= 0 {
			continue
		}
		if cs.c.InFallback() {
			out[i] = sharedCount{fallback: true, cap: cs.c.FallbackCap(kc.cap)}
			continue
		}
		s, ok := cs.snapshot(kc.key, kc.cap)
		if ok {
			out[i] = sharedCount{known: true, total: s.total, mine: s.mine, held: cs.c.Held(kc.key)}
		}
	}
	return out
}

func (cs *clusterState) snapshot(key string, cap int) (countSnap, bool) {
	now := time.Now() // Redis's counts are in real time, not the scheduler's clock
	cs.snapMu.Lock()
	s := cs.snaps[key]
	if s == nil {
		s = &countSnap{}
		cs.snaps[key] = s
	}
	fresh := !s.at.IsZero() && now.Sub(s.at) < snapEvery && s.cap == cap
	if fresh || s.reading {
		v := *s
		cs.snapMu.Unlock()
		return v, !v.at.IsZero()
	}
	s.reading = true
	cs.snapMu.Unlock()
	total, mine, err := cs.c.Snapshot(key)
	cs.snapMu.Lock()
	defer cs.snapMu.Unlock()
	s.reading = false
	if err != nil {
		return countSnap{}, false
	}
	s.at, s.total, s.mine, s.cap = now, total, mine, cap
	if len(cs.snaps) > 10000 {
		// Bounded: keys of pairs long gone are read again if needed.
		for k, o := range cs.snaps {
			if now.Sub(o.at) > time.Minute && !o.reading {
				delete(cs.snaps, k)
			}
		}
	}
	return *s, true
}

// shedOne decides whether one more of this node's sessions under a
// shared cap ends. When last counted the cluster held total connections
// (leases) under the key, mine of them this node's; held is this node's
// now, leaving its sessions already told to end. The excess over cap is
// shared out in proportion to each node's connections, rounded up (the
// nodes together end at least the excess, at most one more each), and
// this node ends its part, counting those that ended since the count.
func shedOne(cap, total, mine, held, leaving int) bool {
	if total <= cap || mine <= 0 {
		return false
	}
	part := ((total-cap)*mine + total - 1) / total
	gone := max(mine-held, 0)
	return gone+leaving < part
}

// initCluster wires Options.Cluster in (New).
func (s *Scheduler) initCluster() {
	c := s.opts.Cluster
	if c == nil {
		return
	}
	cs := &clusterState{c: c, shared: !s.opts.ClusterLocal, gone: map[string]time.Time{}, snaps: map[string]*countSnap{}, pending: map[*queue.Pair][][]*cluster.Lease{}, held: map[*queue.Pair][][]*cluster.Lease{}}
	s.cl = cs
	if cs.shared {
		s.budgets = sharedBudgets{c}
	}
	s.republishOwn()
	c.Follow([]string{kindSuspension, kindThrottle}, s.applyShared)
}

// suspensionID is a suspension's record id: its scope, the same on every
// node. The suspension ids themselves carry the node that set them
// ("node1-s4", Suspensions.SetIDPrefix) and are kept by the nodes that
// adopt them, so one id names one suspension across the cluster.
func suspensionID(sp policy.Suspension) string {
	return string(sp.Kind) + ":" + sp.Name + "|" + sp.Binding
}

// publish writes a record to the cluster (set at start, holding until
// until); while Redis does not answer it is queued and written when it
// answers again.
func (s *Scheduler) publish(kind, id string, v any, start, until time.Time) {
	if s.cl == nil {
		return
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = s.cl.c.Put(context.Background(), kind, id, start, until, b)
	}
	s.logShareErr("change", kind, id, err)
}

func (s *Scheduler) logShareErr(what, kind, id string, err error) {
	switch {
	case err == nil:
	case errors.Is(err, cluster.ErrPending):
		s.log.Info("cluster: "+what+" queued until redis answers", zap.String("kind", kind), zap.String("id", id), zap.Error(err))
	default:
		s.log.Warn("cluster: "+what+" not shared", zap.String("kind", kind), zap.String("id", id), zap.Error(err))
	}
}

// unpublish lifts a record on every node (a tombstone kept until until).
func (s *Scheduler) unpublish(kind, id string, until time.Time, who, reason string) {
	if s.cl == nil {
		return
	}
	s.cl.mu.Lock()
	s.cl.gone[kind+" "+id] = time.Now().Add(3 * time.Second)
	s.cl.mu.Unlock()
	s.logShareErr("lift", kind, id, s.cl.c.Lift(context.Background(), kind, id, s.clock.Now(), until, who, reason))
}

// republishOwn writes this node's own suspensions restored from the file
// to the cluster (a start): a longer one there stays, and one lifted
// while this node was down is refused and then lifted here by the
// tombstone the first read brings.
func (s *Scheduler) republishOwn() {
	now := s.clock.Now()
	for _, sp := range s.suspensions.All() {
		if sp.Node == "" && now.Before(sp.Until) {
			s.publish(kindSuspension, suspensionID(sp), sp, sp.Start, sp.Until)
		}
	}
}

// applyShared applies the cluster's records of kind (cluster.Follow): new
// or longer ones are put in force here, tombstones lift here what was set
// before them. A record missing from the cluster lifts nothing (Redis may
// have lost it; its node writes it again). It runs on the cluster's sync
// goroutine, one call at a time.
func (s *Scheduler) applyShared(kind string, recs map[string]cluster.Record) {
	now := s.clock.Now()
	cs := s.cl
	cs.mu.Lock()
	for k, until := range cs.gone {
		if time.Now().After(until) {
			delete(cs.gone, k)
		}
	}
	live := make(map[string]bool, len(recs))
	for id, rec := range recs {
		if _, lifted := cs.gone[kind+" "+id]; !lifted && !rec.Lifted {
			live[id] = true
		}
	}
	cs.mu.Unlock()

	changed := false
	for id, rec := range recs {
		if !live[id] {
			continue
		}
		switch kind {
		case kindSuspension:
			var sp policy.Suspension
			if json.Unmarshal(rec.Data, &sp) != nil || !now.Before(sp.Until) {
				continue
			}
			if rec.Source != s.cl.c.Node() {
				sp.Node = rec.Source
			}
			got, added := s.suspensions.Adopt(sp)
			if added {
				changed = true
				s.logPolicy(logging.Policy{Action: "suspend", Source: got.Source, Rule: got.Rule, Scope: string(got.Kind),
					Name: got.Name, Binding: got.Binding, Until: got.Until, Reason: got.Reason, ID: got.ID, Node: rec.Source})
			}
		case kindThrottle:
			var o policy.Override
			if json.Unmarshal(rec.Data, &o) != nil || o.Expired(now) {
				continue
			}
			if old, ok := s.overrides.Lookup(o.Scope); ok && !o.Until().After(old.Until()) {
				continue
			}
			s.overrides.Set(o)
			kindS, name, b := splitScopeKey(o.Scope)
			s.logPolicy(logging.Policy{Action: "throttle", Source: policy.SourceRule, Rule: o.Rule, Scope: kindS,
				Name: name, Binding: b, Until: o.Until(), Settings: overrideSettings(o.MaxMessageRate, o.MaxConnections), Node: rec.Source})
		}
	}
	for id, rec := range recs {
		if !rec.Lifted {
			continue
		}
		at := time.UnixMilli(rec.At)
		switch kind {
		case kindSuspension:
			k, rest, _ := strings.Cut(id, ":")
			i := strings.LastIndexByte(rest, '|')
			if i < 0 {
				continue
			}
			kindS, name, b := policy.ScopeKind(k), rest[:i], rest[i+1:]
			if !s.setBefore(kindS, name, b, at) {
				continue // none here, or set after the lift
			}
			if sp, ok := s.suspensions.LiftScope(kindS, name, b); ok {
				changed = true
				s.logPolicy(logging.Policy{Action: "resume", Source: policy.SourceOperator, Rule: sp.Rule, Scope: string(sp.Kind),
					Name: sp.Name, Binding: sp.Binding, ID: sp.ID, By: rec.By, Reason: liftReason(rec), Node: rec.Source})
			}
		case kindThrottle:
			if o, ok := s.overrides.Lookup(id); !ok || o.Start.After(at) {
				continue
			}
			if o, ok := s.overrides.Lift(id); ok {
				kindS, name, b := splitScopeKey(id)
				s.logPolicy(logging.Policy{Action: "unthrottle", Source: policy.SourceOperator, Rule: o.Rule, Scope: kindS,
					Name: name, Binding: b, By: rec.By, Reason: liftReason(rec), Node: rec.Source})
			}
		}
	}
	if changed {
		s.saveSuspensions()
	}
}

// setBefore reports whether a suspension of the scope is in force here,
// set no later than at (a tombstone lifts only what it could have seen).
func (s *Scheduler) setBefore(kind policy.ScopeKind, name, binding string, at time.Time) bool {
	for _, sp := range s.suspensions.All() {
		if sp.Kind == kind && sp.Name == name && sp.Binding == binding {
			return !sp.Start.After(at)
		}
	}
	return false
}

// takeLeases takes, for each of n connections of pair, a lease under each
// of its capped keys; it returns how many connections got all theirs and
// parks those sets for Opened. A set short of one key gives back what it
// took and ends the taking.
func (g *grantor) takeLeases(pair *queue.Pair, ps *pairShape, l limits, n int) int {
	cs := g.s.cl
	type capped struct {
		key string
		cap int
	}
	var arr [3]capped
	keys := arr[:0]
	if l.maxConns > 0 {
		keys = append(keys, capped{ps.siteKey, l.maxConns})
	}
	if ps.domKey != "" && l.domConns > 0 {
		keys = append(keys, capped{ps.domKey, l.domConns})
	}
	if ps.provKey != "" && l.provConns > 0 {
		keys = append(keys, capped{ps.provKey, l.provConns})
	}
	if len(keys) == 0 {
		return n
	}
	var ka [3]string
	var ca [3]int
	for i, k := range keys {
		ka[i], ca[i] = k.key, k.cap
	}
	got := 0
	for ; got < n; got++ {
		if g.yieldsTo(keys[0].key, keys[0].cap) || len(keys) > 1 && g.yieldsTo(keys[1].key, keys[1].cap) ||
			len(keys) > 2 && g.yieldsTo(keys[2].key, keys[2].cap) {
			// Another node waits under a key where this one has its
			// fair share: a lease given back (fairYield) goes to it.
			break
		}
		// One round trip per connection for all its keys.
		set, ok, _ := cs.c.AcquireAll(ka[:len(keys)], ca[:len(keys)])
		if !ok {
			break
		}
		cs.leaseMu.Lock()
		cs.pending[pair] = append(cs.pending[pair], set)
		cs.leaseMu.Unlock()
	}
	return got
}

// leasesOpened moves one parked lease set of pair to its open connections
// (Opened). Every session is opened by the grantor (Pool.Open has no
// other caller: hooks open through Scheduler.Opener), so every one has a
// set when the pair has shared caps; one opened on the pool directly,
// against Scheduler.Pool's contract, would hold none.
func (g *grantor) leasesOpened(pair *queue.Pair) {
	cs := g.s.cl
	cs.leaseMu.Lock()
	defer cs.leaseMu.Unlock()
	p := cs.pending[pair]
	if len(p) == 0 {
		return
	}
	cs.held[pair] = append(cs.held[pair], p[len(p)-1])
	if p = p[:len(p)-1]; len(p) == 0 {
		delete(cs.pending, pair)
	} else {
		cs.pending[pair] = p
	}
}

// dropPending gives back k parked lease sets of pair: leases taken for
// connections the pool did not open.
func (g *grantor) dropPending(pair *queue.Pair, k int) {
	cs := g.s.cl
	var drop [][]*cluster.Lease
	cs.leaseMu.Lock()
	p := cs.pending[pair]
	k = min(k, len(p))
	drop, p = p[len(p)-k:], p[:len(p)-k]
	if len(p) == 0 {
		delete(cs.pending, pair)
	} else {
		cs.pending[pair] = p
	}
	cs.leaseMu.Unlock()
	for _, set := range drop {
		for _, l := range set {
			l.Release()
		}
	}
}

// leasesReleased gives back one lease set of pair's (Released).
func (g *grantor) leasesReleased(pair *queue.Pair) {
	cs := g.s.cl
	cs.leaseMu.Lock()
	h := cs.held[pair]
	if len(h) == 0 {
		cs.leaseMu.Unlock()
		return
	}
	set := h[len(h)-1]
	if h = h[:len(h)-1]; len(h) == 0 {
		delete(cs.held, pair)
	} else {
		cs.held[pair] = h
	}
	cs.leaseMu.Unlock()
	for _, l := range set {
		l.Release()
	}
}

// unshareEnded removes the record of a suspension or throttle that ended
// by itself at until, unless a longer one took its place (compare and
// delete): every node does it, so a record whose node died goes too.
func (s *Scheduler) unshareEnded(kind, id string, until time.Time) {
	if err := s.cl.c.Expire(context.Background(), kind, id, until); err != nil {
		s.log.Debug("cluster: ended record not removed", zap.String("kind", kind), zap.String("id", id), zap.Error(err))
	}
}

// liftSharedByID lifts, on every node, the shared suspension whose id is
// id when this node does not hold it (not read yet, or set while this
// node was cut off): Resume by id works on any node. It returns the
// suspension lifted.
func (s *Scheduler) liftSharedByID(id, who, reason string) (policy.Suspension, bool) {
	if s.cl == nil || s.cl.c.InFallback() {
		return policy.Suspension{}, false
	}
	recs, err := s.cl.c.Shared(context.Background(), kindSuspension)
	if err != nil {
		return policy.Suspension{}, false
	}
	now := s.clock.Now()
	for rid, rec := range recs {
		var sp policy.Suspension
		if rec.Lifted || json.Unmarshal(rec.Data, &sp) != nil || sp.ID != id || !now.Before(sp.Until) {
			continue
		}
		s.unpublish(kindSuspension, rid, sp.Until, who, reason)
		sp.Node = rec.Source
		return sp, true
	}
	return policy.Suspension{}, false
}

// liftReason is the reason a lift gave, or says where it came from (a
// tombstone written by a node that did not carry one).
func liftReason(rec cluster.Record) string {
	if rec.Reason != "" {
		return rec.Reason
	}
	return "lifted on " + rec.Source
}

// idleAtCap reports whether a session of pair, whose queue is empty (it
// would idle), ends now to give back its leases: the pair holds shared
// leases and one of its capped keys is at its cap across the cluster. A
// lease held while idling would keep another node's waiting mail out for
// the whole idle timeout (finding of issue 13). The count is read fresh
// (one round trip, once per session that would idle): a stale count
// below the cap would keep the lease for the idle timeout. In fallback the
// caps are split between the nodes, so an idle session keeps nothing from
// another node and stays.
func (g *grantor) idleAtCap(pair *queue.Pair) bool {
	cs := g.s.cl
	if cs == nil || !cs.shared || pair.Len() > 0 || cs.c.InFallback() {
		return false
	}
	cs.leaseMu.Lock()
	held := len(cs.held[pair])
	cs.leaseMu.Unlock()
	if held == 0 {
		return false
	}
	ps := g.s.shapeOf(pair)
	if ps == nil {
		return false
	}
	l := g.s.limitsOf(ps, g.s.clock.Now())
	for _, kc := range [3]keyCap{{ps.siteKey, l.maxConns}, {ps.domKey, l.domConns}, {ps.provKey, l.provConns}} {
		if kc.key == "" || kc.cap <= 0 {
			continue
		}
		if total, _, err := cs.c.Snapshot(kc.key); err == nil && total >= kc.cap {
			// A session of the pair already idling (it found the queue
			// empty while this one sent the last message) asks too.
			g.pool.Wake(pair)
			return true
		}
	}
	return false
}

// yieldsTo reports whether this node, holding its fair share of key's cap
// or more, leaves the next lease under it to another node that waits
// (cluster.OthersWaiting: a cached read, at most a round trip per key a
// second).
func (g *grantor) yieldsTo(key string, cap int) bool {
	c := g.s.cl.c
	return c.Held(key) >= c.FairShare(cap) && c.OthersWaiting(key)
}

// fairYield reports whether a session of pair, which has mail queued,
// ends after its current message to give its leases back to another
// node: this node holds more than its fair share of one of the pair's
// capped keys (leaving those already told to end) and another node was
// refused a lease under it (finding of issue 13: a node with a long queue
// kept every lease of a cap until its queue was empty). The session counts
// as leaving, so no more than the excess over the fair share ends. A pair
// with no mail queued is idleAtCap's.
func (g *grantor) fairYield(pair *queue.Pair) bool {
	cs := g.s.cl
	if cs == nil || !cs.shared || pair.Len() == 0 || cs.c.InFallback() {
		return false
	}
	ps := g.s.shapeOf(pair)
	if ps == nil {
		return false
	}
	l := g.s.limitsOf(ps, g.s.clock.Now())
	for _, kc := range [3]keyCap{{ps.siteKey, l.maxConns}, {ps.domKey, l.domConns}, {ps.provKey, l.provConns}} {
		if kc.key == "" || kc.cap <= 0 {
			continue
		}
		fair := cs.c.FairShare(kc.cap)
		g.mu.Lock()
		over := cs.c.Held(kc.key)-g.leaving[kc.key] > fair
		g.mu.Unlock()
		if !over || !cs.c.OthersWaiting(kc.key) { // a round trip: not under g.mu
			continue
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		c := g.counts[pair]
		if c == nil || cs.c.Held(kc.key)-g.leaving[kc.key] <= fair {
			return false // another session left meanwhile
		}
		c.leaving++
		for _, k := range c.keys() {
			g.leaving[k]++
		}
		return true
	}
	return false
}
