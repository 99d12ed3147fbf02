// Package connpool owns mtad's outbound connections: the slots that count
// them against the global, per-domain and per-domain/binding caps, dialing
// a domain's mail exchangers from a binding's source address, and the SMTP
// sessions that drain a domain/binding pair's active queue, one goroutine
// per connection.
//
// # Caps
//
// A connection takes its slot before it dials, in one step that checks
// every cap (the global count here with a compare-and-swap, the domain and
// pair counts with queue.Pair.TryConnect), and gives it back when the
// session ends, so open plus connecting connections never pass a cap
// (DESIGN invariant 3), whatever hooks call Open. Leaving the reserve
// unused is the caller's policy (hooks.DefaultMaintain), not the pool's.
//
// # Sessions
//
// A session resolves the domain's MX hosts, tries them in preference order
// and each of their addresses in turn, and firing post_initiate_connection_smtp
// after every attempt with the socket's file descriptor (taken in the
// dialer's Control callback) or a CONN_ERR. STARTTLS is opportunistic: when
// a handshake fails the host is remembered in a smtpclient.TLSMemory and
// redialed once in clear text. Connected, it pops deliveries from its pair's
// active queue and sends them until the queue is empty — then it waits up to
// IdleTimeout for Wake before saying QUIT — or until the domain's
// max_deliveries_per_connection. Every result goes to the Outcomes the pool
// was given; the pool never decides a delivery's future itself.
//
// Bodies are streamed from the spool (Bodies.OpenBody) into the client and
// closed when the transaction ends: a session holds a chunk of a body at a
// time, never all of it. A body to a receiver without 8BITMIME, or an
// SMTPUTF8 message to one without SMTPUTF8, is converted on the way by
// internal/conform (two streaming passes over the spooled body).
//
// It must never hold a body longer than its transaction, never dial without
// a slot, and never outlive Close: every session goroutine is owned by the
// pool's context and WaitGroup.
package connpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"

	"github.com/emersion/go-smtp"
)

// Policy is the per-domain connection policy. Zero or negative fields mean
// no limit.
type Policy struct {
	MaxConnections             int // open connections to the domain, all bindings
	MaxConnectionsPerBinding   int // open connections to the domain from one binding
	MaxDeliveriesPerConnection int // deliveries one connection carries before QUIT
}

// Resolver finds a domain's mail exchangers; *mx.Resolver is one. Its
// errors carry an mx.Kind (mx.KindOf) and wrap an *outcome.Error.
type Resolver interface {
	Lookup(ctx context.Context, domain string) ([]mx.Host, error)
}

// Bindings gives a binding slot's source address and EHLO name;
// *binding.Set is one. Get returns nil for an unknown slot.
type Bindings interface {
	Get(slot int) *binding.Binding
}

// Bodies opens a spooled message's body as a stream, one spool chunk in
// memory at a time; *spool.Spool is one. A session closes each body when
// its transaction ends.
type Bodies interface {
	OpenBody(id string) (*spool.BodyReader, error)
}

// Attempt says where a delivery was tried, for the delivery log.
type Attempt struct {
	Binding  string // binding name
	MX       string // MX host name, "" when none was reached
	RemoteIP string // remote address, "" when none was reached
	TLS      bool   // STARTTLS was in effect
	DSN      bool   // the receiver offered DSN (RFC 3461): NOTIFY, RET, ENVID and ORCPT were passed on
}

// Outcomes receives what the pool's sessions did; the scheduler implements
// it. Its methods are called from session goroutines, concurrently, and
// must not block for long (a spool write is fine).
type Outcomes interface {
	// Result reports one delivery popped from a pair's queue: res is the
	// remote side's answer when err is nil. A non-nil err means the
	// delivery was not (fully) attempted and every recipient shares it:
	// ErrExpired when it had expired before it was sent, a connection
	// failure in the middle of the transaction (I/O error, timeout, 421),
	// or a local failure to read the body. The delivery now belongs to
	// the callee.
	Result(d *queue.Delivery, at Attempt, res *smtpclient.Result, err error)
	// ConnectFailed reports that a session found no usable connection for
	// the pair: every MX host and address failed, or the MX lookup did.
	// err wraps an *outcome.Error; it is permanent only for a permanent
	// DNS answer (mx.KindOf says which: NXDOMAIN, null MX, prohibited IP),
	// temporary for everything else. Nothing was popped from the pair.
	ConnectFailed(p *queue.Pair, at Attempt, err error)
}

// ErrExpired is the error Result gets for a delivery whose Expires had
// passed when a session popped it; nothing was sent.
var ErrExpired = &outcome.Error{Phase: outcome.PhaseQueue, Enhanced: smtp.EnhancedCode{4, 4, 7},
	Message: "message expired in the queue"}

