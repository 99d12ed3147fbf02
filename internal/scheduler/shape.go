package scheduler

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// Shaping (internal/policy) as the scheduler applies it. A pair's shaping
// is resolved once its domain's MX set is known (resolve.go) and kept on
// the domain record until the set or the configuration changes. Budgets
// are shared by key: a site's (or, with mx_rollup off, a domain's) from
// one binding, and a provider's from one binding across its sites.
//
//   - max_connections and provider_max_connections: counted by the
//     grantor over the pairs sharing the key (grant.go), and the pair's
//     own hard cap in the pool; a lowered cap (reload, rule) ends
//     sessions over it after their transaction (grantor.Yield).
//   - max_connection_rate: a token per connection the grantor opens.
//   - max_message_rate and provider_max_message_rate: a token per
//     delivery a session sends (grantor.Admit); a pair without one is
//     not given a connection, and its maintenance is run again when the
//     token is due (a timer, not a loop).
//   - retry_interval, max_retry_interval, max_age: in settle.
//   - idle_timeout and max_deliveries_per_connection: the pool's Policy.
//   - tls, mta_sts and dane: the pool's Policy.TLS, planned per session
//     by internal/tlspolicy.
//   - consecutive_connection_failures_before_delay: in ConnectFailed.
//
// Suspensions and rule throttles (Overrides) are looked up per pair only
// when any exist.

// pairShape is a pair's resolved shaping and its budget keys.
type pairShape struct {
	sh      *policy.Shaping
	gen     uint64 // the shaper generation it was resolved with
	mxKnown bool   // resolved with the domain's MX set
	binding string
	where   policy.Where
	siteKey string // policy.ScopeKey(site, sh.Site, binding): connections and messages
	provKey string // policy.ScopeKey(provider, sh.Provider, binding); "" without a provider
	// domKey keys the domain's own budgets from the binding, within its
	// site's, when the domain is rolled up on a site: a domain entry's
	// max_connections or rates, or a domain- or pair-scoped rule's
	// throttle, limit that domain alone and never set the rate of the
	// bucket its site-mates share. "" without rollup (the site's budgets
	// are then the domain's).
	domKey string
	// Message bucket keys, as limits.rates orders them: the site's, the
	// provider's ("" without a provider), the binding's (limited only
	// while a binding-scoped throttle is in force) and the domain's.
	msgKeys [4]string
	// Connection-rate bucket keys: the site's and the domain's.
	connKeys [2]string
	pc       atomic.Pointer[pairPolicy] // suspensions and overrides covering the pair (policyCache)
	// Override scopes, most specific first: those of the site's budgets,
	// the domain's (pair and domain scopes; the site's when domKey is ""),
	// the provider's, and the binding's (its rate is one budget across
	// every destination of the binding; its max_connections caps each
	// site's connections).
	siteOverrideKs, domOverrideKs, provOverrideKs []string
	bindOverrideK                                 string
}

