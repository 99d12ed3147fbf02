// Package scheduler owns what happens to a message after it is spooled:
// splitting it into deliveries (one per recipient domain), choosing their
// binding, queueing them (active or delayed), the maintenance tick that
// decides through the __mail_queue_maintain hook chain how many connections
// each domain/binding pair gets, and every outcome: delivered, deferred
// with exponential backoff and jitter, bounced, expired — each written to
// the spool before it is logged — and the delivery status notifications
// (RFC 3464) they owe the sender under RFC 3461's NOTIFY: one bounce per
// finished message for its failed recipients, a "relayed" report for a
// recipient that asked for SUCCESS when the receiver could not take the
// request further, and one "delayed" report per recipient that asked for
// DELAY once the message is older than Options.DelayWarning. Every
// deferred, bounced and expired recipient gets a bounce class
// (internal/policy) in its log record, its DSN and the
// mtad_bounce_class_total metric.
//
// # Design
//
// The scheduler keeps a small record per message in memory (sender, the
// number of recipients still pending, and the failures a DSN will report)
// and nothing else: deliveries live in the queue package, bodies on disk.
// Outcomes arrive from connection pool sessions concurrently; a message's
// record has its own lock, which serialises that message's spool updates
// (the spool requires it) and makes "the last pending recipient became
// final" happen exactly once. A DSN is spooled before the update that
// records what it reports (the deletion of a finished message, or a
// recipient's DelayNotified flag), so a crash between them duplicates a
// DSN at worst and never loses one. The one exception: a success report
// whose DSN could not be spooled (a full disk) waits in memory for the
// message's final DSN, and a restart before then loses it.
//
// Injection hands a spooled message over with Intake, which only appends
// to a bounded queue that the scheduler's intake goroutine drains into
// Submit (intake.go): the 250 never waits on the maintenance lock, a hook
// or a dial (DESIGN.md invariant 8).
//
// Time comes from a Clock so tests drive retries and expiry without
// sleeping: Tick(now) is the whole maintenance step, and Start only calls
// it from a ticker.
//
// It must never read a body except to return it (or its headers) in a DSN,
// and then as a stream, never whole; never hold a delivery anywhere but in
// a queue or a session, and never log an outcome before the spool has it.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// Clock is the scheduler's source of time.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Spool is what the scheduler needs of the message store; *spool.Spool is
// one. DSNs are written with NewBody and PutBody, so that a returned
// message is streamed from OpenBody into the DSN's body, never held whole.
type Spool interface {
	// Get reads a message's metadata back (the intake's overflow, the
	// RFC 3461 fields of a DSN).
	Get(id string) (*spool.Message, error)
	OpenBody(id string) (*spool.BodyReader, error) // also connpool.Bodies
	NewBody() *spool.BodyWriter
	PutBody(m *spool.Message, w *spool.BodyWriter) error
	Update(id string, rcpts map[int]spool.Recipient, done bool) error
}

// Options configure a Scheduler.
type Options struct {
	Spool    Spool         // required
	Queues   *queue.Queues // required
	Bindings *binding.Set  // required
	// Hooks is the registry whose chains run; nil makes an empty one. The
	// scheduler sets the MailQueueMaintain default to
	// hooks.DefaultMaintain(pool).
	Hooks *hooks.Registry
	// Pool configures the connection pool the scheduler owns. Its
	// Outcomes, Bodies (when nil), Hooks, Bindings (when nil), Now and
	// Logger (when nil) are filled in here.
	Pool connpool.Options
	// Hostname is the Reporting-MTA of DSNs and their MAILER-DAEMON domain.
	Hostname string

	MaintainInterval time.Duration // tick period (default 1s)
	RetryInterval    time.Duration // first retry delay (default 5m)
	MaxRetryInterval time.Duration // cap on the retry delay (default 4h)
	MaxAge           time.Duration // a message expires this long after it was received (default 120h)
	// DelayWarning is the age of a message past which a deferral of a
	// recipient that asked NOTIFY=DELAY sends it one "delayed" DSN; 0
	// sends none (config's delivery.delay_warning supplies the 4h default).
	DelayWarning time.Duration
	// Reserve is passed to the maintain chain: slots under the global cap
	// the default action leaves to hooks.
	Reserve int
	// IntakeCapacity bounds the messages Intake holds before they are
	// submitted (default DefaultIntakeCapacity); Busy turns true a
	// sixteenth before it is reached.
	IntakeCapacity int
	// SweepInterval is how often the tick forgets domain records idle
	// since the previous sweep (queue.Queues.Sweep), so a record lasts
	// between one and two intervals past its last use (default 1m).
	SweepInterval time.Duration
	// Jitter is the spread of the retry delay, ±fraction (default 0.15).
	Jitter float64
	// Rand returns a uniform draw in [0,1) for the jitter; nil is
	// math/rand/v2's.
	Rand func() float64

	// Bounce classifies every deferred, bounced and expired recipient for
	// its log record, its DSN and the metrics; nil is policy.DefaultClassifier().
	// SetBounceClassifier replaces it (a reload).
	Bounce *policy.Classifier
	// Metrics registers mtad_bounce_class_total{class,event}, the policy
	// metrics (metrics.go), the operator's metrics (metrics_ops.go) and,
	// unless Pool.Metrics is set, the pool's; nil counts nothing.
	Metrics prometheus.Registerer
	// TopDomains is how many domains get per-domain series of their own
	// (config metrics.top_domains; 0 is DefaultTopDomains).
	TopDomains int

	// Shaper resolves each pair's shaping (internal/policy, config
	// shaping:); with one, the pool's caps, the retry schedule, max_age,
	// the rates and the idle timeout are the pair's shaping, and
	// Pool.Policy is not used. nil keeps Pool.Policy and the retry
	// options above (tests). SetShaper replaces it.
	Shaper *policy.Shaper
	// Rules are the response rules (config response_rules:); nil is none.
	// SetRules replaces them.
	Rules *policy.Rules
	// SuspensionsFile keeps the suspensions across restarts (persist.go);
	// "" keeps them in memory only. The daemon puts it in spool.dir.
	SuspensionsFile string
	// Cluster shares rate budgets, connection caps, suspensions and rule
	// throttles with other nodes (cluster.go); nil: this node alone.
	// ClusterLocal keeps the budgets and caps per node (cluster.mode
	// local) and shares only suspensions and throttles.
	Cluster      *cluster.Cluster
	ClusterLocal bool

	// OnTick, when set, is called on the ticker's goroutine after each
	// Tick that Start's ticker runs, with the tick's time: a heartbeat
	// that stops when the loop is stuck (a hung hook, a lock never
	// released). cmd/mtad drives systemd's watchdog from it. It must
	// return quickly and must not call back into the Scheduler.
	OnTick func(time.Time)

	Clock  Clock       // nil is the system clock
	Logger *zap.Logger // delivery log; nil discards
}

