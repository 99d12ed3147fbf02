// Package hooks owns mtad's hook chains — the Go face of Momentum's C hooks —
// their signatures, the CONN_ERR codes a connection attempt yields instead of
// a file descriptor, the default maintenance action, and the table of hook
// plugins. It never starts a goroutine, opens a connection or reads a clock
// itself: the scheduler and the connection pool call the chains, and the
// default action opens connections through an Opener they supply.
//
// # Chains
//
// A Registry is a value holding three chains; tests and daemons build their
// own, there is no global one.
//
//   - MailQueueMaintain (Momentum's __mail_queue_maintain) runs once per
//     maintenance tick for each domain/binding pair with work. Hooks
//     registered with RegisterFirst run first — each one registered ahead of
//     those already there, as Momentum's _hook_first inserts at the head —
//     then those registered with RegisterLast in the order registered, then
//     the default action (SetDefault). The first hook to return non-zero
//     stops the chain, and the default does not run. A hook that only
//     observes registers first and returns 0; a hook that decides for the
//     pair returns the number of connections it opened, or Handled when it
//     opened none (to hold the pair at zero this tick).
//   - PostInitiateConnectionSMTP runs after every connection attempt with
//     the connection's file descriptor (≥ 0) or a negative ConnErr.
//   - PostSessionSMTP (ours) runs when an SMTP session on a pair ends.
//
// The two observer chains run every hook, in the same first/last order;
// their hooks return nothing and cannot stop the chain.
//
// Registration is meant to happen before the daemon starts calling the
// chains; it is nevertheless safe at any time: a chain publishes an immutable
// snapshot of its hooks on each registration (copy on write), and Call reads
// the snapshot without locking. Call is safe for concurrent use. A hook must
// be quick, must not block, and must not panic.
//
// # Plugins
//
// Built-in and third-party hooks are plugins, added the way database/sql
// drivers are: a package registers a Plugin under a name in its init, the
// daemon imports it for that side effect, and the configuration enables it
// by name (Enable). A complete plugin:
//
//	package slowstart
//
//	import (
//		"fmt"
//		"time"
//
//		"github.com/mtad/mtad/internal/hooks"
//		"github.com/mtad/mtad/internal/queue"
//	)
//
//	func init() { hooks.RegisterPlugin("slowstart", New) }
//
//	// New holds every pair to at most `max` new connections per tick.
//	func New(reg *hooks.Registry, cfg hooks.PluginConfig) error {
//		max := 2
//		for k, v := range cfg.Settings {
//			switch k {
//			case "max":
//				n, ok := v.(int)
//				if !ok || n < 1 {
//					return fmt.Errorf("hooks.settings.slowstart.max: want a positive integer, got %v", v)
//				}
//				max = n
//			default:
//				return fmt.Errorf("hooks.settings.slowstart.%s: unknown setting", k)
//			}
//		}
//		reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, sl *queue.Pair,
//			now time.Time, goalsz, reserve int) int {
//			if sl.Open()+sl.Connecting() >= max {
//				return hooks.Handled // hold the pair: no new connections this tick
//			}
//			return 0 // let the rest of the chain and the default decide
//		})
//		return nil
//	}
//
// and in cmd/mtad: import _ ".../hooks/slowstart", then
// hooks.Enable(reg, cfg.Hooks.Plugins, cfg.Hooks.Settings, base).
//
// The plugin table is the package's one piece of mutable package-level state,
// as in database/sql: written by init functions, read by Enable, guarded by a
// mutex.
package hooks

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtad/mtad/internal/queue"
)

// Handled is what a maintain hook returns to stop the chain (and the
// default) when it opened no connections, holding the pair at zero new
// connections this tick. A hook that opened connections returns how many.
const Handled = -1

// MaintainFunc is a __mail_queue_maintain hook, called for the pair (dr,
// slot), whose active queue is sl, at the tick's time now. goalsz is how
// many new connections the pair should get this tick; reserve is how many
// slots under the global cap the default action leaves unused. It returns 0
// to pass the pair on down the chain, or non-zero (connections opened, or
// Handled) to decide for the pair and stop the chain.
type MaintainFunc func(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz int, reserve int) int

// PostInitiateFunc is a post_initiate_connection_smtp hook, called after a
// connection attempt for the pair (dr, slot) with the connection's file
// descriptor, or a negative ConnErr when no connection was made. There is
// no message behind a connection: a hook that wants one peeks at the head
// of dr.Pair(slot).
type PostInitiateFunc func(dr *queue.DomainRecord, slot int, now time.Time, connFD int)

// SessionResult sums up an SMTP session on a pair, reported when it ends.
type SessionResult struct {
	Delivered int  // recipients accepted (2xx)
	Deferred  int  // recipients temporarily refused (4xx) or left undone
	Failed    int  // recipients permanently refused (5xx)
	LastCode  int  // the last reply code of the session, 0 if none
	Code421   bool // a 421 (service closing) at any point of the session
}

