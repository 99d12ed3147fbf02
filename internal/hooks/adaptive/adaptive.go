// Package adaptive is the built-in "adaptive" hook plugin: a circuit breaker
// per domain/binding pair. After `failures` consecutive failed connection
// attempts, or as many consecutive sessions ending with a 421, it holds the
// pair at zero new connections for `pause`; each further trip before a
// success doubles the pause, up to `max_pause`. A success — a connection
// made, for the connection count; a session ending without a 421, for
// everything — resets the counts and the doubling (a pause already running
// runs out: the success may be a session opened before the trouble).
//
// It holds a pair by returning hooks.Handled from its __mail_queue_maintain
// hook, which stops the chain and the default action. It must never open a
// connection, sleep, or read the wall clock for its decisions: it uses the
// time the chains pass in. Its per-pair state lives only while a pair has
// failures or a pause, and is bounded by `max_pairs`.
//
// Settings (hooks.settings.adaptive):
//
//	failures:  5      # consecutive failures that trip the breaker, ≥ 1
//	pause:     30s    # first pause, > 0
//	max_pause: 10m    # longest pause, ≥ pause
//	max_pairs: 100000 # pairs tracked at once, ≥ 1
package adaptive

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/queue"
)

// Name is the plugin's name in hooks.plugins.
const Name = "adaptive"

func init() { hooks.RegisterPlugin(Name, Plugin) }

// Config is the breaker's tuning. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	Failures int           // consecutive failures that trip the breaker
	Pause    time.Duration // first pause
	MaxPause time.Duration // cap on the doubling pause
	MaxPairs int           // most pairs tracked at once
}

// DefaultConfig returns the defaults: 5 failures, 30s, 10m, 100000 pairs.
func DefaultConfig() Config {
	return Config{Failures: 5, Pause: 30 * time.Second, MaxPause: 10 * time.Minute, MaxPairs: 100_000}
}

// ParseSettings reads hooks.settings.adaptive over the defaults. Errors name
// the key: "hooks.settings.adaptive.pause: ...".
func ParseSettings(s map[string]any) (Config, error) {
	c := DefaultConfig()
	for _, k := range []string{"failures", "pause", "max_pause", "max_pairs"} {
		v, ok := s[k]
		if !ok {
			continue
		}
		var err error
		switch k {
		case "failures":
			c.Failures, err = positiveInt(v)
		case "max_pairs":
			c.MaxPairs, err = positiveInt(v)
		case "pause":
			c.Pause, err = positiveDuration(v)
		case "max_pause":
			c.MaxPause, err = positiveDuration(v)
		}
		if err != nil {
			return Config{}, fmt.Errorf("hooks.settings.%s.%s: %w", Name, k, err)
		}
	}
	for k := range s {
		switch k {
		case "failures", "pause", "max_pause", "max_pairs":
		default:
			return Config{}, fmt.Errorf("hooks.settings.%s.%s: unknown setting (known: failures, pause, max_pause, max_pairs)", Name, k)
		}
	}
	if c.MaxPause < c.Pause {
		return Config{}, fmt.Errorf("hooks.settings.%s.max_pause: %s is shorter than pause %s", Name, c.MaxPause, c.Pause)
	}
	return c, nil
}

// positiveInt accepts the integer types YAML, JSON and env decoding yield.
func positiveInt(v any) (int, error) {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case int32:
		n = int64(x)
	case uint64:
		if x > math.MaxInt32 {
			return 0, fmt.Errorf("%d is too large", x)
		}
		n = int64(x)
	case float64:
		if x != math.Trunc(x) {
			return 0, fmt.Errorf("want a whole number, got %v", x)
		}
		n = int64(x)
	default:
		return 0, fmt.Errorf("want a positive integer, got %T %v", v, v)
	}
	if n < 1 || n > math.MaxInt32 {
		return 0, fmt.Errorf("want a positive integer, got %d", n)
	}
	return int(n), nil
}

