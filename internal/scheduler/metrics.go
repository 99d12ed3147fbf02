package scheduler

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/logging"
)

// policyMetrics are the metrics of policy actions (DESIGN invariant 9:
// every rule that acts says so in the log, the admin API and metrics).
type policyMetrics struct {
	actions *prometheus.CounterVec // mtad_policy_actions_total{action,source}
}

// registerPolicy registers the policy metrics on m, reusing collectors a
// scheduler before this one registered (tests build several).
func (s *Scheduler) registerPolicy(m prometheus.Registerer) error {
	actions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_policy_actions_total",
		Help: "Policy actions: suspensions and throttles put in force or ended, rule bounces, defers and rebinds, by action and source (rule, operator, adaptive).",
	}, []string{"action", "source"})
	if err := m.Register(actions); err != nil {
		are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
		existing, isVec := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok || !isVec {
			return fmt.Errorf("registering the policy metrics: %w", err)
		}
		actions = existing
	}
	s.pm.actions = actions
	for _, g := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_suspensions",
			Help: "Suspensions held (in force, or ended and not yet expired by the tick).",
		}, func() float64 { return float64(s.suspensions.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_rule_throttles",
			Help: "Response-rule throttles held (in force or ramping back).",
		}, func() float64 { return float64(s.overrides.Len()) }),
	} {
		if err := m.Register(g); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return fmt.Errorf("registering the policy metrics: %w", err)
			}
		}
	}
	return nil
}

// countAction counts one policy action.
func (s *Scheduler) countAction(action, source string) {
	if s.pm.actions != nil {
		s.pm.actions.WithLabelValues(action, source).Inc()
	}
}

// logPolicy writes a policy action's one log record and counts it.
func (s *Scheduler) logPolicy(r logging.Policy) {
	r.Log(s.log)
	s.countAction(r.Action, r.Source)
}
