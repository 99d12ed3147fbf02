package policy

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Throttles are token buckets (golang.org/x/time/rate) keyed by a scope key
// the caller builds ("site:mx1.example,mx2.example|b1",
// "provider:google|b1"). Every call takes the time explicitly: the
// scheduler's clock, never the wall clock, so that throttling is tested
// without sleeping, and a throttled pair is given the time of its next
// token to set a timer for rather than a loop to spin in.
//
// It is safe for concurrent use. One mutex covers the map and the
// all-or-nothing TakeAll; each call holds it for a few map lookups.
type Throttles struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	lim *rate.Limiter
	r   Rate // the rate lim was last set to
}

// NewThrottles returns an empty set of buckets.
func NewThrottles() *Throttles {
	return &Throttles{buckets: map[string]*bucket{}}
}

// Take takes one token from the bucket key at rate r at time now. ok: it
// was taken. Otherwise next is when one will be available, and nothing was
// taken. An unlimited r always succeeds without creating a bucket. A
// changed r for an existing key (a reload, a rule's override) applies from
// now on: the tokens already in the bucket stay, up to the new burst.
func (t *Throttles) Take(key string, r Rate, now time.Time) (ok bool, next time.Time) {
	return t.TakeAll([]string{key}, []Rate{r}, now)
}

// TakeAll takes one token from each (keys[i], rates[i]) only if every one
// of them has a token: a site's token is not spent when its provider's
// budget is empty. Otherwise nothing is taken and next is the latest time
// at which any of them has a token again (so that at next, all have).
// keys and rates have the same length; unlimited rates are skipped.
func (t *Throttles) TakeAll(keys []string, rates []Rate, now time.Time) (ok bool, next time.Time) {
	if len(keys) != len(rates) {
		panic("policy: TakeAll: keys and rates differ in length")
	}
	// Up to four scopes are usual (site, provider, domain, binding): a
	// fixed array keeps the common call free of allocation.
	var arr [4]*bucket
	bs := arr[:0]
	t.mu.Lock()
	defer t.mu.Unlock()
	next = now
	for i, key := range keys {
		r := rates[i]
		if r.Unlimited() {
			continue
		}
		b := t.buckets[key]
		if b == nil {
			b = &bucket{lim: rate.NewLimiter(r.Limit(), r.Burst()), r: r}
			t.buckets[key] = b
		} else if b.r != r {
			b.lim.SetLimitAt(now, r.Limit())
			b.lim.SetBurstAt(now, r.Burst())
			b.r = r
		}
		if tok := b.lim.TokensAt(now); tok < 1 {
			if at := now.Add(untilOne(tok, r.Limit())); at.After(next) {
				next = at
			}
		}
		bs = append(bs, b)
	}
	if next.After(now) {
		return false, next
	}
	for _, b := range bs {
		b.lim.AllowN(now, 1)
	}
	return true, now
}

// Ready reports whether each (keys[i], rates[i]) has a token at now,
// taking none; otherwise next is when all will have. It creates no bucket:
// a scope never taken from is full.
func (t *Throttles) Ready(keys []string, rates []Rate, now time.Time) (ok bool, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	next = now
	for i, key := range keys {
		r := rates[i]
		b := t.buckets[key]
		if r.Unlimited() || b == nil {
			continue
		}
		if b.r != r {
			b.lim.SetLimitAt(now, r.Limit())
			b.lim.SetBurstAt(now, r.Burst())
			b.r = r
		}
		if tok := b.lim.TokensAt(now); tok < 1 {
			if at := now.Add(untilOne(tok, r.Limit())); at.After(next) {
				next = at
			}
		}
	}
	return !next.After(now), next
}

// untilOne is how long a bucket holding tok tokens, refilled at l per
// second, takes to hold one; rounded up so that at now+untilOne the token
// is there, not 0.9999 of it.
func untilOne(tok float64, l rate.Limit) time.Duration {
	if l <= 0 {
		return math.MaxInt64 / 2 // never refilled; unreachable for a limited Rate
	}
	return time.Duration(math.Ceil((1 - tok) / float64(l) * float64(time.Second)))
}

// Sweep forgets the buckets that are full again at now: an idle scope
// costs nothing, and a bucket created anew later starts full, which is the
// state it was forgotten in. It returns how many it forgot. The caller runs
// it now and then (each minute), so memory follows the scopes in use.
func (t *Throttles) Sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, b := range t.buckets {
		if b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			delete(t.buckets, k)
			n++
		}
	}
	return n
}

// Len is the number of buckets held.
func (t *Throttles) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.buckets)
}

// rampSteps is how many steps an override's ramp climbs in.
const rampSteps = 5

// Override is a rule's temporary change to a scope's shaping (a `throttle`
// action): from Start its values replace the normal ones until End, then
// over Ramp they climb back to normal in five equal steps, the first at
// End, and from End+Ramp the normal values rule again and the override has
// expired. An override only lowers: where the normal value is already
// lower, the normal value applies.
//
// Rates climb geometrically (each step multiplies by the same factor),
// because the two ends are often orders of magnitude apart (1/m against
// 100/s): a linear climb would make the first step nearly the whole way.
// With an unlimited normal rate each step multiplies by 10 and the fifth
// lifts the limit. Connections climb linearly, rounded down, and never
// below the override; with no normal limit (0) each step doubles.
type Override struct {
	Rule  string // the rule that set it, for the log
	Scope string // the scope key it applies to, e.g. "site:mx1,mx2|b1"
	// Which keys it overrides; nil leaves a key alone.
	MaxMessageRate *Rate
	MaxConnections *int
	Start, End     time.Time
	Ramp           time.Duration
}