// Scheduler is the delivery engine: queues, ticker, outcomes, bounces.
type Scheduler struct {
	opts  Options
	q     *queue.Queues
	pool  *connpool.Pool
	grant *grantor // the one grantor of connection slots (grant.go)
	hooks *hooks.Registry
	clock Clock
	log   *zap.Logger

	maintainMu sync.Mutex // one pair's maintain chain at a time, so the reserve holds

	// lastTick is the wall-clock time (UnixNano) the maintenance loop last
	// finished a tick; 0 before the first. The readiness check reads it.
	lastTick atomic.Int64

	classifier atomic.Pointer[policy.Classifier] // swapped whole by a reload
	classes    *prometheus.CounterVec            // nil without Options.Metrics

	in *intake // injection's hand-off (intake.go)

	// Shaping and policy (shape.go, rules.go).
	shaper    atomic.Pointer[policy.Shaper]
	shaperGen atomic.Uint64
	rules     atomic.Pointer[policy.Rules]
	pm        policyMetrics
	om        opsMetrics    // metrics_ops.go; zero without Options.Metrics
	sum       summaryCounts // summary.go; always kept
	// pendingRcpts counts recipients still pending, for a gauge that
	// must not walk every message at each scrape.
	pendingRcpts atomic.Int64
	// queued is len(msgs), read without mu by Queued (the listeners'
	// high watermark asks it on every connection).
	queued      atomic.Int64
	saveMu      sync.Mutex    // one write of SuspensionsFile at a time
	savedGen    atomic.Uint64 // the suspensions' Gen last written
	suspensions *policy.Suspensions
	overrides   *policy.Overrides
	throttles   *policy.Throttles
	budgets     rateBudgets   // throttles, or the cluster's shared budgets
	cl          *clusterState // nil without Options.Cluster
	basePolicy  func(*queue.DomainRecord, int) connpool.Policy

	rebindMu sync.Mutex
	rebinds  map[[2]string]rebind // (domain, binding) → group, from rebind rules

	timersMu     sync.Mutex
	timers       map[*queue.Pair]*wakeTimer
	timersClosed bool
	timersWG     sync.WaitGroup

	// MX resolution ahead of slots (resolve.go).
	resolveCh     chan *queue.DomainRecord
	resolveCtx    context.Context
	resolveCancel context.CancelFunc
	resolveWG     sync.WaitGroup

	mu   sync.Mutex
	msgs map[string]*msgState
	owed []string // finished messages whose DSN could not be spooled yet; retried by Tick with back-off
	// owedNext is when retryOwed tries again after a failed round, and
	// owedWait the wait that set it.
	owedNext time.Time
	owedWait time.Duration

	tickMu    sync.Mutex // Tick's buffers; one Tick at a time
	dueBuf    []*queue.Delivery
	pairBuf   []*queue.Pair
	lastSweep time.Time // under tickMu

	stop      chan struct{}
	done      chan struct{}
	started   bool
	closeOnce sync.Once
	closeErr  error
}

// msgState is what the scheduler remembers of a message while any of its
// recipients is pending.
type msgState struct {
	mu       sync.Mutex
	pending  int
	finished bool
	sender   string
	group    string
	binding  string
	arrival  time.Time
	failed   []failure                 // what the final DSN reports: failed recipients, and relayed ones whose own DSN could not be spooled
	notified map[int32]bool            // recipients a delay DSN was sent for (spool.Recipient.DelayNotified), once loaded
	loaded   bool                      // notified was read from the spool
	last     map[string]*outcome.Error // last temporary failure per domain, for an expiry's DSN
	lastMX   map[string]string
}

// New builds a scheduler and its connection pool.
func New(opts Options) (*Scheduler, error) {
	switch {
	case opts.Spool == nil:
		return nil, errors.New("scheduler: Options.Spool is required")
	case opts.Queues == nil:
		return nil, errors.New("scheduler: Options.Queues is required")
	case opts.Bindings == nil:
		return nil, errors.New("scheduler: Options.Bindings is required")
	case opts.Reserve < 0:
		return nil, fmt.Errorf("scheduler: Reserve %d is negative", opts.Reserve)
	}
	if opts.MaintainInterval <= 0 {
		opts.MaintainInterval = time.Second
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Minute
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 5 * time.Minute
	}
	if opts.MaxRetryInterval <= 0 {
		opts.MaxRetryInterval = 4 * time.Hour
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 120 * time.Hour
	}
	if opts.Jitter <= 0 || opts.Jitter >= 1 {
		opts.Jitter = 0.15
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Hooks == nil {
		opts.Hooks = hooks.NewRegistry()
	}
	if opts.Hostname == "" {
		opts.Hostname = "localhost"
	}
	s := &Scheduler{
		opts:  opts,
		q:     opts.Queues,
		hooks: opts.Hooks,
		clock: opts.Clock,
		log:   opts.Logger,
		msgs:  make(map[string]*msgState),
		in:    newIntake(opts.IntakeCapacity),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),

		resolveCh: make(chan *queue.DomainRecord, resolveQueue),

		suspensions: policy.NewSuspensions(),
		overrides:   policy.NewOverrides(),
		throttles:   policy.NewThrottles(),
		timers:      make(map[*queue.Pair]*wakeTimer),
	}
	s.budgets = s.throttles
	s.sum.since = opts.Clock.Now()
	if opts.Shaper != nil {
		s.shaper.Store(opts.Shaper)
	}
	if opts.Rules != nil {
		s.rules.Store(opts.Rules)
	}
	s.resolveCtx, s.resolveCancel = context.WithCancel(context.Background())
	po := opts.Pool
	po.Outcomes = s
	s.grant = newGrantor(s)
	po.Grantor = s.grant
	s.basePolicy = po.Policy
	if s.basePolicy == nil {
		s.basePolicy = func(*queue.DomainRecord, int) connpool.Policy { return connpool.Policy{} }
	}
	po.Policy = s.poolPolicy
	po.Hooks = opts.Hooks
	po.Now = opts.Clock.Now
	if po.Bodies == nil {
		po.Bodies = opts.Spool
	}
	if po.Bindings == nil {
		po.Bindings = opts.Bindings
	}
	if po.Logger == nil {
		po.Logger = opts.Logger
	}
	if po.Metrics == nil {
		po.Metrics = opts.Metrics
	}
	if opts.Bounce == nil {
		opts.Bounce = policy.DefaultClassifier()
	}
	s.classifier.Store(opts.Bounce)
	if opts.Metrics != nil {
		var err error
		if s.classes, err = registerClasses(opts.Metrics); err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
		if err := s.registerPolicy(opts.Metrics); err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
	}
	pool, err := connpool.New(po)
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	s.pool = pool
	s.grant.pool = pool
	if opts.Metrics != nil {
		if err := s.registerOps(opts.Metrics, opts.TopDomains); err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
	}
	if opts.Cluster != nil {
		// Before the file is read: its ids carry the prefix (cluster.go).
		s.suspensions.SetIDPrefix(opts.Cluster.Node() + "-")
	}
	if err := s.loadSuspensions(opts.Clock.Now()); err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	s.initCluster()
	s.hooks.MailQueueMaintain.SetDefault(hooks.DefaultMaintain(s.grant))
	s.hooks.SetShaping(s.hookShaping)
	s.hooks.SetSuspender(s.suspendPair)
	// A connection made ends a pair's run of connection failures.
	s.hooks.PostInitiateConnectionSMTP.RegisterFirst(func(dr *queue.DomainRecord, slot int, _ time.Time, fd int) {
		if fd >= 0 {
			s.connectedOK(dr, slot)
		}
	})
	s.startResolvers()
	return s, nil
}