// PostSessionFunc is called when an SMTP session on the pair (dr, slot)
// ends, with its result.
type PostSessionFunc func(dr *queue.DomainRecord, slot int, now time.Time, r SessionResult)

// Registry holds the hook chains. Build one with NewRegistry and pass it to
// whatever calls or registers hooks.
type Registry struct {
	MailQueueMaintain          *MaintainChain
	PostInitiateConnectionSMTP *PostInitiateChain
	PostSessionSMTP            *PostSessionChain

	shaping   atomic.Pointer[func(dr *queue.DomainRecord, slot int, now time.Time) (PairShaping, bool)]
	suspender atomic.Pointer[SuspendFunc]
}

// SuspendFunc puts a suspension of the pair (dr, slot) in force until
// until, from source ("adaptive") for reason, where an operator can list
// and lift it; the scheduler supplies it.
type SuspendFunc func(dr *queue.DomainRecord, slot int, until time.Time, source, reason string)

// SetSuspender installs the function Suspend calls.
func (r *Registry) SetSuspender(fn SuspendFunc) { r.suspender.Store(&fn) }

// Suspend suspends the pair through the installed SuspendFunc and reports
// whether there was one; a hook without it holds the pair itself.
func (r *Registry) Suspend(dr *queue.DomainRecord, slot int, until time.Time, source, reason string) bool {
	if fn := r.suspender.Load(); fn != nil {
		(*fn)(dr, slot, until, source, reason)
		return true
	}
	return false
}

// PairShaping is a domain/binding pair's shaping as a hook sees it: the
// limits resolved for it (internal/policy) with any rule's throttle
// applied, and whether a suspension or a rate holds it now.
type PairShaping struct {
	MaxConnections             int     // connections to the site from the binding; 0 = no limit
	MaxDeliveriesPerConnection int     // 0 = no limit
	MaxMessageRate             float64 // messages per second to the site from the binding; 0 = no limit
	MaxConnectionRate          float64 // new connections per second; 0 = no limit
	Provider, Site             string  // the matched provider ("" = none) and the site's budget key
	// Suspended says a suspension covers the pair until SuspendedUntil,
	// for Reason.
	Suspended      bool
	SuspendedUntil time.Time
	Reason         string
	// ThrottledUntil is when the pair's message budget has a token again;
	// zero when it has one now.
	ThrottledUntil time.Time
}

// SetShaping installs the function ShapingOf answers with (the scheduler
// does, when it is built).
func (r *Registry) SetShaping(fn func(dr *queue.DomainRecord, slot int, now time.Time) (PairShaping, bool)) {
	r.shaping.Store(&fn)
}

// ShapingOf returns the pair's shaping at now, for a hook that wants to
// decide by it; false when no shaping is known (no scheduler, or the
// domain not resolved yet).
func (r *Registry) ShapingOf(dr *queue.DomainRecord, slot int, now time.Time) (PairShaping, bool) {
	if fn := r.shaping.Load(); fn != nil {
		return (*fn)(dr, slot, now)
	}
	return PairShaping{}, false
}

// NewRegistry returns a registry with empty chains and no default action.
func NewRegistry() *Registry {
	return &Registry{
		MailQueueMaintain:          &MaintainChain{},
		PostInitiateConnectionSMTP: &PostInitiateChain{},
		PostSessionSMTP:            &PostSessionChain{},
	}
}

// chain is the registration and snapshot logic the three chains share. The
// zero value is an empty chain.
type chain[F any] struct {
	mu          sync.Mutex // serialises registration
	first, last []F        // registration order; under mu
	snap        atomic.Pointer[[]F]
}

func (c *chain[F]) register(fn F, first bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if first {
		c.first = append(c.first, fn)
	} else {
		c.last = append(c.last, fn)
	}
	// Calling order: RegisterFirst hooks newest first, then RegisterLast
	// hooks oldest first. A fresh slice, so readers of the old one are safe.
	s := make([]F, 0, len(c.first)+len(c.last))
	for i := len(c.first) - 1; i >= 0; i-- {
		s = append(s, c.first[i])
	}
	s = append(s, c.last...)
	c.snap.Store(&s)
}

func (c *chain[F]) hooks() []F {
	if p := c.snap.Load(); p != nil {
		return *p
	}
	return nil
}

// MaintainChain is the __mail_queue_maintain chain. The zero value is an
// empty chain with no default.
type MaintainChain struct {
	c   chain[MaintainFunc]
	def atomic.Pointer[MaintainFunc]
}

// RegisterFirst puts fn at the head of the chain, ahead of every hook
// registered so far. It panics if fn is nil.
func (m *MaintainChain) RegisterFirst(fn MaintainFunc) {
	mustHook(fn == nil)
	m.c.register(fn, true)
}

// RegisterLast puts fn at the end of the chain, after every hook registered
// so far but before the default action. It panics if fn is nil.
func (m *MaintainChain) RegisterLast(fn MaintainFunc) {
	mustHook(fn == nil)
	m.c.register(fn, false)
}

