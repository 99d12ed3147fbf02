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
// dialer's Control callback) or a CONN_ERR. TLS follows the pair's policy
// as internal/tlspolicy plans it (Policy.TLS, the domain's MTA-STS policy,
// DANE): under opportunistic, when a handshake fails the host is
// remembered in a smtpclient.TLSMemory and redialed once in clear text;
// under every other policy a failed handshake, or a required STARTTLS not
// offered, moves on to the next address without a word in clear text and
// defers the pair when none is left (4.7.4 / 4.7.5, naming the policy). Connected, it pops deliveries from its pair's
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

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
	"github.com/mtad/mtad/internal/tlspolicy"

	"github.com/emersion/go-smtp"
)

// Policy is a domain/binding pair's connection policy, the hard caps the
// pool enforces. Zero or negative fields mean no limit (IdleTimeout: the
// pool's default).
type Policy struct {
	MaxConnections             int           // open connections to the domain, all bindings
	MaxConnectionsPerBinding   int           // open connections to the domain from one binding
	MaxDeliveriesPerConnection int           // deliveries one connection carries before QUIT
	IdleTimeout                time.Duration // how long a session with nothing to send waits for work
	// TLS is the pair's TLS policy and whether MTA-STS and DANE apply
	// (the zero value: opportunistic, neither).
	TLS tlspolicy.Settings
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
	// TLSInfo is the TLS the session had and the policy that applied
	// (only the policy when a TLS policy refused the connection).
	TLSInfo tlspolicy.Info
	DSN     bool // the receiver offered DSN (RFC 3461): NOTIFY, RET, ENVID and ORCPT were passed on
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
	// Policy returns the caps of the pair (dr, slot), read when a session
	// opens; nil means no per-domain limits.
	Policy func(dr *queue.DomainRecord, slot int) Policy
	// IdleTimeout is how long a session with an empty queue waits for Wake
	// before QUIT (default 5s).
	IdleTimeout time.Duration
	// ConnectTimeout bounds each TCP connect (default 30s); LookupTimeout
	// each MX resolution (default 30s).
	ConnectTimeout time.Duration
	LookupTimeout  time.Duration
	// Timeouts are the SMTP per-phase limits.
	Timeouts smtpclient.Timeouts
	// DisableTLS never tries STARTTLS, whatever a pair's Policy.TLS says
	// (an MTA-STS policy in enforce mode still requires it).
	DisableTLS bool
	// TLSPolicy makes each session's TLS plan from its pair's Policy.TLS:
	// MTA-STS, DANE, roots, metrics. nil is one with the system roots and
	// neither MTA-STS nor DANE.
	TLSPolicy *tlspolicy.Engine
	// DisableChunking keeps to DATA where BDAT is offered (config
	// delivery.chunking: false).
	DisableChunking bool
	// TLSMemory remembers hosts whose handshake failed under the
	// opportunistic policy (the only one that then redials in clear
	// text); nil makes one that forgets after TLSFailureTTL (default 1h).
	TLSMemory     *smtpclient.TLSMemory
	TLSFailureTTL time.Duration
	// Now is the clock for expiry checks and hook calls; nil is time.Now.
	Now func() time.Time
	// Logger receives connection records; nil discards them.
	Logger *zap.Logger
	// Grantor is asked whether a session should give up its slot between
	// transactions, and told when a slot is back; nil never yields.
	Grantor Grantor
	// Metrics registers mtad_smtp_transaction_seconds (reused when
	// already there); nil measures nothing.
	Metrics prometheus.Registerer
	// Control, when set, runs in the dialer's Control callback after the
	// pool has taken the socket's descriptor (tests use it to make a
	// connect fail in a chosen way).
	Control func(network, address string, c syscall.RawConn) error
}

// Grantor is the one grantor of connection slots (the scheduler): the
// pool enforces the hard caps and dials; who gets a slot under them, and
// when a session should end to give its slot to another pair, is the
// grantor's to decide. Both methods are called from session goroutines
// with no pool lock held, and must not block for long.
type Grantor interface {
	// Yield is asked before each transaction of a session on p: true ends
	// the session (QUIT) so that its slot goes to a pair waiting for one,
	// or because p is over a cap lowered since the session began.
	Yield(p *queue.Pair) bool
	// Admit is asked before a session takes a delivery of p from its
	// queue: 0 takes a token from the pair's message budgets and lets it
	// go; a positive wait says when the next token is due (nothing was
	// taken). A session waits that long when it is within its idle
	// timeout, else it ends and the grantor reopens the pair when the
	// token is due.
	Admit(p *queue.Pair) (wait time.Duration)
	// Opened says a session of p has taken its slot (whoever called
	// Open); every Opened is followed by one Released, unless the pool is
	// closing.
	Opened(p *queue.Pair)
	// Released says a session of p has ended and its slot is free again
	// (after the session's counts were given back). It is not called once
	// the pool is closing.
	Released(p *queue.Pair)
}