// registerClasses registers the bounce class counter on m, or returns the
// one already there (a second scheduler on one registry, as in tests).
func registerClasses(m prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_bounce_class_total",
		Help: "Deferred, bounced and expired recipients by bounce class (Momentum's numbering: 10 invalid recipient, 21 DNS failure, 22 mailbox full, 51 spam block, 70 transient failure, ...).",
	}, []string{"class", "event"})
	err := m.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("registering the bounce class metric: %w", err)
	}
	return c, nil
}

// SetBounceClassifier replaces the classifier for the outcomes settled
// from now on (a reload of delivery.bounce_classes_file); nil is ignored.
func (s *Scheduler) SetBounceClassifier(c *policy.Classifier) {
	if c != nil {
		s.classifier.Store(c)
	}
}

// Pool returns the connection pool, for metrics and stats. Hooks must not
// open connections through it: Pool.Open applies only the hard caps, so a
// session opened there skips the shaping (suspensions, rates, site and
// provider caps) and, in a shared cluster, holds no lease, so the other
// nodes do not count it. Hooks open through Opener.
func (s *Scheduler) Pool() *connpool.Pool { return s.pool }

// Opener is what a MailQueueMaintain hook that opens connections itself
// calls (to spend the reserve): the one grantor of slots, bound by the
// global max (not max − reserve), which applies the pair's shaping and, in
// a shared cluster, takes a lease under each shared cap per connection.
func (s *Scheduler) Opener() hooks.Opener { return s.grant }

// Pending reports how many messages have recipients still pending.
func (s *Scheduler) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// Start runs Tick every MaintainInterval, and the intake goroutine that
// submits what Intake takes in, until Close. Call it once, before Close.
func (s *Scheduler) Start() {
	s.started = true
	go s.runIntake()
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.opts.MaintainInterval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				now := s.clock.Now()
				s.Tick(now)
				s.lastTick.Store(time.Now().UnixNano())
				if s.opts.OnTick != nil {
					s.opts.OnTick(now)
				}
			}
		}
	}()
}

// LastTick is the wall-clock time the maintenance loop started by Start
// last finished a tick, zero before its first. Wall clock, not the
// scheduler's Clock: it tells an operator whether the loop is turning,
// whatever time the scheduler believes it is.
func (s *Scheduler) LastTick() time.Time {
	if n := s.lastTick.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Close stops the intake, the ticker and the pool: sessions finish their
// current transaction, bounded by ctx. Undelivered mail stays in the
// spool for the next start, and so do messages still in the intake (they
// were spooled before Intake saw them). Calls after the first return its
// result.
func (s *Scheduler) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.in.close()
		close(s.stop)
		if s.started {
			<-s.done
			<-s.in.done
		}
		if n := s.in.waiting.Load(); n > 0 {
			s.log.Info("messages still in the intake stay spooled for the next start", zap.Int64("messages", n))
		}
		s.stopResolvers(ctx)
		s.stopTimers()
		s.closeErr = s.pool.Close(ctx)
	})
	return s.closeErr
}

// Submit queues a spooled message's pending recipients: one delivery per
// recipient domain, on a binding picked from the message's group (or its
// named binding), in the active queue — waking the pair at once — or in
// the delayed queue when a recipient's next attempt is in the future.
// Recipients already final count for the message's DSN (recovery). It is
// called for each message Recover finds, for DSNs, and by the intake
// goroutine; it fails only for a message already submitted. It may take
// the maintenance lock, run the maintain chain and dial, so injection
// calls Intake instead.
func (s *Scheduler) Submit(m *spool.Message) error {
	now := s.clock.Now()
	st := &msgState{sender: m.Sender, group: m.Group, binding: m.Binding, arrival: m.Received}
	type group struct {
		d    *queue.Delivery
		next time.Time
		last *outcome.Error
		mx   string
		bad  *outcome.Error // the domain can never be routed
	}
	var groups []*group
	byDomain := map[string]*group{}
	b := s.pick(m)
	expires := m.Received.Add(s.opts.MaxAge).UnixNano()
	for i, r := range m.Recipients {
		switch r.State {
		case spool.Bounced, spool.Expired:
			// The spool keeps no phase: a failure without a code is
			// classified by its enhanced code alone.
			last := &outcome.Error{Code: r.LastCode, Enhanced: parseEnhanced(r.LastEnh), Message: r.LastText,
				Temporary: r.LastCode/100 == 4}
			class := s.classifier.Load().Classify(last)
			if r.State == spool.Expired {
				class = s.classifier.Load().ClassifyExpired(last)
			}
			st.failed = append(st.failed, failure{Addr: r.Addr, Expired: r.State == spool.Expired,
				Code: r.LastCode, Enhanced: r.LastEnh, Text: r.LastText, MX: r.LastMX, At: r.UpdatedAt, Class: class})
			continue
		case spool.Pending:
		default:
			continue
		}
		st.pending++
		dom, derr := domainOf(r.Addr)
		gkey := dom
		if derr != nil {
			// Kept apart from routable keys by construction: the lower
			// case of a name IDNA refuses can be one it accepts ("Ӏ",
			// "ӏ"), and the log key is that lower case.
			gkey = "\x00" + dom
		}
		g := byDomain[gkey]
		if g == nil {
			slot := b.Slot
			if grp := s.rebound(dom, b.Name, now); grp != "" {
				if sl := s.rebindSlot(grp); sl >= 0 {
					slot = sl
				}
			}
			g = &group{d: &queue.Delivery{
				MsgID: m.ID, Domain: dom, Sender: m.Sender, Priority: int32(m.Priority),
				Arrival: m.Received.UnixNano(), Expires: s.expiresFor(m, dom, derr, slot, expires), Size: m.Size, Slot: int32(slot),
				UTF8: m.SMTPUTF8, EightBit: m.EightBit, Ret: uint8(m.Ret), EnvID: m.EnvID,
			}}
			if derr != nil {
				g.bad = badDomain(derr)
			}
			byDomain[gkey] = g
			groups = append(groups, g)
		}
		g.d.Rcpts = append(g.d.Rcpts, queue.Rcpt{Idx: int32(i), Addr: r.Addr, Notify: uint8(r.Notify), ORcpt: r.ORcpt})
		g.d.Attempts = max(g.d.Attempts, int32(r.Attempts))
		if r.NextAttempt.After(g.next) {
			g.next = r.NextAttempt
		}
		if r.LastCode != 0 || r.LastText != "" {
			g.last = &outcome.Error{Code: r.LastCode, Enhanced: parseEnhanced(r.LastEnh), Message: r.LastText, Temporary: true}
			g.mx = r.LastMX
		}
	}
	s.mu.Lock()
	if _, dup := s.msgs[m.ID]; dup {
		s.mu.Unlock()
		return fmt.Errorf("scheduler: submit %s: already queued", m.ID)
	}
	s.msgs[m.ID] = st
	s.queued.Add(1)
	s.mu.Unlock()
	s.pendingRcpts.Add(int64(st.pending))

	if st.pending == 0 {
		// Every recipient final but the message not deleted: finish it.
		s.finishOnly(m.ID, st, now)
		return nil
	}
	for _, g := range groups {
		if g.last != nil {
			st.mu.Lock()
			if st.last == nil {
				st.last, st.lastMX = map[string]*outcome.Error{}, map[string]string{}
			}
			st.last[g.d.Domain], st.lastMX[g.d.Domain] = g.last, g.mx
			st.mu.Unlock()
		}
	}
	for _, g := range groups {
		d := g.d
		switch {
		case d.Domain == "":
			s.settleAll(d, connpool.Attempt{}, badAddress, now)
		case g.bad != nil:
			s.refuse(d, g.bad, now)
		case now.UnixNano() >= d.Expires:
			s.settleAll(d, connpool.Attempt{}, connpool.ErrExpired, now)
		case g.next.After(now):
			s.q.Delay(d, g.next)
		default:
			s.wake(s.q.Push(d), now)
		}
	}
	return nil
}