// SetDefault sets the default action, which runs after every registered
// hook when all of them returned 0. nil removes it.
func (m *MaintainChain) SetDefault(fn MaintainFunc) {
	if fn == nil {
		m.def.Store(nil)
		return
	}
	m.def.Store(&fn)
}

// Has reports whether any hook is registered; the default does not count.
func (m *MaintainChain) Has() bool { return len(m.c.hooks()) > 0 }

// Call runs the chain for one pair and returns the first non-zero result,
// or the default's result, or 0 when every hook returned 0 and there is no
// default.
func (m *MaintainChain) Call(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz int, reserve int) int {
	for _, fn := range m.c.hooks() {
		if r := fn(dr, slot, sl, now, goalsz, reserve); r != 0 {
			return r
		}
	}
	if def := m.def.Load(); def != nil {
		return (*def)(dr, slot, sl, now, goalsz, reserve)
	}
	return 0
}

// PostInitiateChain is the post_initiate_connection_smtp chain. The zero
// value is an empty chain.
type PostInitiateChain struct{ c chain[PostInitiateFunc] }

// RegisterFirst puts fn at the head of the chain. It panics if fn is nil.
func (p *PostInitiateChain) RegisterFirst(fn PostInitiateFunc) {
	mustHook(fn == nil)
	p.c.register(fn, true)
}

// RegisterLast puts fn at the end of the chain. It panics if fn is nil.
func (p *PostInitiateChain) RegisterLast(fn PostInitiateFunc) {
	mustHook(fn == nil)
	p.c.register(fn, false)
}

// Has reports whether any hook is registered.
func (p *PostInitiateChain) Has() bool { return len(p.c.hooks()) > 0 }

// Call runs every hook in order.
func (p *PostInitiateChain) Call(dr *queue.DomainRecord, slot int, now time.Time, connFD int) {
	for _, fn := range p.c.hooks() {
		fn(dr, slot, now, connFD)
	}
}

// PostSessionChain is the chain run when an SMTP session on a pair ends. The
// zero value is an empty chain.
type PostSessionChain struct{ c chain[PostSessionFunc] }

// RegisterFirst puts fn at the head of the chain. It panics if fn is nil.
func (p *PostSessionChain) RegisterFirst(fn PostSessionFunc) {
	mustHook(fn == nil)
	p.c.register(fn, true)
}

// RegisterLast puts fn at the end of the chain. It panics if fn is nil.
func (p *PostSessionChain) RegisterLast(fn PostSessionFunc) {
	mustHook(fn == nil)
	p.c.register(fn, false)
}

// Has reports whether any hook is registered.
func (p *PostSessionChain) Has() bool { return len(p.c.hooks()) > 0 }

// Call runs every hook in order.
func (p *PostSessionChain) Call(dr *queue.DomainRecord, slot int, now time.Time, r SessionResult) {
	for _, fn := range p.c.hooks() {
		fn(dr, slot, now, r)
	}
}

func mustHook(isNil bool) {
	if isNil {
		panic("hooks: nil hook")
	}
}

// Opener is what the default maintenance action needs from the connection
// pool.
type Opener interface {
	// Open starts up to n connections for the pair (dr, slot) and returns
	// how many it started. It enforces the hard caps (global, domain, pair)
	// itself.
	Open(dr *queue.DomainRecord, slot int, n int) int
	// Total is the number of outbound connections open or opening, system-wide.
	Total() int
	// Max is the global cap on Total.
	Max() int
	// Wait records that the pair wants n more connections and found no
	// room under the default's budget: the next slot that frees goes to
	// a pair waiting so (first to one without any connection), and
	// sessions idling on other pairs give theirs up.
	Wait(dr *queue.DomainRecord, slot int, n int)
}

// DefaultMaintain returns Momentum's default maintenance action: open goalsz
// connections for the pair, but never so many that Total would pass
// Max − reserve. It returns how many it opened, 0 when none; when it can
// open none of a positive goal, it tells the Opener the pair waits.
//
// The reserve is for hooks: a hook that wants to spend it calls the Opener
// itself (the scheduler's, Scheduler.Opener: never the pool's Open, which
// skips shaping and cluster leases) — Open is bound by Max, not Max − reserve — and returns the number
// it opened (or Handled), which also keeps the default from running for the
// pair. The default's budget is read from Total before opening; the
// maintenance tick calls the chain one pair at a time, so the reserve holds,
// and Open's own enforcement of Max keeps the hard cap under any caller.
func DefaultMaintain(o Opener) MaintainFunc {
	return func(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz int, reserve int) int {
		n := min(goalsz, o.Max()-reserve-o.Total())
		if n <= 0 {
			if goalsz > 0 {
				// At the budget: without saying so, the pair would
				// compete for the next free slot with every pair that
				// gets mail meanwhile, and lose to busier ones for as
				// long as their sessions last.
				o.Wait(dr, slot, goalsz)
			}
			return 0
		}
		return o.Open(dr, slot, n)
	}
}