// positiveDuration accepts a Go duration string ("30s") or a time.Duration;
// a bare number is refused because its unit would be a guess.
func positiveDuration(v any) (time.Duration, error) {
	var d time.Duration
	switch x := v.(type) {
	case string:
		var err error
		if d, err = time.ParseDuration(x); err != nil {
			return 0, fmt.Errorf("want a duration like \"30s\": %w", err)
		}
	case time.Duration:
		d = x
	default:
		return 0, fmt.Errorf("want a duration like \"30s\", got %T %v", v, v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("want a positive duration, got %s", d)
	}
	return d, nil
}

// Plugin is the hooks.Plugin for "adaptive".
func Plugin(reg *hooks.Registry, cfg hooks.PluginConfig) error {
	c, err := ParseSettings(cfg.Settings)
	if err != nil {
		return err
	}
	a, err := New(c, cfg.Logger, cfg.Metrics, cfg.Now)
	if err != nil {
		return err
	}
	a.Register(reg)
	return nil
}

type key struct {
	domain string
	slot   int
}

type pairState struct {
	connFails int       // consecutive failed connection attempts
	sessFails int       // consecutive sessions ending with a 421
	trips     int       // trips since the last success
	until     time.Time // end of the running pause; zero when none
	// suspended: the pause is a suspension the scheduler holds (and an
	// operator may lift), so Maintain does not hold the pair itself.
	suspended bool
}

// Adaptive is the breaker. Its hooks are safe for concurrent use.
type Adaptive struct {
	cfg   Config
	reg   *hooks.Registry // for Suspend; nil before Register
	log   *zap.Logger
	now   func() time.Time
	trips prometheus.Counter // nil without a registerer

	mu    sync.Mutex
	pairs map[key]*pairState
}

// New returns a breaker. log and now may be nil (no logging; time.Now);
// m, when non-nil, gets mtad_adaptive_trips_total.
func New(c Config, log *zap.Logger, m prometheus.Registerer, now func() time.Time) (*Adaptive, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if now == nil {
		now = time.Now
	}
	a := &Adaptive{cfg: c, log: log, now: now, pairs: make(map[key]*pairState)}
	if m != nil {
		trips := prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mtad_adaptive_trips_total",
			Help: "Times the adaptive hook paused a domain/binding pair.",
		})
		if err := m.Register(trips); err != nil {
			are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
			existing, isCounter := are.ExistingCollector.(prometheus.Counter)
			if !ok || !isCounter {
				return nil, fmt.Errorf("registering adaptive metrics: %w", err)
			}
			trips = existing
		}
		a.trips = trips
	}
	return a, nil
}

// Register puts the breaker's hooks on reg: first on the maintain chain (so
// a held pair is held whatever later hooks would do), last on the observer
// chains.
func (a *Adaptive) Register(reg *hooks.Registry) {
	a.mu.Lock()
	a.reg = reg
	a.mu.Unlock()
	reg.MailQueueMaintain.RegisterFirst(a.Maintain)
	reg.PostInitiateConnectionSMTP.RegisterLast(a.PostInitiate)
	reg.PostSessionSMTP.RegisterLast(a.PostSession)
}

// Maintain returns hooks.Handled while the pair is paused, holding it at
// zero new connections, and 0 otherwise.
func (a *Adaptive) Maintain(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz int, reserve int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := key{dr.Name, slot}
	st := a.pairs[k]
	if st == nil || !a.paused(k, st, now) || st.suspended {
		return 0
	}
	return hooks.Handled
}

// PostInitiate counts a failed connection attempt, or clears the count on a
// connection made. Local codes (a cap reached, a cancellation) say nothing
// about the destination and are ignored.
func (a *Adaptive) PostInitiate(dr *queue.DomainRecord, slot int, now time.Time, connFD int) {
	if connFD < 0 && hooks.ConnErr(connFD).Local() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k := key{dr.Name, slot}
	if connFD >= 0 {
		if st := a.pairs[k]; st != nil {
			st.connFails = 0
			a.forgetIfClear(k, st)
		}
		return
	}
	a.failure(dr, k, now, false)
}