// expiresFor is when a delivery to dom expires: the domain's max_age from
// its shaping (before its MX set is known: a provider's or site's max_age
// applies from the first attempt, in settle), else Options.MaxAge.
func (s *Scheduler) expiresFor(m *spool.Message, dom string, derr error, slot int, def int64) int64 {
	sh := s.shaper.Load()
	if sh == nil || derr != nil || dom == "" {
		return def
	}
	name := ""
	if b := s.opts.Bindings.Get(slot); b != nil {
		name = b.Name
	}
	if ma := sh.MaxAge(dom, name); ma > 0 {
		return m.Received.Add(ma).UnixNano()
	}
	return def
}

var badAddress = &outcome.Error{Phase: outcome.PhaseQueue, Enhanced: smtp.EnhancedCode{5, 1, 3},
	Message: "recipient address has no domain"}

// pick chooses the message's binding, falling back to the default group
// when the requested one is unknown or unusable (the message was accepted:
// it must go somewhere).
func (s *Scheduler) pick(m *spool.Message) *binding.Binding {
	b, err := s.opts.Bindings.Pick(m.Group, m.Binding)
	if err == nil {
		return b
	}
	b2, err2 := s.opts.Bindings.Pick("", "")
	if err2 != nil {
		b2 = s.opts.Bindings.Get(0)
	}
	s.log.Warn("binding pick failed, using fallback", zap.String("queue_id", m.ID),
		zap.String("group", m.Group), zap.String("binding", m.Binding), zap.Error(err),
		zap.String("fallback", b2.Name))
	return b2
}

// domainOf returns the key an address is routed and queued by: its domain
// in mx.Canonical form (an IDN as its A-label, an address literal with its
// brackets in one spelling), "" when it has none. A domain that can never
// be routed gives an error and, as its key, the domain lower-cased (for the
// log).
func domainOf(addr string) (string, error) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 || i == len(addr)-1 {
		return "", nil
	}
	d := addr[i+1:]
	key, err := mx.Canonical(d)
	if err != nil {
		return strings.ToLower(d), err
	}
	return key, nil
}

// badDomain is the outcome for a recipient whose domain can never be
// routed: permanent, decided here without a DNS query, so no attempt.
func badDomain(err error) *outcome.Error {
	return &outcome.Error{Phase: outcome.PhaseQueue, Enhanced: smtp.EnhancedCode{5, 1, 2},
		Message: "bad destination domain: " + err.Error()}
}

// refuse settles every recipient of d with e, decided without an attempt.
func (s *Scheduler) refuse(d *queue.Delivery, e *outcome.Error, now time.Time) {
	v := make([]*outcome.Error, len(d.Rcpts))
	for i := range v {
		v[i] = e
	}
	s.settle(d, connpool.Attempt{}, v, nil, true, now)
}

func parseEnhanced(s string) smtp.EnhancedCode {
	var c smtp.EnhancedCode
	if _, err := fmt.Sscanf(s, "%d.%d.%d", &c[0], &c[1], &c[2]); err != nil {
		return smtp.EnhancedCode{}
	}
	return c
}

// wake gives new work on a pair to an idle session, or else runs the
// pair's maintenance now: a message must not wait for the tick.
func (s *Scheduler) wake(p *queue.Pair, now time.Time) {
	if s.moveRetired(p, now) {
		return // no session of a removed binding is given work
	}
	if !s.pool.Wake(p) {
		s.maintain(p, now)
	}
}

// maintain computes the pair's goal and runs the maintain chain.
func (s *Scheduler) maintain(p *queue.Pair, now time.Time) {
	s.maintainBacklog(p, p.Len(), now)
}

// maintainBacklog is maintain for a pair whose queue length the caller has
// just read.
func (s *Scheduler) maintainBacklog(p *queue.Pair, backlog int, now time.Time) {
	if s.moveRetired(p, now) {
		return
	}
	dr := p.Domain()
	if dr.Suspended(now) {
		return
	}
	// A suspended pair is not resolved either: a lookup's permanent
	// failure would bounce mail an operator suspended to hold (its DNS
	// broken, say). Its maintenance runs again when the suspension ends.
	if s.suspensions.Len() > 0 {
		if ps := s.shapeOf(p); ps != nil {
			if _, held := s.suspended(ps, now); held {
				return
			}
		}
	}
	if !s.routable(dr, now) {
		return
	}
	pol := s.policyOf(p)
	s.maintainMu.Lock()
	defer s.maintainMu.Unlock()
	goal := Goal(backlog, p.Open()+p.Connecting(), pol.MaxConnectionsPerBinding,
		dr.Open()+dr.Connecting(), pol.MaxConnections)
	s.hooks.MailQueueMaintain.Call(dr, p.Slot(), p, now, goal, s.opts.Reserve)
}

// sweep forgets idle domain records every SweepInterval: without it every
// domain ever mailed keeps its record (≈5 KB with its queues) for the
// life of the process. tickMu is held.
func (s *Scheduler) sweep(now time.Time) {
	if s.lastSweep.IsZero() {
		s.lastSweep = now
		return
	}
	if now.Sub(s.lastSweep) < s.opts.SweepInterval {
		return
	}
	s.lastSweep = now
	if n := s.q.Sweep(now); n > 0 {
		s.log.Debug("idle domain records forgotten", zap.Int("domains", n))
	}
	s.throttles.Sweep(now)
	s.sweepRebinds(now)
}