type noGrantor struct{}

func (noGrantor) Yield(*queue.Pair) bool          { return false }
func (noGrantor) Admit(*queue.Pair) time.Duration { return 0 }
func (noGrantor) Opened(*queue.Pair)              {}
func (noGrantor) Released(*queue.Pair)            {}

// Pool is the set of outbound connections. The scheduler's grantor opens
// them (hooks.Opener is the grantor's face, not the pool's).
type Pool struct {
	opts Options
	tls  *smtpclient.TLSMemory
	tlsp *tlspolicy.Engine
	log  *zap.Logger
	now  func() time.Time

	total atomic.Int64 // open + connecting, all pairs

	txTime prometheus.Observer // nil without Options.Metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	idle   map[*queue.Pair][]*session // sessions waiting for work, per pair
	live   map[*session]struct{}      // every running session, for a forced Close
	grant  Grantor
}

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
		opts.Policy = func(*queue.DomainRecord, int) Policy { return Policy{} }
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
		opts:  opts,
		tls:   opts.TLSMemory,
		tlsp:  opts.TLSPolicy,
		log:   opts.Logger,
		now:   opts.Now,
		idle:  make(map[*queue.Pair][]*session),
		live:  make(map[*session]struct{}),
		grant: opts.Grantor,
	}
	if p.grant == nil {
		p.grant = noGrantor{}
	}
	if p.tls == nil {
		p.tls = smtpclient.NewTLSMemory(opts.TLSFailureTTL, 10000, nil)
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	if p.tlsp == nil {
		e, err := tlspolicy.New(tlspolicy.Options{Logger: p.log})
		if err != nil {
			return nil, err
		}
		p.tlsp = e
	}
	if p.now == nil {
		p.now = time.Now
	}
	if opts.Metrics != nil {
		h, err := transactionHistogram(opts.Metrics)
		if err != nil {
			return nil, err
		}
		p.txTime = h
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Max returns the global cap.
func (p *Pool) Max() int { return p.opts.MaxConnections }

// Total returns the connections open or being set up, system-wide.
func (p *Pool) Total() int { return int(p.total.Load()) }

// Stats is a snapshot of the pool for metrics and /api/v1/status (JSON
// keys snake_case, as every key of the admin API).
type Stats struct {
	Total int `json:"total"` // open + connecting
	Idle  int `json:"idle"`  // sessions waiting for work
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

// Policy returns the policy the pool applies to the pair (dr, slot).
func (p *Pool) Policy(dr *queue.DomainRecord, slot int) Policy { return p.opts.Policy(dr, slot) }

// Open starts up to n sessions for the pair (dr, slot) and returns how many
// it started. Each takes its slot before anything else — under the global
// cap, the domain's and the pair's — and Open stops at the first cap
// reached. It returns 0 after Close.
func (p *Pool) Open(dr *queue.DomainRecord, slot int, n int) int {
	if n <= 0 {
		return 0
	}
	pair := dr.Pair(slot)
	pol := p.opts.Policy(dr, slot)
	opened := 0
	for opened < n {
		if !p.takeGlobal() {
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
		p.wg.Add(1)
		p.mu.Unlock()
		p.grant.Opened(pair)
		go s.run()
		opened++
	}
	return opened
}

// ReclaimIdle tells up to k sessions idling on pairs other than except to
// QUIT, and returns how many it told: the grantor calls it when a pair with
// work found no room, so that sessions waiting on quiet domains do not hold
// slots for their idle timeout. Each such session's slot comes back through
// Grantor.Released.
func (p *Pool) ReclaimIdle(except *queue.Pair, k int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0
	}
	told := 0
	for other, waiters := range p.idle {
		if other == except {
			continue
		}
		for len(waiters) > 0 && told < k {
			w := waiters[len(waiters)-1]
			p.removeIdleLocked(other, len(waiters)-1)
			waiters = p.idle[other]
			w.reclaimed.Store(true)
			w.wake <- struct{}{} // capacity 1; w was on an idle list, so nothing is pending
			told++
		}
		if told == k {
			break
		}
	}
	return told
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

// transactionHistogram registers mtad_smtp_transaction_seconds on m, or
// returns the one a pool before this one registered.
func transactionHistogram(m prometheus.Registerer) (prometheus.Histogram, error) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "mtad_smtp_transaction_seconds",
		Help: "Time of one outbound SMTP transaction, MAIL FROM to the reply to the end of data (or its failure), on an open connection.",
		// 5 ms (a loopback sink) to 10 min (RFC 5321's DATA termination timeout).
		Buckets: prometheus.ExponentialBucketsRange(0.005, 600, 14),
	})
	err := m.Register(h)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(prometheus.Histogram); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("connpool: registering mtad_smtp_transaction_seconds: %w", err)
	}
	return h, nil
}