// Options configure a Pool. Fields marked required must be set.
type Options struct {
	MaxConnections int      // global cap on open and connecting connections; required, > 0
	Resolver       Resolver // required
	Bindings       Bindings // required: binding slot → source address and EHLO name
	Bodies         Bodies   // required
	Outcomes       Outcomes // required
	Hooks          *hooks.Registry
	// Policy returns the domain's caps; nil means no per-domain limits.
	Policy func(domain string) Policy
	// IdleTimeout is how long a session with an empty queue waits for Wake
	// before QUIT (default 5s).
	IdleTimeout time.Duration
	// ConnectTimeout bounds each TCP connect (default 30s); LookupTimeout
	// each MX resolution (default 30s).
	ConnectTimeout time.Duration
	LookupTimeout  time.Duration
	// Timeouts are the SMTP per-phase limits.
	Timeouts smtpclient.Timeouts
	// DisableTLS never tries STARTTLS (config delivery.tls: disabled).
	DisableTLS bool
	// DisableChunking keeps to DATA where BDAT is offered (config
	// delivery.chunking: false).
	DisableChunking bool
	// TLSMemory remembers hosts whose handshake failed; nil makes one that
	// forgets after TLSFailureTTL (default 1h).
	TLSMemory     *smtpclient.TLSMemory
	TLSFailureTTL time.Duration
	// Now is the clock for expiry checks and hook calls; nil is time.Now.
	Now func() time.Time
	// Logger receives connection records; nil discards them.
	Logger *zap.Logger
	// OnSlotFree, when set, is called (from the exiting session's
	// goroutine, no lock held) with a pair that the global cap turned away
	// and that still has work, each time a session frees its slot; the
	// scheduler runs that pair's maintenance so the slot is used at once.
	OnSlotFree func(pair *queue.Pair)
	// Control, when set, runs in the dialer's Control callback after the
	// pool has taken the socket's descriptor (tests use it to make a
	// connect fail in a chosen way).
	Control func(network, address string, c syscall.RawConn) error
}

// Pool is the set of outbound connections. It implements hooks.Opener.
type Pool struct {
	opts Options
	tls  *smtpclient.TLSMemory
	log  *zap.Logger
	now  func() time.Time

	total atomic.Int64 // open + connecting, all pairs

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	idle   map[*queue.Pair][]*session // sessions waiting for work, per pair
	live   map[*session]struct{}      // every running session, for a forced Close
	// starved are pairs refused a connection at the global cap; each slot
	// a session frees goes to one of them (Options.OnSlotFree). The value
	// counts the slots promised to a pair that has no connection: it stays
	// in the set until it has one, so that no other pair's extra connection
	// takes the slot on its way (see pickStarvedLocked and Open).
	starved map[*queue.Pair]int
	// nstarved is len(starved), read without mu on every delivery.
	nstarved atomic.Int32
	// yielding counts, per pair, the sessions that are ending to give
	// their slot to a starved pair (see yieldTo).
	yielding map[*queue.Pair]int
}

var _ hooks.Opener = (*Pool)(nil)