// owedMaxWait caps the back-off between rounds of owed DSNs.
const owedMaxWait = 5 * time.Minute

// dueBatch bounds the deliveries taken from the delayed queue per call.
const dueBatch = 1024

// Tick is one maintenance step at now: due delayed deliveries move to
// their active queue (or expire), expired deliveries at the head of each
// ready queue are expired, and every pair with work gets its maintain
// chain. Its cost follows the deliveries due and the pairs ready, not the
// size of the queues.
func (s *Scheduler) Tick(now time.Time) {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	s.grant.startTick()
	s.retryOwed(now)
	s.sweep(now)
	s.expirePolicies(now)
	s.tickMetrics(now)
	t := now.UnixNano()
	for {
		s.dueBuf = s.q.Due(now, dueBatch, s.dueBuf[:0])
		for i, d := range s.dueBuf {
			s.dueBuf[i] = nil
			if t >= d.Expires {
				s.settleAll(d, connpool.Attempt{}, connpool.ErrExpired, now)
				continue
			}
			// An idle session of the pair takes it now; otherwise the
			// ready walk below opens connections for it.
			s.pool.Wake(s.q.Push(d))
		}
		if len(s.dueBuf) < dueBatch {
			break
		}
	}
	s.pairBuf = s.q.Ready(s.pairBuf)
	for i, p := range s.pairBuf {
		s.pairBuf[i] = nil
		h, n := p.Head()
		if h != nil && t >= h.Expires {
			s.expireHead(p, t, now)
			n = p.Len()
		}
		if n > 0 {
			s.maintainBacklog(p, n, now)
		}
	}
}

// expireHead expires deliveries at the head of the pair's queue whose time
// is up; the queue is in arrival order within a priority, so the oldest are
// there. A session would expire them when popped, but a pair that cannot
// connect would otherwise hold them past their age.
func (s *Scheduler) expireHead(p *queue.Pair, t int64, now time.Time) {
	for range dueBatch {
		h := p.Peek()
		if h == nil || t < h.Expires {
			return
		}
		d := p.Pop()
		if d == nil {
			return
		}
		if t < d.Expires { // someone popped the old head first
			s.q.Push(d)
			return
		}
		s.settleAll(d, connpool.Attempt{}, connpool.ErrExpired, now)
	}
}

// ConnectFailed implements connpool.Outcomes. A permanent DNS answer
// bounces every delivery waiting on the pair; a temporary failure defers
// them with backoff — unless another connection of the pair is open and
// working through the queue.
func (s *Scheduler) ConnectFailed(p *queue.Pair, at connpool.Attempt, err error) {
	permanent := connpool.IsPermanentDNS(err)
	if !permanent && p.Open() > 0 {
		return
	}
	// A TLS policy that cannot be met (STARTTLS not offered, a
	// certificate or DANE record that does not match, an MTA-STS policy
	// permitting no MX) is no network blip: the mail is delayed at once
	// instead of being tried again every tick up to
	// consecutive_connection_failures_before_delay.
	now := s.clock.Now()
	// A reply at the greeting or EHLO (Yahoo's 421 [TSS04] comes there)
	// is judged by the response rules once for the pair, now, rather than
	// once per queued delivery, and after the failure count.
	act, ruled := s.connectRule(p, err, now)
	if act == nil && !permanent && !tlspolicy.IsPolicyFailure(err) && s.connectFailures(p) {
		// Under consecutive_connection_failures_before_delay: the
		// mail stays ready, and the next maintenance tries again.
		return
	}
	e := outcome.As(err)
	if e == nil {
		e = outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, err)
	}
	for range p.Len() {
		d := p.Pop()
		if d == nil {
			return
		}
		v := make([]*outcome.Error, len(d.Rcpts))
		var acts []*policy.Action
		if ruled {
			acts = make([]*policy.Action, len(d.Rcpts))
		}
		for i := range v {
			v[i] = e
			if ruled {
				acts[i] = act
			}
		}
		s.settleRuled(d, at, v, nil, false, now, acts)
	}
}

// connectRule runs the response rules on a connection failure that
// carries a remote reply: it puts a fired action in force (logged once)
// and returns it for every delivery of the pair; ruled says the rules
// were asked (so the deliveries' settles do not ask again).
func (s *Scheduler) connectRule(p *queue.Pair, err error, now time.Time) (*policy.Action, bool) {
	rules := s.rules.Load()
	e := outcome.As(err)
	if rules == nil || rules.Len() == 0 || e == nil {
		return nil, false
	}
	reply := policy.ReplyOf(e)
	if reply.Local {
		return nil, false
	}
	d := &queue.Delivery{Domain: p.Domain().Name, Slot: int32(p.Slot())}
	if h := p.Peek(); h != nil {
		d.MsgID = h.MsgID
	}
	acts := s.applyRules(d, connpool.Attempt{}, []*outcome.Error{e}, s.shapeOf(p), now)
	return acts[0], true
}

// Result implements connpool.Outcomes.
func (s *Scheduler) Result(d *queue.Delivery, at connpool.Attempt, res *smtpclient.Result, err error) {
	now := s.clock.Now()
	if err != nil {
		if errors.Is(err, spool.ErrNotFound) {
			// The message left the spool (cancelled): nothing to do.
			s.log.Warn("delivery of a message no longer spooled dropped",
				zap.String("queue_id", d.MsgID), zap.String("domain", d.Domain))
			s.forget(d.MsgID)
			return
		}
		s.settleAll(d, at, err, now)
		return
	}
	v := make([]*outcome.Error, len(d.Rcpts))
	for i := range d.Rcpts {
		if i < len(res.Rcpt) && res.Rcpt[i] != nil {
			v[i] = res.Rcpt[i]
		} else {
			v[i] = res.Data
		}
	}
	s.settle(d, at, v, res, false, now)
}

// settleAll settles every recipient of d with the same error.
func (s *Scheduler) settleAll(d *queue.Delivery, at connpool.Attempt, err error, now time.Time) {
	e := outcome.As(err)
	if e == nil {
		e = outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, err)
	}
	v := make([]*outcome.Error, len(d.Rcpts))
	for i := range v {
		v[i] = e
	}
	s.settle(d, at, v, nil, e == connpool.ErrExpired || e == badAddress, now)
}

func (s *Scheduler) forget(id string) {
	s.mu.Lock()
	st := s.msgs[id]
	if st != nil {
		delete(s.msgs, id)
		s.queued.Add(-1)
	}
	s.mu.Unlock()
	if st != nil {
		// A message that left the spool with recipients pending
		// (cancelled) takes them out of the gauge.
		st.mu.Lock()
		if st.pending > 0 {
			s.pendingRcpts.Add(-int64(st.pending))
		}
		st.mu.Unlock()
	}
}

type verdict int

const (
	vDelivered verdict = iota
	vDeferred
	vBounced
	vExpired
)