// step is how far into the ramp now is: -1 before End (the override's own
// value), 0..4 for the steps, rampSteps once the ramp is over.
func (o *Override) step(now time.Time) int {
	switch {
	case now.Before(o.End):
		return -1
	case o.Ramp <= 0 || !now.Before(o.End.Add(o.Ramp)):
		return rampSteps
	}
	return int(int64(now.Sub(o.End)) * rampSteps / int64(o.Ramp))
}

// Rate returns the message rate in force at now given the normal one.
func (o *Override) Rate(normal Rate, now time.Time) Rate {
	if o.MaxMessageRate == nil || o.MaxMessageRate.Unlimited() {
		return normal
	}
	ov := *o.MaxMessageRate
	if !normal.Unlimited() && float64(normal.Limit()) <= float64(ov.Limit()) {
		return normal // an override never raises a limit
	}
	k := o.step(now)
	switch {
	case k < 0:
		return ov
	case k >= rampSteps-1:
		return normal
	case normal.Unlimited():
		return Rate{N: ov.N * math.Pow(10, float64(k+1)), Per: ov.Per}
	}
	ratio := float64(normal.Limit()) / float64(ov.Limit())
	return Rate{N: ov.N * math.Pow(ratio, float64(k+1)/rampSteps), Per: ov.Per}
}

// Conns returns the connection cap in force at now given the normal one
// (0 = no cap).
func (o *Override) Conns(normal int, now time.Time) int {
	if o.MaxConnections == nil {
		return normal
	}
	ov := *o.MaxConnections
	if normal > 0 && normal <= ov {
		return normal
	}
	k := o.step(now)
	switch {
	case k < 0:
		return ov
	case k >= rampSteps-1:
		return normal
	case normal <= 0:
		return ov << (k + 1)
	}
	return ov + (normal-ov)*(k+1)/rampSteps
}

// Expired reports whether the override no longer changes anything at now.
func (o *Override) Expired(now time.Time) bool { return o.step(now) >= rampSteps }

// Until is when the override expires (End + Ramp).
func (o *Override) Until() time.Time { return o.End.Add(max(o.Ramp, 0)) }

// Overrides holds the overrides in force, one per scope key. It is safe for
// concurrent use; Get costs one atomic load while there are none, because
// the scheduler asks for every pair on every tick.
type Overrides struct {
	n   atomic.Int64
	gen atomic.Uint64 // bumped by every change, for callers that cache Lookup
	mu  sync.RWMutex
	m   map[string]Override
}

// NewOverrides returns an empty set.
func NewOverrides() *Overrides { return &Overrides{m: map[string]Override{}} }

// Set puts o in force for o.Scope, replacing any override of that scope.
func (s *Overrides) Set(o Override) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[o.Scope] = o
	s.n.Store(int64(len(s.m)))
	s.gen.Add(1)
}

// Get returns the override of scope in force at now, or nil; the result is
// a copy the caller may keep.
func (s *Overrides) Get(scope string, now time.Time) *Override {
	if s.n.Load() == 0 {
		return nil
	}
	s.mu.RLock()
	o, ok := s.m[scope]
	s.mu.RUnlock()
	if !ok || o.Expired(now) {
		return nil
	}
	// The copy is made here, not at the map read: returning &o would move
	// o to the heap on every call, found or not — a dozen allocations per
	// pair per tick while any override is in force
	// (scheduler/BenchmarkScaleTick/*-shaped).
	cp := o
	return &cp
}

// List returns the overrides not expired at now, the soonest to expire first.
func (s *Overrides) List(now time.Time) []Override {
	s.mu.RLock()
	out := make([]Override, 0, len(s.m))
	for _, o := range s.m {
		if !o.Expired(now) {
			out = append(out, o)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Until(), out[j].Until(); !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].Scope < out[j].Scope
	})
	return out
}

// Gen changes whenever an override is set, lifted or expired: a caller
// may keep what Lookup returned for as long as Gen is the same.
func (s *Overrides) Gen() uint64 { return s.gen.Load() }

// Lookup returns the override held for scope, expired or not (the caller
// applies it at its time: Rate and Conns give the normal values once it
// has expired).
func (s *Overrides) Lookup(scope string) (Override, bool) {
	if s.n.Load() == 0 {
		return Override{}, false
	}
	s.mu.RLock()
	o, ok := s.m[scope]
	s.mu.RUnlock()
	return o, ok
}

// Len is the number of overrides held, expired or not.
func (s *Overrides) Len() int { return int(s.n.Load()) }

// Lift removes the override of scope at once (an operator's order: no
// ramp), returning it.
func (s *Overrides) Lift(scope string) (Override, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.m[scope]
	delete(s.m, scope)
	s.n.Store(int64(len(s.m)))
	s.gen.Add(1)
	return o, ok
}

// Expire removes the overrides expired at now and returns them, for the
// caller to log "throttle ended".
func (s *Overrides) Expire(now time.Time) []Override {
	if s.n.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Override
	for k, o := range s.m {
		if o.Expired(now) {
			out = append(out, o)
			delete(s.m, k)
		}
	}
	if len(out) > 0 {
		s.n.Store(int64(len(s.m)))
		s.gen.Add(1)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Scope < out[j].Scope })
	return out
}
