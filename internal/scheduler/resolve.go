package scheduler

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/queue"
)

// A domain is resolved before any of its pairs is granted a slot: its MX
// host set names its site and provider, which decide its shaping, and a
// domain whose lookup fails needs no slot at all — its mail bounces (a
// permanent answer) or is deferred (a temporary one) at the speed of DNS,
// not at one slot per new domain per tick. Resolutions run on a fixed set
// of workers owned by the scheduler; the maintenance of a domain not yet
// resolved only asks for one.

const (
	// resolveWorkers is how many lookups run at once.
	resolveWorkers = 64
	// resolveQueue bounds the domains waiting for a worker; a domain that
	// finds it full asks again at its next maintenance.
	resolveQueue = 4096
	// siteRefresh is how long a resolved MX set is used before it is
	// looked up again (in the background: the old one serves meanwhile).
	siteRefresh = 10 * time.Minute
)

// domainState is the scheduler's per-domain state, kept on the domain
// record (queue.DomainRecord.Ext) so that it is forgotten with it.
type domainState struct {
	mu        sync.Mutex
	resolving bool
	resolved  bool      // mx holds a successful answer
	at        time.Time // when it was resolved
	mx        []string  // the MX host names, in preference order
	// resolvedAt is at as unix nanos once resolved (0 before), read
	// without mu by the tick.
	resolvedAt atomic.Int64
	// shapes are the pairs' shapings by binding slot (shape.go): read
	// without mu, replaced whole (copy on write) under it.
	shapes atomic.Pointer[[]*pairShape]
	fails  []int     // consecutive connection failures, by binding slot
	view   viewStats // what settle tells the operator's views (views.go)
}

func (ds *domainState) isResolved() bool { return ds.resolvedAt.Load() != 0 }

func (ds *domainState) mxSet() []string {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return append([]string(nil), ds.mx...)
}

func stateOf(dr *queue.DomainRecord) *domainState {
	if v := dr.Ext(); v != nil {
		return v.(*domainState)
	}
	return dr.InitExt(&domainState{}).(*domainState)
}

// routable reports whether the domain has a resolved MX set to shape its
// pairs by; when it has none, or an old one, a resolution is queued.
func (s *Scheduler) routable(dr *queue.DomainRecord, now time.Time) bool {
	if at := dr.Resolved(); at != 0 && now.UnixNano()-at < int64(siteRefresh) {
		return true // the tick's path at 100k pairs: no lock, no other object
	}
	ds := stateOf(dr)
	ds.mu.Lock()
	resolved, stale := ds.resolved, !ds.resolved || now.Sub(ds.at) >= siteRefresh
	queue := stale && !ds.resolving
	if queue {
		ds.resolving = true
	}
	ds.mu.Unlock()
	if queue {
		select {
		case s.resolveCh <- dr:
		default:
			ds.mu.Lock()
			ds.resolving = false
			ds.mu.Unlock()
		}
	}
	return resolved
}

// startResolvers starts the lookup workers; Close stops them.
func (s *Scheduler) startResolvers() {
	for range resolveWorkers {
		s.resolveWG.Add(1)
		go func() {
			defer s.resolveWG.Done()
			for {
				select {
				case <-s.resolveCtx.Done():
					return
				case dr := <-s.resolveCh:
					s.resolve(dr)
				}
			}
		}()
	}
}

// resolve looks the domain up, records the answer, warms its MTA-STS
// policy when its pairs honour MTA-STS, and then runs the maintenance of
// its pairs with work — or settles their mail when the lookup failed.
func (s *Scheduler) resolve(dr *queue.DomainRecord) {
	hosts, err := s.pool.Lookup(s.resolveCtx, dr.Name)
	if s.resolveCtx.Err() != nil {
		return
	}
	ds := stateOf(dr)
	pairs := dr.Pairs(nil)
	if err == nil {
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = h.Name
		}
		ds.mu.Lock()
		if !slices.Equal(names, ds.mx) {
			ds.shapes.Store(nil) // a new site: shaping again
		}
		ds.mx = names
		ds.mu.Unlock()
		// The domain is not marked resolved until its MTA-STS policy
		// is known: no slot is granted meanwhile, so a policy fetch of
		// seconds holds a resolver worker, not a connection slot, and
		// the first session's plan finds the policy cached.
		s.prefetchSTS(dr, pairs)
	}
	now := s.clock.Now()
	ds.mu.Lock()
	ds.resolving = false
	if err == nil {
		ds.resolved, ds.at = true, now
		ds.resolvedAt.Store(now.UnixNano())
		dr.SetResolved(now.UnixNano())
	}
	resolvedBefore := ds.resolved
	ds.mu.Unlock()
	if err != nil {
		if resolvedBefore {
			// A refresh failed: keep the old answer; sessions resolve
			// for themselves and report what they find.
			s.log.Debug("MX refresh failed; the previous answer stays", zap.String("domain", dr.Name), zap.Error(err))
			return
		}
		cerr := connpool.LookupError(err)
		for _, p := range pairs {
			if p.Len() == 0 {
				continue
			}
			s.pool.LookupFailed(dr, p.Slot(), err)
			s.ConnectFailed(p, connpool.Attempt{}, cerr)
		}
		return
	}
	for _, p := range pairs {
		if p.Len() > 0 {
			s.maintain(p, now)
		}
	}
}

// prefetchSTS warms the domain's MTA-STS policy (tlspolicy's Prefetch)
// when a pair of it with work has mta_sts on in its shaping.
func (s *Scheduler) prefetchSTS(dr *queue.DomainRecord, pairs []*queue.Pair) {
	e := s.opts.Pool.TLSPolicy
	if e == nil || s.opts.Pool.DisableTLS {
		return
	}
	// A routed domain's mail goes to its route, never to its MX hosts:
	// no MTA-STS policy applies (the session does not ask either), and
	// its lookups must not leave the machine.
	if r, ok := s.opts.Pool.Resolver.(interface{ Routed(string) bool }); ok && r.Routed(dr.Name) {
		return
	}
	for _, p := range pairs {
		if p.Len() > 0 && s.poolPolicy(dr, p.Slot()).TLS.MTASTS {
			e.Prefetch(s.resolveCtx, dr.Name)
			return
		}
	}
}

// stopResolvers ends the workers and waits for them.
func (s *Scheduler) stopResolvers(context.Context) {
	s.resolveCancel()
	s.resolveWG.Wait()
}