// settle records the outcome of one attempt (or of a decision made
// without one, noAttempt) for each recipient of d: v[i] nil is delivered.
// Spool first, log second, requeue last.
func (s *Scheduler) settle(d *queue.Delivery, at connpool.Attempt, v []*outcome.Error, res *smtpclient.Result, noAttempt bool, now time.Time) {
	s.settleRuled(d, at, v, res, noAttempt, now, nil)
}

// settleRuled is settle with the response rules' verdicts per recipient
// already decided (acts non-nil: a connection-level reply judged once for
// every delivery of its pair), or not yet (nil).
func (s *Scheduler) settleRuled(d *queue.Delivery, at connpool.Attempt, v []*outcome.Error, res *smtpclient.Result, noAttempt bool, now time.Time, acts []*policy.Action) {
	s.mu.Lock()
	st := s.msgs[d.MsgID]
	s.mu.Unlock()
	if st == nil {
		// An operator cancelled it while a session had it in flight (or
		// a bug): nothing is owed for it any more.
		s.log.Warn("outcome for a message no longer queued (cancelled?) dropped", zap.String("queue_id", d.MsgID))
		return
	}
	attempt := int(d.Attempts)
	if !noAttempt {
		attempt++
	}
	retry, maxRetry := s.opts.RetryInterval, s.opts.MaxRetryInterval
	ps := s.deliveryShape(d)
	if ps != nil {
		// The pair's shaping: its retry schedule, and its max_age, which
		// a provider or site scope may set once the MX set is known.
		retry, maxRetry = ps.sh.RetryInterval, ps.sh.MaxRetryInterval
		if ps.sh.MaxAge > 0 {
			d.Expires = d.Arrival + int64(ps.sh.MaxAge)
		}
	}
	expired := now.UnixNano() >= d.Expires
	next := now.Add(Backoff(retry, maxRetry, max(attempt, 1), s.opts.Jitter, s.opts.Rand()))
	if exp := time.Unix(0, d.Expires); next.After(exp) {
		next = exp // retrying after expiry is pointless; expire on time instead
	}
	// The response rules, once per distinct reply (one reply may fail
	// every recipient of the transaction).
	if acts == nil {
		acts = s.applyRules(d, at, v, ps, now)
	}
	rebindSlot := -1

	verdicts := make([]verdict, len(d.Rcpts))
	classes := make([]policy.BounceClass, len(d.Rcpts))
	classifier := s.classifier.Load()
	updates := make(map[int]spool.Recipient, len(d.Rcpts))
	var deferred []queue.Rcpt
	var reports []report // relayed and delayed reports owed now
	finals := 0
	st.mu.Lock()
	for i, r := range d.Rcpts {
		e := v[i]
		// The whole record is rewritten: keep what injection gave it.
		rec := spool.Recipient{Addr: r.Addr, Attempts: attempt, LastMX: at.MX, UpdatedAt: now,
			Notify: spool.Notify(r.Notify), ORcpt: r.ORcpt}
		switch {
		case e == nil:
			verdicts[i] = vDelivered
			rec.State, rec.LastCode, rec.LastText = spool.Delivered, 250, capString(res.DotReply, maxReplyText)
			rec.LastEnh = outcome.EnhancedString(res.DotEnhanced)
		case e == connpool.ErrExpired || (e.Temporary && expired):
			verdicts[i] = vExpired
			rec.State = spool.Expired
		case acts[i] != nil && acts[i].Kind == policy.ActionBounce:
			verdicts[i] = vBounced // a rule says this reply will not change
			rec.State = spool.Bounced
		case e.Temporary || acts[i] != nil:
			// A rule that suspends, throttles, defers or rebinds on a
			// permanent reply says it is about the sender (a blocked
			// IP), not the recipient: retried, not bounced.
			verdicts[i] = vDeferred
			rec.State, rec.NextAttempt = spool.Pending, next
			if a := acts[i]; a != nil {
				switch {
				case a.Kind == policy.ActionDefer && a.Duration > 0:
					rec.NextAttempt = now.Add(a.Duration)
					if exp := time.Unix(0, d.Expires); rec.NextAttempt.After(exp) {
						rec.NextAttempt = exp
					}
				case a.Kind == policy.ActionRebind:
					// At once from a new binding; when the group has
					// none but this one, or none usable, the normal
					// backoff (the same block would answer again).
					if sl := s.rebindSlot(a.Rebind); sl >= 0 && sl != int(d.Slot) {
						rebindSlot = sl
						rec.NextAttempt = now
					}
				}
				if a.Kind == policy.ActionDefer || rebindSlot >= 0 {
					next = rec.NextAttempt // the deferred group's time
				}
			}
			deferred = append(deferred, r)
		default:
			verdicts[i] = vBounced
			rec.State = spool.Bounced
		}
		if e != nil {
			last := e
			if e == connpool.ErrExpired && st.last[d.Domain] != nil {
				// Report why it kept failing, not just that time ran out.
				last = st.last[d.Domain]
				if rec.LastMX == "" {
					rec.LastMX = st.lastMX[d.Domain]
				}
			}
			rec.LastCode, rec.LastEnh, rec.LastText = last.Code, outcome.EnhancedString(last.Enhanced), capString(errText(last), maxReplyText)
			switch {
			case i > 0 && v[i-1] == e && verdicts[i-1] == verdicts[i]:
				// One reply for the whole transaction (a 421, a
				// connection failure): classified once, as a rule
				// walk over a long text costs tens of µs.
				classes[i] = classes[i-1]
			case verdicts[i] == vExpired:
				classes[i] = classifier.ClassifyExpired(last)
			default:
				classes[i] = classifier.Classify(e)
			}
		}
		delayDue := false
		if verdicts[i] == vDeferred && r.Notify&uint8(spool.NotifyDelay) != 0 && s.opts.DelayWarning > 0 {
			rec.DelayNotified = s.delayNotified(d.MsgID, st, r.Idx)
			delayDue = !rec.DelayNotified && now.Sub(st.arrival) >= s.opts.DelayWarning
		}
		if a, ok := dsnAction(verdicts[i], spool.Notify(r.Notify), at.DSN, delayDue); ok {
			rep := report{Addr: r.Addr, ORcpt: r.ORcpt, Notify: spool.Notify(r.Notify), Action: a,
				Expired: verdicts[i] == vExpired, Code: rec.LastCode, Enhanced: rec.LastEnh,
				Text: rec.LastText, MX: rec.LastMX, At: now, Class: classes[i]}
			if a == actFailed {
				st.failed = append(st.failed, rep)
			} else {
				reports = append(reports, rep)
			}
		}
		if verdicts[i] != vDeferred {
			finals++
		}
		updates[int(r.Idx)] = rec
	}
	if len(deferred) > 0 {
		if st.last == nil {
			st.last, st.lastMX = map[string]*outcome.Error{}, map[string]string{}
		}
		for i := range v {
			if verdicts[i] == vDeferred {
				// Kept for the expiry's DSN, with the text capped: a
				// queued message holds no reply of 32 KB in memory.
				st.last[d.Domain], st.lastMX[d.Domain] = capReply(v[i]), at.MX
				break
			}
		}
	}
	st.pending -= finals
	s.pendingRcpts.Add(-int64(finals))
	var dsnMsg *spool.Message
	var err error
	finished, done := false, false
	if st.pending <= 0 && !st.finished {
		st.finished, finished = true, true
		st.failed = append(st.failed, reports...) // one DSN for the message's end
		dsnMsg, done, err = s.finish(d.MsgID, st, updates, now)
	} else {
		if len(reports) > 0 {
			dsnMsg = s.interimDSN(d, st, reports, updates, now)
		}
		err = s.opts.Spool.Update(d.MsgID, updates, false)
	}
	st.mu.Unlock()
	if err != nil {
		// The outcome holds in memory; after a crash the spool's older
		// state is retried (at least once, never lost).
		s.log.Error("spool update failed", zap.String("queue_id", d.MsgID), zap.Error(err))
	}
	if done {
		s.forget(d.MsgID)
	}

	// Read everything the log needs from d before it is queued again (and
	// may be popped by another goroutine). The next attempt is minutes
	// away, so the deferred record still comes first in the log.
	rcpts, domain, arrival, msgID, slot := d.Rcpts, d.Domain, d.Arrival, d.MsgID, int(d.Slot)
	if len(deferred) > 0 && !finished {
		d2 := d
		if len(deferred) < len(d.Rcpts) {
			d2 = &queue.Delivery{MsgID: d.MsgID, Domain: d.Domain, Sender: d.Sender, Arrival: d.Arrival,
				Expires: d.Expires, Size: d.Size, Priority: d.Priority, Slot: d.Slot, UTF8: d.UTF8, EightBit: d.EightBit,
				Ret: d.Ret, EnvID: d.EnvID}
		}
		d2.Rcpts = deferred
		d2.Attempts = int32(attempt)
		if rebindSlot >= 0 {
			d2.Slot = int32(rebindSlot)
		} else {
			d2.Slot = int32(s.retiredSlot(int(d2.Slot))) // a reload removed its binding
		}
		// Under the message's lock, and not when it has finished since
		// this settle released it (an operator's cancel in between): a
		// cancelled message must not come back to the queue. st.mu before
		// the delayed queue's lock is the only order they are taken in.
		st.mu.Lock()
		if !st.finished {
			s.q.Delay(d2, next)
		}
		st.mu.Unlock()
	}

	binding := at.Binding
	if binding == "" {
		if b := s.opts.Bindings.Get(slot); b != nil {
			binding = b.Name
		}
	}
	// Counted before the log records, so that whoever has read a record
	// finds it in the summary, the queue view and the metrics.
	s.countOutcomesSummary(verdicts, now)
	s.noteView(domain, slot, rcpts, verdicts, classes, updates, now)
	s.countOutcomes(domain, binding, verdicts, classes, now.Sub(time.Unix(0, arrival)))
	for i, r := range rcpts {
		rec := updates[int(r.Idx)]
		lr := logging.Delivery{
			QueueID: msgID, Recipient: r.Addr, Domain: domain, Binding: binding,
			MX: rec.LastMX, RemoteIP: at.RemoteIP, Code: rec.LastCode, Enhanced: rec.LastEnh,
			Response: rec.LastText, Attempt: attempt, Delay: now.Sub(time.Unix(0, arrival)),
		}
		if e := v[i]; e != nil {
			lr.Phase = string(e.Phase)
			if e != connpool.ErrExpired {
				lr.Response = errText(e) // whole: only the spool and memory keep it capped
			}
		} else if verdicts[i] == vDelivered {
			lr.Phase = string(outcome.PhaseDot) // the 250 to the end of data
		}
		lr.BounceClass = int(classes[i])
		if verdicts[i] == vDelivered || verdicts[i] == vDeferred {
			lr.TLS = at.TLSInfo.String() // issue 10: which TLS, and which policy applied
		}
		switch verdicts[i] {
		case vDelivered:
			logging.Delivered(lr).Log(s.log)
		case vDeferred:
			lr.NextAttempt = next
			lr = logging.Deferred(lr)
		case vBounced:
			lr = logging.Bounced(lr)
		case vExpired:
			lr = logging.Expired(lr)
		}
		if verdicts[i] != vDelivered {
			s.countClass(classes[i], lr.Event)
			lr.Log(s.log)
		}
	}

	s.submitDSN(dsnMsg)
}