// shapeOf returns the pair's shaping, resolving it when the configuration
// or the domain's MX set changed since; nil without a Shaper.
func (s *Scheduler) shapeOf(p *queue.Pair) *pairShape {
	sh := s.shaper.Load()
	if sh == nil {
		return nil
	}
	gen := s.shaperGen.Load()
	dr, slot := p.Domain(), p.Slot()
	ds := stateOf(dr)
	if ps := cachedShape(ds, slot, gen); ps != nil {
		return ps // per pair per tick and per transaction: no lock
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ps := cachedShape(ds, slot, gen); ps != nil {
		return ps
	}
	name := fmt.Sprintf("slot-%d", slot)
	if b := s.opts.Bindings.Get(slot); b != nil {
		name = b.Name
	}
	r := sh.Resolve(dr.Name, ds.mx, name)
	ps := &pairShape{sh: r, gen: gen, mxKnown: ds.resolved, binding: name,
		where: policy.Where{Domain: dr.Name, Site: r.Site, Provider: r.Provider, Binding: name}}
	ps.siteKey = policy.ScopeKey(policy.ScopeSite, r.Site, name)
	ps.msgKeys[0] = "msg " + ps.siteKey
	if r.Provider != "" {
		ps.provKey = policy.ScopeKey(policy.ScopeProvider, r.Provider, name)
		ps.msgKeys[1] = "msg " + ps.provKey
	}
	ps.bindOverrideK = policy.ScopeKey(policy.ScopeBinding, "", name)
	ps.msgKeys[2] = "msg " + ps.bindOverrideK
	ps.connKeys[0] = "conn " + ps.siteKey
	ps.siteOverrideKs = []string{ps.siteKey, policy.ScopeKey(policy.ScopeSite, r.Site, "")}
	ps.domOverrideKs = []string{
		policy.ScopeKey(policy.ScopePair, dr.Name, name),
		policy.ScopeKey(policy.ScopeDomain, dr.Name, name),
		policy.ScopeKey(policy.ScopeDomain, dr.Name, ""),
	}
	if r.Site != "domain:"+dr.Name {
		ps.domKey = policy.ScopeKey(policy.ScopeDomain, dr.Name, name)
		ps.msgKeys[3] = "msg " + ps.domKey
		ps.connKeys[1] = "conn " + ps.domKey
	}
	if r.Provider != "" {
		ps.provOverrideKs = []string{ps.provKey, policy.ScopeKey(policy.ScopeProvider, r.Provider, "")}
	}
	var shapes []*pairShape
	if old := ds.shapes.Load(); old != nil {
		shapes = *old
	}
	shapes = append([]*pairShape(nil), shapes...)
	for len(shapes) <= slot {
		shapes = append(shapes, nil)
	}
	shapes[slot] = ps
	ds.shapes.Store(&shapes)
	return ps
}

// cachedShape returns the pair's shaping if it was resolved with the
// shaper generation gen and the domain's current MX set.
func cachedShape(ds *domainState, slot int, gen uint64) *pairShape {
	sp := ds.shapes.Load()
	if sp == nil || slot >= len(*sp) {
		return nil
	}
	if ps := (*sp)[slot]; ps != nil && ps.gen == gen && ps.mxKnown == ds.isResolved() {
		return ps
	}
	return nil
}

// limits are a pair's budgets at one moment: its shaping with any rule's
// throttle applied. 0 and the zero Rate are no limit.
type limits struct {
	maxConns, provConns, domConns int
	msgRate, provRate, domRate    policy.Rate
	bindRate                      policy.Rate // unlimited but under a binding-scoped throttle
	connRate, domConnRate         policy.Rate
}

// unlimited reports whether no message budget limits the pair.
func (l *limits) unlimited() bool {
	return l.msgRate.Unlimited() && l.provRate.Unlimited() && l.bindRate.Unlimited() && l.domRate.Unlimited()
}

// rates are the message rates in the order of pairShape.msgKeys.
func (l *limits) rates() [4]policy.Rate {
	return [4]policy.Rate{l.msgRate, l.provRate, l.bindRate, l.domRate}
}

// pairConns is the most connections the pair itself may have: the
// tighter of its site's cap and its domain's.
func (l *limits) pairConns() int {
	switch {
	case l.domConns > 0 && (l.maxConns <= 0 || l.domConns < l.maxConns):
		return l.domConns
	}
	return l.maxConns
}

// fromDomain reports whether a domain entry set the shaping key k.
func fromDomain(sh *policy.Shaping, k string) bool {
	return strings.HasPrefix(sh.Sources[k], "domain ")
}

// limitsOf returns the pair's budgets at now.
func (s *Scheduler) limitsOf(ps *pairShape, now time.Time) limits {
	sh := ps.sh
	l := limits{provConns: sh.ProviderMaxConnections, provRate: sh.ProviderMaxMessageRate}
	if ps.domKey == "" {
		l.maxConns, l.msgRate, l.connRate = sh.MaxConnections, sh.MaxMessageRate, sh.MaxConnectionRate
	} else {
		// Rolled up: the site's budgets are shared by its domains, but
		// a value a domain entry set is that domain's own budget, in
		// place of the site's (the most specific scope wins, and the
		// domain's rate never becomes the rate of the bucket its
		// site-mates share).
		l.maxConns, l.msgRate, l.connRate = sh.SiteMaxConnections, sh.SiteMaxMessageRate, sh.SiteMaxConnectionRate
		if fromDomain(sh, "max_connections") {
			l.domConns, l.maxConns = sh.MaxConnections, 0
		}
		if fromDomain(sh, "max_message_rate") {
			l.domRate, l.msgRate = sh.MaxMessageRate, policy.Rate{}
		}
		if fromDomain(sh, "max_connection_rate") {
			l.domConnRate, l.connRate = sh.MaxConnectionRate, policy.Rate{}
		}
	}
	if s.overrides.Len() == 0 {
		return l
	}
	c := s.policyCache(ps)
	apply := func(os []policy.Override, conns *int, rate *policy.Rate) {
		for i := range os {
			o := &os[i]
			if o.MaxConnections != nil {
				*conns = o.Conns(*conns, now)
			}
			if o.MaxMessageRate != nil {
				*rate = o.Rate(*rate, now)
			}
		}
	}
	apply(c.site, &l.maxConns, &l.msgRate)
	if ps.domKey != "" {
		// A throttle of the site holds the domains with budgets of
		// their own too.
		if l.domConns > 0 {
			apply(c.site, &l.domConns, new(policy.Rate))
		}
		if !l.domRate.Unlimited() {
			apply(c.site, new(int), &l.domRate)
		}
		apply(c.dom, &l.domConns, &l.domRate)
	} else {
		apply(c.dom, &l.maxConns, &l.msgRate)
	}
	apply(c.prov, &l.provConns, &l.provRate)
	if o := c.bind; o != nil {
		if o.MaxConnections != nil {
			l.maxConns = o.Conns(l.maxConns, now)
		}
		if o.MaxMessageRate != nil {
			l.bindRate = o.Rate(l.bindRate, now)
		}
	}
	return l
}

// pairPolicy is what of the suspensions and rule throttles held covers a
// pair, as of the generations it was read at: the tick asks for every
// pair, twice, and the transactions for theirs, while these change seldom.
// Whether each is in force is judged at the caller's time.
type pairPolicy struct {
	sgen, ogen      uint64
	susp            []policy.Suspension
	site, dom, prov []policy.Override // overrides of the site's, the domain's and the provider's budgets
	bind            *policy.Override  // the binding's
}

// policyCache returns the pair's pairPolicy, reading it again when a
// suspension or an override changed since.
func (s *Scheduler) policyCache(ps *pairShape) *pairPolicy {
	sg, og := s.suspensions.Gen(), s.overrides.Gen()
	if c := ps.pc.Load(); c != nil && c.sgen == sg && c.ogen == og {
		return c
	}
	c := &pairPolicy{sgen: sg, ogen: og,
		susp: s.suspensions.Covering(ps.where.Domain, ps.where.Site, ps.where.Provider, ps.binding)}
	if s.overrides.Len() > 0 {
		for _, k := range ps.siteOverrideKs {
			if o, ok := s.overrides.Lookup(k); ok {
				c.site = append(c.site, o)
			}
		}
		for _, k := range ps.domOverrideKs {
			if o, ok := s.overrides.Lookup(k); ok {
				c.dom = append(c.dom, o)
			}
		}
		if o, ok := s.overrides.Lookup(ps.bindOverrideK); ok {
			c.bind = &o
		}
		for _, k := range ps.provOverrideKs {
			if o, ok := s.overrides.Lookup(k); ok {
				c.prov = append(c.prov, o)
			}
		}
	}
	ps.pc.Store(c)
	return c
}

// suspended returns the suspension covering the pair at now, if any; of
// several, the one that ends last.
func (s *Scheduler) suspended(ps *pairShape, now time.Time) (policy.Suspension, bool) {
	if s.suspensions.Len() == 0 {
		return policy.Suspension{}, false
	}
	var best *policy.Suspension
	c := s.policyCache(ps)
	for i := range c.susp {
		if sp := &c.susp[i]; sp.InForce(now) && (best == nil || sp.Until.After(best.Until)) {
			best = sp
		}
	}
	if best == nil {
		return policy.Suspension{}, false
	}
	return *best, true
}

// msgReady reports whether the pair's message budgets have a token at now,
// taking none; next is when they will.
func (s *Scheduler) msgReady(ps *pairShape, l limits, now time.Time) (bool, time.Time) {
	if l.unlimited() {
		return true, now
	}
	rates := l.rates()
	return s.budgets.Ready(ps.msgKeys[:], rates[:], now)
}

// poolPolicy is the pool's connpool.Policy for a pair: its shaping when a
// Shaper is set, else Options.Pool.Policy.
func (s *Scheduler) poolPolicy(dr *queue.DomainRecord, slot int) connpool.Policy {
	if s.shaper.Load() == nil {
		return s.basePolicy(dr, slot)
	}
	return s.policyOf(dr.Pair(slot))
}

// policyOf is poolPolicy for a pair in hand (the tick has it: no lookup
// of the pair in its domain record).
func (s *Scheduler) policyOf(p *queue.Pair) connpool.Policy {
	ps := s.shapeOf(p)
	if ps == nil {
		return s.basePolicy(p.Domain(), p.Slot())
	}
	l := s.limitsOf(ps, s.clock.Now())
	return connpool.Policy{MaxConnectionsPerBinding: l.pairConns(),
		MaxDeliveriesPerConnection: ps.sh.MaxDeliveriesPerConnection, IdleTimeout: ps.sh.IdleTimeout,
		TLS: tlspolicy.Settings{Mode: tlspolicy.Mode(ps.sh.TLS), MTASTS: ps.sh.MTASTS, DANE: ps.sh.DANE}}
}

// hookShaping is hooks.Registry.ShapingOf's answer.
func (s *Scheduler) hookShaping(dr *queue.DomainRecord, slot int, now time.Time) (hooks.PairShaping, bool) {
	if s.shaper.Load() == nil || !stateOf(dr).isResolved() {
		return hooks.PairShaping{}, false
	}
	ps := s.shapeOf(dr.Pair(slot))
	if ps == nil {
		return hooks.PairShaping{}, false
	}
	l := s.limitsOf(ps, now)
	out := hooks.PairShaping{MaxConnections: l.pairConns(), MaxDeliveriesPerConnection: ps.sh.MaxDeliveriesPerConnection,
		MaxMessageRate: perSecond(tighter(l.msgRate, l.domRate)), MaxConnectionRate: perSecond(tighter(l.connRate, l.domConnRate)),
		Provider: ps.sh.Provider, Site: ps.sh.Site}
	if sp, ok := s.suspended(ps, now); ok {
		out.Suspended, out.SuspendedUntil, out.Reason = true, sp.Until, sp.Reason
	}
	if ok, next := s.msgReady(ps, l, now); !ok {
		out.ThrottledUntil = next
	}
	return out, true
}

// tighter is the lower of two rates (the zero Rate is no limit).
func tighter(a, b policy.Rate) policy.Rate {
	switch {
	case a.Unlimited():
		return b
	case b.Unlimited() || float64(a.Limit()) <= float64(b.Limit()):
		return a
	}
	return b
}

func perSecond(r policy.Rate) float64 {
	if r.Unlimited() {
		return 0
	}
	return float64(r.Limit())
}

// wakeAt runs the pair's maintenance at the clock's time at (a throttled
// pair's next token): one timer per pair, the earliest wins. Close stops
// them all.
func (s *Scheduler) wakeAt(p *queue.Pair, at time.Time) {
	d := at.Sub(s.clock.Now())
	if d < time.Millisecond {
		d = time.Millisecond
	}
	s.timersMu.Lock()
	defer s.timersMu.Unlock()
	if s.timersClosed {
		return
	}
	if w, ok := s.timers[p]; ok && !w.at.After(at) {
		return
	} else if ok {
		w.t.Stop()
	}
	s.timers[p] = &wakeTimer{at: at, t: time.AfterFunc(d, func() {
		s.timersMu.Lock()
		if s.timersClosed {
			s.timersMu.Unlock()
			return
		}
		if w := s.timers[p]; w != nil && w.at.Equal(at) {
			delete(s.timers, p)
		}
		s.timersWG.Add(1)
		s.timersMu.Unlock()
		defer s.timersWG.Done()
		if p.Len() > 0 {
			s.maintain(p, s.clock.Now())
		}
	})}
}

type wakeTimer struct {
	at time.Time
	t  *time.Timer
}

// stopTimers stops every wake timer and waits for those running.
func (s *Scheduler) stopTimers() {
	s.timersMu.Lock()
	s.timersClosed = true
	for p, w := range s.timers {
		w.t.Stop()
		delete(s.timers, p)
	}
	s.timersMu.Unlock()
	s.timersWG.Wait()
}

// expirePolicies logs the suspensions and throttles that ended (each
// tick), and forgets full throttle buckets (each sweep).
func (s *Scheduler) expirePolicies(now time.Time) {
	defer s.saveSuspensions() // those a rule put in force, and those ended
	for _, sp := range s.suspensions.Expire(now) {
		if s.cl != nil {
			s.unshareEnded(kindSuspension, suspensionID(sp), sp.Until)
		}
		s.logPolicy(logging.Policy{Action: "suspension_ended", Source: sp.Source, Rule: sp.Rule, Scope: string(sp.Kind),
			Name: sp.Name, Binding: sp.Binding, Until: sp.Until, ID: sp.ID, Reason: sp.Reason})
	}
	for _, o := range s.overrides.Expire(now) {
		if s.cl != nil {
			s.unshareEnded(kindThrottle, o.Scope, o.Until())
		}
		kind, name, b := splitScopeKey(o.Scope)
		s.logPolicy(logging.Policy{Action: "throttle_ended", Source: policy.SourceRule, Rule: o.Rule, Scope: kind,
			Name: name, Binding: b, Until: o.Until()})
	}
}

// splitScopeKey undoes policy.ScopeKey.
func splitScopeKey(k string) (kind, name, binding string) {
	kind, rest, _ := strings.Cut(k, ":")
	i := strings.LastIndexByte(rest, '|')
	if i < 0 {
		return kind, rest, ""
	}
	return kind, rest[:i], rest[i+1:]
}

// overrideSettings renders an override's values for its log record.
func overrideSettings(rate *policy.Rate, conns *int) string {
	var parts []string
	if rate != nil {
		parts = append(parts, "max_message_rate="+rate.String())
	}
	if conns != nil {
		parts = append(parts, fmt.Sprintf("max_connections=%d", *conns))
	}
	return strings.Join(parts, " ")
}

// SetShaper replaces the shaping configuration (a reload); every pair's
// shaping is resolved again at its next use, and a lowered cap ends
// sessions over it after their transaction. nil is ignored.
func (s *Scheduler) SetShaper(sh *policy.Shaper) {
	if sh == nil {
		return
	}
	s.shaper.Store(sh)
	s.shaperGen.Add(1)
}

// SetRules replaces the response rules (a reload); nil removes them.
func (s *Scheduler) SetRules(r *policy.Rules) { s.rules.Store(r) }

// Suspend puts a suspension in force (an operator's, or adaptive's) and
// logs it; it returns the suspension in force for its scope.
func (s *Scheduler) Suspend(sp policy.Suspension) policy.Suspension {
	if sp.Start.IsZero() {
		sp.Start = s.clock.Now()
	}
	got := s.suspensions.Add(sp)
	s.saveSuspensions()
	s.publish(kindSuspension, suspensionID(got), got, got.Start, got.Until)
	s.logPolicy(logging.Policy{Action: "suspend", Source: got.Source, Rule: got.Rule, Scope: string(got.Kind), Name: got.Name,
		Binding: got.Binding, Until: got.Until, Reason: got.Reason, ID: got.ID})
	return got
}

// Resume lifts the suspension id and logs it; false when there is none.
// The pairs it held get their maintenance at the next tick.
func (s *Scheduler) Resume(id, who, reason string) (policy.Suspension, bool) {
	sp, ok := s.suspensions.Lift(id)
	if !ok {
		if sp, ok = s.liftSharedByID(id, who, reason); ok {
			s.logPolicy(logging.Policy{Action: "resume", Source: policy.SourceOperator, By: who, Rule: sp.Rule, Scope: string(sp.Kind), Name: sp.Name,
				Binding: sp.Binding, Reason: reason, ID: sp.ID})
		}
		return sp, ok
	}
	if ok {
		s.saveSuspensions()
		s.unpublish(kindSuspension, suspensionID(sp), sp.Until, who, reason)
		s.logPolicy(logging.Policy{Action: "resume", Source: policy.SourceOperator, By: who, Rule: sp.Rule, Scope: string(sp.Kind), Name: sp.Name,
			Binding: sp.Binding, Reason: reason, ID: sp.ID})
	}
	return sp, ok
}

// Suspensions lists the suspensions in force at now.
func (s *Scheduler) Suspensions(now time.Time) []policy.Suspension { return s.suspensions.List(now) }

// Throttles lists the rule throttles in force at now.
func (s *Scheduler) Throttles(now time.Time) []policy.Override { return s.overrides.List(now) }

// Unthrottle lifts the rule throttle on scope key at once and logs it.
func (s *Scheduler) Unthrottle(scope, who, reason string) (policy.Override, bool) {
	o, ok := s.overrides.Lift(scope)
	if ok {
		s.unpublish(kindThrottle, scope, o.Until(), who, reason)
		kind, name, b := splitScopeKey(scope)
		s.logPolicy(logging.Policy{Action: "unthrottle", Source: policy.SourceOperator, By: who, Rule: o.Rule, Scope: kind, Name: name, Binding: b,
			Reason: reason})
	}
	return o, ok
}

// HasProvider reports whether the shaping configuration names a provider
// name (an operator's suspension of an unknown provider would do nothing).
func (s *Scheduler) HasProvider(name string) bool {
	sh := s.shaper.Load()
	return sh != nil && sh.HasProvider(name)
}

// ResolvedShaping is a pair's shaping as an operator sees it.
type ResolvedShaping struct {
	Domain, Binding string
	MX              []string // the MX set it was resolved with; nil when not resolved yet
	*policy.Shaping
}

// ResolveShaping resolves the shaping of domain from binding, looking the
// domain's MX set up when it is not known yet (bounded by the lookup
// timeout), with where each value came from.
func (s *Scheduler) ResolveShaping(domain, binding string) (ResolvedShaping, error) {
	sh := s.shaper.Load()
	if sh == nil {
		return ResolvedShaping{}, fmt.Errorf("scheduler: no shaping configured")
	}
	if binding != "" && s.opts.Bindings.ByName(binding) == nil {
		return ResolvedShaping{}, fmt.Errorf("no binding %q", binding)
	}
	key, err := domainOf("x@" + domain)
	if err != nil || key == "" {
		return ResolvedShaping{}, fmt.Errorf("bad domain %q: %v", domain, err)
	}
	var mxs []string
	if dr, ok := s.q.Lookup(key); ok && stateOf(dr).isResolved() {
		mxs = stateOf(dr).mxSet()
	} else if hosts, err := s.pool.Lookup(s.resolveCtx, key); err == nil {
		for _, h := range hosts {
			mxs = append(mxs, h.Name)
		}
	} else {
		s.log.Debug("shaping resolved without an MX set", zap.String("domain", key), zap.Error(err))
	}
	return ResolvedShaping{Domain: key, Binding: binding, MX: mxs, Shaping: sh.Resolve(key, mxs, binding)}, nil
}

// connectFailures counts a failed connection of the pair and reports
// whether it stays under the pair's
// consecutive_connection_failures_before_delay (its mail is not delayed
// yet). Without shaping every failure delays.
func (s *Scheduler) connectFailures(p *queue.Pair) bool {
	ps := s.shapeOf(p)
	if ps == nil || ps.sh.ConsecutiveConnectionFailuresBeforeDelay <= 1 {
		return false
	}
	ds := stateOf(p.Domain())
	ds.mu.Lock()
	defer ds.mu.Unlock()
	slot := p.Slot()
	for len(ds.fails) <= slot {
		ds.fails = append(ds.fails, 0)
	}
	ds.fails[slot]++
	if ds.fails[slot] < ps.sh.ConsecutiveConnectionFailuresBeforeDelay {
		return true
	}
	ds.fails[slot] = 0
	return false
}

// connectedOK ends the pair's run of connection failures.
func (s *Scheduler) connectedOK(dr *queue.DomainRecord, slot int) {
	ds := stateOf(dr)
	ds.mu.Lock()
	if slot < len(ds.fails) {
		ds.fails[slot] = 0
	}
	ds.mu.Unlock()
}

// suspendPair is the hooks.SuspendFunc: adaptive's pause as a suspension
// of the pair.
func (s *Scheduler) suspendPair(dr *queue.DomainRecord, slot int, until time.Time, source, reason string) {
	name := fmt.Sprintf("slot-%d", slot)
	if b := s.opts.Bindings.Get(slot); b != nil {
		name = b.Name
	}
	s.Suspend(policy.Suspension{Kind: policy.ScopePair, Name: dr.Name, Binding: name, Source: source,
		Reason: reason, Start: s.clock.Now(), Until: until})
}
