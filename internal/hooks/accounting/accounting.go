// Package accounting is the built-in "accounting" hook plugin: an observer
// that counts what the maintenance tick asked for and what connection
// attempts yielded. It registers first on __mail_queue_maintain (recording
// each pair's goal) and on post_initiate_connection_smtp (attempts,
// successes, CONN_ERR codes by kind), and always returns 0, so it never
// changes a decision. It must never open a connection or hold per-pair
// state: its counters are labelled by binding slot and result only, which
// keeps metric cardinality bounded whatever the number of domains.
//
// Enable it by name ("accounting") after importing this package for its
// side effect. It takes no settings.
package accounting

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/queue"
)

// Name is the plugin's name in hooks.plugins.
const Name = "accounting"

func init() { hooks.RegisterPlugin(Name, Plugin) }

// Snapshot is a copy of the counters.
type Snapshot struct {
	MaintainCalls int64                   // maintain hook invocations (pairs visited)
	GoalTotal     int64                   // sum of the goals asked for
	Attempts      int64                   // connection attempts reported
	Successes     int64                   // attempts that yielded a connection
	Errors        map[hooks.ConnErr]int64 // failed attempts by CONN_ERR code
}

// Accounting holds the counters. Its hooks are safe for concurrent use.
type Accounting struct {
	mu   sync.Mutex
	snap Snapshot

	goals    *prometheus.CounterVec // nil without a registerer
	attempts *prometheus.CounterVec
}

// New returns an Accounting whose counters are also exported on m when m is
// non-nil: mtad_maintain_goal_total{binding_slot} and
// mtad_connection_attempts_total{result} (result is "success" or a CONN_ERR
// name such as "refused"). Collectors already registered on m (a second
// Enable on the same registerer, as after a reload) are reused.
func New(m prometheus.Registerer) (*Accounting, error) {
	a := &Accounting{snap: Snapshot{Errors: map[hooks.ConnErr]int64{}}}
	if m == nil {
		return a, nil
	}
	var err error
	a.goals, err = register(m, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_maintain_goal_total",
		Help: "Sum of the new-connection goals the maintenance tick set for domain/binding pairs.",
	}, []string{"binding_slot"}))
	if err != nil {
		return nil, err
	}
	a.attempts, err = register(m, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_connection_attempts_total",
		Help: "Outbound connection attempts by result: success or the CONN_ERR kind.",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	return a, nil
}

func register(m prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	err := m.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	return nil, fmt.Errorf("registering accounting metrics: %w", err)
}

// Plugin is the hooks.Plugin for "accounting".
func Plugin(reg *hooks.Registry, cfg hooks.PluginConfig) error {
	for k := range cfg.Settings {
		return fmt.Errorf("hooks.settings.%s.%s: unknown setting (accounting takes none)", Name, k)
	}
	a, err := New(cfg.Metrics)
	if err != nil {
		return err
	}
	a.Register(reg)
	return nil
}

// Register puts a's hooks first on the maintain and post-initiate chains.
func (a *Accounting) Register(reg *hooks.Registry) {
	reg.MailQueueMaintain.RegisterFirst(a.Maintain)
	reg.PostInitiateConnectionSMTP.RegisterFirst(a.PostInitiate)
}

// Maintain records the pair's goal and returns 0.
func (a *Accounting) Maintain(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz int, reserve int) int {
	a.mu.Lock()
	a.snap.MaintainCalls++
	a.snap.GoalTotal += int64(goalsz)
	a.mu.Unlock()
	if a.goals != nil && goalsz > 0 {
		a.goals.WithLabelValues(strconv.Itoa(slot)).Add(float64(goalsz))
	}
	return 0
}

// PostInitiate records a connection attempt's result.
func (a *Accounting) PostInitiate(dr *queue.DomainRecord, slot int, now time.Time, connFD int) {
	result := "success"
	a.mu.Lock()
	a.snap.Attempts++
	if connFD >= 0 {
		a.snap.Successes++
	} else {
		ce := hooks.ConnErr(connFD)
		a.snap.Errors[ce]++
		result = ce.String()
	}
	a.mu.Unlock()
	if a.attempts != nil {
		a.attempts.WithLabelValues(result).Inc()
	}
}

// Snapshot returns a copy of the counters.
func (a *Accounting) Snapshot() Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.snap
	s.Errors = make(map[hooks.ConnErr]int64, len(a.snap.Errors))
	for k, v := range a.snap.Errors {
		s.Errors[k] = v
	}
	return s
}