// countClass counts one deferred, bounced or expired recipient by class.
func (s *Scheduler) countClass(c policy.BounceClass, ev logging.Event) {
	if s.classes != nil {
		s.classes.WithLabelValues(strconv.Itoa(int(c)), string(ev)).Inc()
	}
}

// errText is the reply text, or the local error's text when there was no
// reply.
func errText(e *outcome.Error) string {
	if e.Code != 0 || e.Message != "" {
		return e.Message
	}
	return e.Error()
}

// finishOnly deletes a submitted message whose recipients were all final
// already (a crash between its last update and its deletion). Its DSN, if
// it needed one, was spooled before that last update.
func (s *Scheduler) finishOnly(id string, st *msgState, now time.Time) {
	st.mu.Lock()
	st.finished = true
	dsnMsg, done, err := s.finish(id, st, nil, now)
	st.mu.Unlock()
	if done {
		s.forget(id)
	}
	if err != nil {
		s.log.Error("spool update of a finished message failed", zap.String("queue_id", id), zap.Error(err))
	}
	s.submitDSN(dsnMsg)
}

// finish ends a message whose last recipient became final: it spools the
// DSN it owes, then deletes the message. When the DSN can't be spooled (a
// full disk), the message stays in the spool with its final states
// (updates) and joins the owed list, which every Tick retries; a restart
// finds it again too (spool.RecoverStats.Owed). So a bounce is reported
// late, never lost. done says the message left the spool. st.mu is held.
func (s *Scheduler) finish(id string, st *msgState, updates map[int]spool.Recipient, now time.Time) (dsnMsg *spool.Message, done bool, err error) {
	dsnMsg, ok := s.putDSN(id, st, st.failed, time.Time{}, now)
	if !ok {
		if len(updates) > 0 {
			err = s.opts.Spool.Update(id, updates, false)
		}
		s.mu.Lock()
		s.owed = append(s.owed, id)
		s.mu.Unlock()
		return nil, false, err
	}
	return dsnMsg, true, s.opts.Spool.Update(id, nil, true)
}