// New checks opts and returns a pool with no connections.
func New(opts Options) (*Pool, error) {
	switch {
	case opts.MaxConnections <= 0:
		return nil, fmt.Errorf("connpool: MaxConnections %d must be positive", opts.MaxConnections)
	case opts.Resolver == nil:
		return nil, errors.New("connpool: Options.Resolver is required")
	case opts.Bindings == nil:
		return nil, errors.New("connpool: Options.Bindings is required")
	case opts.Bodies == nil:
		return nil, errors.New("connpool: Options.Bodies is required")
	case opts.Outcomes == nil:
		return nil, errors.New("connpool: Options.Outcomes is required")
	}
	if opts.Hooks == nil {
		opts.Hooks = hooks.NewRegistry()
	}
	if opts.Policy == nil {
		opts.Policy = func(string) Policy { return Policy{} }
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Second
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 30 * time.Second
	}
	if opts.LookupTimeout <= 0 {
		opts.LookupTimeout = 30 * time.Second
	}
	if opts.TLSFailureTTL <= 0 {
		opts.TLSFailureTTL = time.Hour
	}
	p := &Pool{
		opts:     opts,
		tls:      opts.TLSMemory,
		log:      opts.Logger,
		now:      opts.Now,
		idle:     make(map[*queue.Pair][]*session),
		live:     make(map[*session]struct{}),
		starved:  make(map[*queue.Pair]int),
		yielding: make(map[*queue.Pair]int),
	}
	if p.tls == nil {
		p.tls = smtpclient.NewTLSMemory(opts.TLSFailureTTL, 10000, nil)
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	if p.now == nil {
		p.now = time.Now
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Max returns the global cap.
func (p *Pool) Max() int { return p.opts.MaxConnections }

// Total returns the connections open or being set up, system-wide.
func (p *Pool) Total() int { return int(p.total.Load()) }

// Stats is a snapshot of the pool for metrics.
type Stats struct {
	Total int // open + connecting
	Idle  int // sessions waiting for work
}

// Stats returns the current counts. Per-domain counts are the domain
// record's (queue.DomainRecord.Open and Connecting).
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	idle := 0
	for _, s := range p.idle {
		idle += len(s)
	}
	p.mu.Unlock()
	return Stats{Total: p.Total(), Idle: idle}
}

// Policy returns the policy the pool applies to domain.
func (p *Pool) Policy(domain string) Policy { return p.opts.Policy(domain) }

// Open starts up to n sessions for the pair (dr, slot) and returns how many
// it started. Each takes its slot before anything else — under the global
// cap, the domain's and the pair's — and Open stops at the first cap
// reached. It returns 0 after Close.
func (p *Pool) Open(dr *queue.DomainRecord, slot int, n int) int {
	if n <= 0 {
		return 0
	}
	pair := dr.Pair(slot)
	pol := p.opts.Policy(dr.Name)
	opened := 0
	for opened < n {
		if pair.Open()+pair.Connecting() > 0 && p.zeroStarved(pair) {
			// First connections first: a pair that has one leaves the
			// slot to a starved pair that has none.
			break
		}
		if !p.takeGlobal() {
			p.reclaim(pair, n-opened)
			break
		}
		if !pair.TryConnect(pol.MaxConnectionsPerBinding, pol.MaxConnections) {
			p.total.Add(-1)
			break
		}
		s := &session{pool: p, pair: pair, policy: pol, wake: make(chan struct{}, 1)}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pair.ConnectFailed()
			p.total.Add(-1)
			break
		}
		p.live[s] = struct{}{}
		if _, ok := p.starved[pair]; ok {
			p.forgetStarvedLocked(pair) // it has its connection
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go s.run()
		opened++
	}
	return opened
}

// Wait is hooks.Opener's: the default maintenance action found no room
// under max − reserve for the pair's n more connections. The pair is
// remembered as starved, as when Open is refused at the hard cap, so a
// freed slot comes to it (and a pair with a connection opens no second
// one while it has none), and sessions idling elsewhere are told to quit.
func (p *Pool) Wait(dr *queue.DomainRecord, slot int, n int) {
	if n > 0 {
		p.reclaim(dr.Pair(slot), n)
	}
}

// reclaim is called when pair wants k more connections and the global cap
// is reached: up to k sessions idling on other pairs are told to quit, and
// pair is remembered as starved so the slots they free come to it. Without
// this, sessions idling on quiet domains hold the cap for their idle timeout
// while a busy domain's mail waits.
func (p *Pool) reclaim(pair *queue.Pair, k int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if _, ok := p.starved[pair]; !ok {
		p.nstarved.Add(1)
	}
	// A fresh refusal: any slot promised before did not reach the pair.
	p.starved[pair] = 0
	for other, waiters := range p.idle {
		if other == pair {
			continue
		}
		for len(waiters) > 0 && k > 0 {
			w := waiters[len(waiters)-1]
			p.removeIdleLocked(other, len(waiters)-1)
			waiters = p.idle[other]
			w.reclaimed.Store(true)
			w.wake <- struct{}{} // capacity 1; w was on an idle list, so nothing is pending
			k--
		}
		if k == 0 {
			return
		}
	}
}

// takeStarved returns the starved pair a freed slot should go to, or nil
// (see pickStarvedLocked).
func (p *Pool) takeStarved() *queue.Pair {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pickStarvedLocked(nil)
}

// pickStarvedLocked chooses the starved pair, other than exclude, that the
// next free slot goes to: one with work and no connection at all, the one
// promised fewest slots first, or else one with work that wants another
// connection. A pair with no connection stays in the set, one slot more
// promised, until Open gives it its connection; the other kind leaves it.
// Pairs whose work is gone (delivered by another session, expired) are
// forgotten on the way. p.mu is held.
func (p *Pool) pickStarvedLocked(exclude *queue.Pair) *queue.Pair {
	var zero, more *queue.Pair
	for other, promised := range p.starved {
		switch {
		case other.Len() == 0:
			p.forgetStarvedLocked(other)
		case other == exclude:
		case other.Open()+other.Connecting() == 0:
			if zero == nil || promised < p.starved[zero] {
				zero = other
			}
		case more == nil:
			more = other
		}
	}
	if zero != nil {
		p.starved[zero]++
		return zero
	}
	if more != nil {
		p.forgetStarvedLocked(more)
	}
	return more
}

func (p *Pool) forgetStarvedLocked(pair *queue.Pair) {
	delete(p.starved, pair)
	p.nstarved.Add(-1)
}

// yieldTo returns the starved pair a session of pair should end for and
// give its slot to, or nil: when another pair with work was refused a
// connection at the global cap, and pair can spare this session (it keeps
// another one, or has no work left). So at the cap every pair with work
// gets one connection before any gets a second, and a session does not
// idle on a slot another pair is waiting for. The session is counted as
// yielding until doneYielding.
func (p *Pool) yieldTo(pair *queue.Pair) *queue.Pair {
	if p.nstarved.Load() == 0 {
		return nil
	}
	hasWork := pair.Len() > 0
	if hasWork && pair.Open() <= 1 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if hasWork && pair.Open()-p.yielding[pair] <= 1 {
		return nil // the other sessions of the pair are leaving already
	}
	other := p.pickStarvedLocked(pair)
	if other != nil {
		p.yielding[pair]++
	}
	return other
}

// zeroStarved reports whether a pair other than pair, with work and no
// connection at all, was refused one at the global cap (or is on its way
// to the slot promised to it).
func (p *Pool) zeroStarved(pair *queue.Pair) bool {
	if p.nstarved.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for other := range p.starved {
		switch {
		case other.Len() == 0:
			p.forgetStarvedLocked(other)
		case other != pair && other.Open()+other.Connecting() == 0:
			return true
		}
	}
	return false
}

// handedOff is called once the slot handed to pair (OnSlotFree) has been
// offered: if pair still has no connection and was not refused again
// meanwhile, its maintenance chose not to open one (a hook holding it at
// zero, a suspended domain), so it stops counting as starved. Otherwise it
// would hold every other pair to one connection, and draw their sessions'
// slots, for as long as it keeps its work.
func (p *Pool) handedOff(pair *queue.Pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if promised, ok := p.starved[pair]; ok && promised > 0 && pair.Open()+pair.Connecting() == 0 {
		p.forgetStarvedLocked(pair)
	}
}

// doneYielding ends the count yieldTo started for a session of pair.
func (p *Pool) doneYielding(pair *queue.Pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.yielding[pair]--; p.yielding[pair] <= 0 {
		delete(p.yielding, pair)
	}
}

// takeGlobal reserves one slot under the global cap.
func (p *Pool) takeGlobal() bool {
	limit := int64(p.opts.MaxConnections)
	for {
		cur := p.total.Load()
		if cur >= limit {
			return false
		}
		if p.total.CompareAndSwap(cur, cur+1) {
			return true
		}
	}
}

// Wake hands new work on the pair to one of its idle sessions and reports
// whether there was one; when there was not, the caller should run the
// pair's maintenance so the work does not wait for the next tick.
func (p *Pool) Wake(pair *queue.Pair) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	waiters := p.idle[pair]
	if len(waiters) == 0 {
		return false
	}
	s := waiters[len(waiters)-1]
	p.removeIdleLocked(pair, len(waiters)-1)
	s.wake <- struct{}{} // capacity 1, and a session is idle-listed at most once
	return true
}

// removeIdleLocked drops waiters[i] of the pair's idle list; p.mu is held.
func (p *Pool) removeIdleLocked(pair *queue.Pair, i int) {
	w := p.idle[pair]
	last := len(w) - 1
	w[i] = w[last]
	w[last] = nil
	w = w[:last]
	if len(w) == 0 {
		delete(p.idle, pair)
	} else {
		p.idle[pair] = w
	}
}

// Close stops the pool: no new sessions, idle sessions QUIT, busy ones
// finish their current transaction and QUIT. When ctx ends first, the
// remaining connections are closed under them (their deliveries are
// reported as connection failures, so nothing is lost: the spool still
// holds them). Close waits for every session goroutine either way.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	for s := range p.live {
		s.forceClose()
	}
	p.mu.Unlock()
	<-done
	return fmt.Errorf("connpool: close: sessions forced closed: %w", ctx.Err())
}

// source returns the binding of slot as the pool dials from it.
func (p *Pool) source(slot int) (source, error) {
	b := p.opts.Bindings.Get(slot)
	if b == nil {
		return source{name: fmt.Sprintf("slot-%d", slot)}, fmt.Errorf("connpool: no binding in slot %d", slot)
	}
	return source{name: b.Name, addr: b.Addr, ehlo: b.EHLO}, nil
}