// PostSession counts a session ending with a 421, or resets the pair on
// any other session end.
func (a *Adaptive) PostSession(dr *queue.DomainRecord, slot int, now time.Time, r hooks.SessionResult) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := key{dr.Name, slot}
	if r.Code421 {
		a.failure(dr, k, now, true)
		return
	}
	if st := a.pairs[k]; st != nil {
		st.connFails, st.sessFails, st.trips = 0, 0, 0
		a.forgetIfClear(k, st)
	}
}

// Paused reports whether the pair is paused at the plugin clock's now, and
// until when.
func (a *Adaptive) Paused(domain string, slot int) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := key{domain, slot}
	st := a.pairs[k]
	if st == nil || !a.paused(k, st, a.now()) {
		return time.Time{}, false
	}
	return st.until, true
}

// Tracked reports how many pairs have state.
func (a *Adaptive) Tracked() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pairs)
}

// paused reports whether st's pause is running at now, ending (and logging
// the end of) a pause that has run out. Called with mu held.
func (a *Adaptive) paused(k key, st *pairState, now time.Time) bool {
	if st.until.IsZero() {
		return false
	}
	if now.Before(st.until) {
		return true
	}
	st.until = time.Time{}
	a.log.Info("adaptive pause end",
		zap.String("event", "adaptive_pause_end"),
		zap.String("domain", k.domain),
		zap.Int("binding_slot", k.slot))
	a.forgetIfClear(k, st)
	return false
}

// failure counts one failure for the pair and trips the breaker at the
// threshold. Failures during a pause come from connections made before it
// and are not counted. Called with mu held.
func (a *Adaptive) failure(dr *queue.DomainRecord, k key, now time.Time, is421 bool) {
	st := a.pairs[k]
	if st == nil {
		if st = a.track(k); st == nil {
			return
		}
	}
	if a.paused(k, st, now) {
		return
	}
	n := &st.connFails
	if is421 {
		n = &st.sessFails
	}
	*n++
	if *n < a.cfg.Failures {
		return
	}
	pause := a.cfg.Pause
	for i := 0; i < st.trips && pause < a.cfg.MaxPause; i++ {
		pause *= 2
	}
	pause = min(pause, a.cfg.MaxPause)
	st.trips++
	st.connFails, st.sessFails = 0, 0
	st.until = now.Add(pause)
	if a.trips != nil {
		a.trips.Inc()
	}
	reason := "connect_failures"
	if is421 {
		reason = "421"
	}
	// The pause is a suspension with source "adaptive" where the scheduler
	// keeps them: listed, logged, liftable by an operator.
	st.suspended = a.reg != nil && a.reg.Suspend(dr, k.slot, st.until, "adaptive",
		fmt.Sprintf("%d consecutive %s", a.cfg.Failures, map[bool]string{false: "connection failures", true: "sessions ending with 421"}[is421]))
	a.log.Info("adaptive pause start",
		zap.String("event", "adaptive_pause_start"),
		zap.String("domain", k.domain),
		zap.Int("binding_slot", k.slot),
		zap.Duration("pause", pause),
		zap.String("reason", reason),
		zap.Int("trips", st.trips))
}

// evictScan bounds the search for an entry to evict when the table is full.
const evictScan = 16

// track makes state for a new pair, evicting an unpaused pair when the
// table is full. If the first entries looked at are all paused it tracks
// nothing, so the new pair is never paused: failing open beats an
// unbounded table. Called with mu held.
func (a *Adaptive) track(k key) *pairState {
	if len(a.pairs) >= a.cfg.MaxPairs {
		evicted, looked := false, 0
		for ok, st := range a.pairs {
			if st.until.IsZero() {
				delete(a.pairs, ok)
				evicted = true
				break
			}
			if looked++; looked >= evictScan {
				break
			}
		}
		if !evicted {
			return nil
		}
	}
	st := &pairState{}
	a.pairs[k] = st
	return st
}

// forgetIfClear drops state that holds nothing. Called with mu held.
func (a *Adaptive) forgetIfClear(k key, st *pairState) {
	if st.connFails == 0 && st.sessFails == 0 && st.trips == 0 && st.until.IsZero() {
		delete(a.pairs, k)
	}
}