// retryOwed tries again to spool the DSNs that could not be written when
// their messages finished.
func (s *Scheduler) retryOwed(now time.Time) {
	s.mu.Lock()
	if len(s.owed) == 0 || now.Before(s.owedNext) {
		// A full spool is not asked every tick: each round that fails
		// doubles the wait (up to owedMaxWait), as each reads the
		// headers of every owed message's body again.
		s.mu.Unlock()
		return
	}
	ids := s.owed
	s.owed = nil
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.owed) == 0 {
			s.owedWait = 0
			return
		}
		s.owedWait = min(max(2*s.owedWait, s.opts.MaintainInterval), owedMaxWait)
		s.owedNext = now.Add(s.owedWait)
	}()
	for _, id := range ids {
		s.mu.Lock()
		st := s.msgs[id]
		s.mu.Unlock()
		if st == nil {
			continue
		}
		st.mu.Lock()
		dsnMsg, done, err := s.finish(id, st, nil, now)
		st.mu.Unlock()
		if err != nil {
			s.log.Error("spool delete of a finished message failed", zap.String("queue_id", id), zap.Error(err))
		}
		if done {
			s.forget(id)
			s.submitDSN(dsnMsg)
		}
	}
}

func (s *Scheduler) submitDSN(m *spool.Message) {
	if m == nil {
		return
	}
	if err := s.Submit(m); err != nil {
		s.log.Error("submitting a DSN failed", zap.String("queue_id", m.ID), zap.Error(err))
	}
}

// interimDSN spools the DSN a settle owes before the message ends —
// relayed and delayed reports — and records the delay reports it carries
// in updates (DelayNotified), which the caller writes next. When it can't
// be spooled, a delay report is tried again at the next deferral, and a
// relayed one waits for the message's final DSN. st.mu is held.
func (s *Scheduler) interimDSN(d *queue.Delivery, st *msgState, reports []report, updates map[int]spool.Recipient, now time.Time) *spool.Message {
	m, ok := s.putDSN(d.MsgID, st, reports, time.Unix(0, d.Expires), now)
	if !ok {
		for _, r := range reports {
			if r.Action == actRelayed {
				st.failed = append(st.failed, r)
			}
		}
		return nil
	}
	for _, r := range d.Rcpts {
		rec, ok := updates[int(r.Idx)]
		if !ok || rec.State != spool.Pending || rec.DelayNotified {
			continue
		}
		for _, rep := range reports {
			if rep.Action == actDelayed && rep.Addr == r.Addr {
				rec.DelayNotified = true
				updates[int(r.Idx)] = rec
				if st.notified == nil {
					st.notified = map[int32]bool{}
				}
				st.notified[r.Idx] = true
				break
			}
		}
	}
	return m
}

// delayNotified reports whether recipient idx of message id had its delay
// DSN, reading the flags from the spool the first time it is asked (a
// message recovered after a restart). st.mu is held.
func (s *Scheduler) delayNotified(id string, st *msgState, idx int32) bool {
	if !st.loaded {
		st.loaded = true
		m, err := s.opts.Spool.Get(id)
		if err != nil {
			s.log.Warn("reading delay-notified flags failed", zap.String("queue_id", id), zap.Error(err))
		} else {
			for i, r := range m.Recipients {
				if r.DelayNotified {
					if st.notified == nil {
						st.notified = map[int32]bool{}
					}
					st.notified[int32(i)] = true
				}
			}
		}
	}
	return st.notified[idx]
}

// putDSN spools a DSN about message id reporting on reports (those of them
// the recipients' NOTIFY asks for) and returns it for Submit; nil when
// none is due (nothing asked for, a null sender). ok is false when one was
// due and the spool refused it (logged). retryUntil is when the message
// expires, for delayed reports. st.mu is held.
//
// The original message's envelope (ENVID, RET, SMTPUTF8, each recipient's
// NOTIFY and ORCPT) is read from the spool here, not kept in memory for
// the life of every message: a DSN is rare, a queued message is not.
func (s *Scheduler) putDSN(id string, st *msgState, reports []report, retryUntil, now time.Time) (_ *spool.Message, ok bool) {
	if len(reports) == 0 || st.sender == "" {
		return nil, true
	}
	orig, err := s.opts.Spool.Get(id)
	if err != nil {
		s.log.Warn("DSN without the original envelope", zap.String("queue_id", id), zap.Error(err))
		orig = nil
	}
	reports = wanted(reports, orig)
	if len(reports) == 0 {
		return nil, true
	}
	d := &dsn{
		ReportingMTA: s.opts.Hostname, QueueID: id, Sender: st.sender,
		Arrival: st.arrival, Now: now, RetryUntil: retryUntil, Rcpts: reports,
	}
	if orig != nil {
		d.EnvID, d.SMTPUTF8 = orig.EnvID, orig.SMTPUTF8
	}
	if r, err := s.opts.Spool.OpenBody(id); err == nil {
		d.Headers, err = readHeaders(r)
		_ = r.Close()
		if err != nil {
			s.log.Warn("DSN without the original headers", zap.String("queue_id", id), zap.Error(err))
		}
	} else {
		s.log.Warn("DSN without the original headers", zap.String("queue_id", id), zap.Error(err))
	}
	if orig != nil && orig.Ret == spool.RetFull {
		if r, err := s.opts.Spool.OpenBody(id); err == nil {
			defer r.Close()
			d.Full, d.FullEightBit = r, orig.EightBit || orig.SMTPUTF8
		}
	}

	w := s.opts.Spool.NewBody()
	err = d.write(w)
	if errors.Is(err, errUnreturnable) {
		w.Abort()
		d.headersOnly(err)
		w = s.opts.Spool.NewBody()
		err = d.write(w)
	}
	m := &spool.Message{
		Sender:     "",
		Recipients: []spool.Recipient{{Addr: st.sender}},
		Received:   now,
		Group:      st.group,
		Binding:    st.binding,
		DSNFor:     id,
		// A DSN about internationalised mail is one itself (RFC 6533);
		// 8-bit returned content is declared to the next hop.
		SMTPUTF8: d.global(),
		EightBit: d.eightBit(),
	}
	if err == nil {
		err = s.opts.Spool.PutBody(m, w)
	}
	if err != nil {
		w.Abort()
		s.log.Error("spooling a DSN failed; it is retried", zap.String("queue_id", id), zap.Error(err))
		return nil, false
	}
	actions := make([]string, len(reports))
	for i, r := range reports {
		actions[i] = r.Action.String()
	}
	logging.DSN{QueueID: m.ID, DSNFor: id, Recipient: st.sender, Actions: actions, Size: m.Size}.Log(s.log)
	return m, true
}

// wanted fills in each report's NOTIFY and ORCPT from the original
// message's recipients (a report made at recovery has neither) and keeps
// the reports their NOTIFY asks for. orig may be nil (not readable): the
// reports are then judged by what they carry.
func wanted(reports []report, orig *spool.Message) []report {
	var byAddr map[string]int
	if orig != nil {
		byAddr = make(map[string]int, len(orig.Recipients))
		for i := len(orig.Recipients) - 1; i >= 0; i-- {
			byAddr[orig.Recipients[i].Addr] = i
		}
	}
	out := make([]report, 0, len(reports))
	for _, r := range reports {
		if i, ok := byAddr[r.Addr]; ok {
			r.Notify, r.ORcpt = orig.Recipients[i].Notify, orig.Recipients[i].ORcpt
		}
		if r.Notify.Has(r.Action.notifyBit()) {
			out = append(out, r)
		}
	}
	return out
}
