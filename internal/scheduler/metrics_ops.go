package scheduler

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
)

// The operator's metrics (issue 11): what came in, what became of each
// recipient, connection attempts, queue sizes and the delay from the
// injection's 250 to the remote 250. Every label takes a bounded set of
// values: events and CONN_ERR kinds are fixed lists, bindings and bounce
// classes are configured, and domains are the top N by volume plus
// "other" (topDomains), never every domain mailed.

// DefaultTopDomains is how many domains get series of their own when
// Options.TopDomains is 0 (config metrics.top_domains).
const DefaultTopDomains = 20

// topInterval is how often the top domains are recomputed (and the
// summary's counts halved).
const topInterval = time.Minute

// delayBuckets span a delivery from the same second to the five days of
// the default max_age.
var delayBuckets = []float64{0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600, 120 * 3600}

type opsMetrics struct {
	msgsReceived  prometheus.Counter
	rcptsReceived prometheus.Counter
	recipients    *prometheus.CounterVec // {event,binding,class}
	connections   *prometheus.CounterVec // {result}
	delay         prometheus.Histogram
	top           *topDomains
}

// registerOps registers the operator's metrics on m. Counters a scheduler
// before this one registered on m are reused (tests build several on one
// registry); gauges read this scheduler's state, and the first one stays.
func (s *Scheduler) registerOps(m prometheus.Registerer, topN int) error {
	om := &s.om
	var err error
	if om.msgsReceived, err = reuse(m, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mtad_messages_received_total",
		Help: "Messages handed over by injection (SMTP or HTTP) after their spool sync.",
	})); err != nil {
		return err
	}
	if om.rcptsReceived, err = reuse(m, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mtad_recipients_received_total",
		Help: "Recipients of the messages handed over by injection.",
	})); err != nil {
		return err
	}
	if om.recipients, err = reuse(m, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_recipients_total",
		Help: "Recipient outcomes by event (delivered, deferred, bounced, expired, cancelled), binding and bounce class (empty for delivered).",
	}, []string{"event", "binding", "class"})); err != nil {
		return err
	}
	if om.connections, err = reuse(m, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_connections_total",
		Help: "Outbound connection attempts by result: ok, or the CONN_ERR kind (refused, timeout, nxdomain, tls, ...).",
	}, []string{"result"})); err != nil {
		return err
	}
	if om.delay, err = reuse(m, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mtad_delivery_delay_seconds",
		Help:    "Time from a message's reception (the injection's 250) to a recipient's delivery (the remote 250).",
		Buckets: delayBuckets,
	})); err != nil {
		return err
	}
	domains, err := reuse(m, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtad_domain_recipients_total",
		Help: "Recipient outcomes by domain and event, for the top domains by volume (metrics.top_domains); the rest count under domain=\"other\".",
	}, []string{"domain", "event"}))
	if err != nil {
		return err
	}
	om.top = newTopDomains(topN, domains)

	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_queued_messages", Help: "Messages with recipients still pending.",
		}, func() float64 { return float64(s.Pending()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_queued_recipients", Help: "Recipients still pending (active, delayed or in a session).",
		}, func() float64 { return float64(s.pendingRcpts.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_connections_open", Help: "Outbound connections open or being set up.",
		}, func() float64 { return float64(s.pool.Total()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtad_connections_max", Help: "The global cap on outbound connections (delivery.max_connections).",
		}, func() float64 { return float64(s.pool.Max()) }),
		queueGauge{q: s.q, desc: prometheus.NewDesc("mtad_queued_deliveries",
			"Deliveries (a message's recipients at one domain) queued, by state: active (ready to go) or delayed (waiting for their next attempt).",
			[]string{"state"}, nil)},
	}
	if u, ok := s.opts.Spool.(spoolUsage); ok {
		gauges = append(gauges, spoolGauge{u: u,
			used: prometheus.NewDesc("mtad_spool_bytes", "Disk space the spool's store takes (WAL, tables, manifests).", nil, nil),
			free: prometheus.NewDesc("mtad_spool_free_bytes", "Space left on the spool's file system.", nil, nil)})
	}
	for _, g := range gauges {
		if err := m.Register(g); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return fmt.Errorf("registering the scheduler's metrics: %w", err)
			}
		}
	}
	// Every connection attempt, whoever made it, ends in this chain with
	// a descriptor or a CONN_ERR: the one place to count them.
	s.hooks.PostInitiateConnectionSMTP.RegisterFirst(func(_ *queue.DomainRecord, _ int, _ time.Time, fd int) {
		result := "ok"
		if fd < 0 {
			result = hooks.ConnErr(fd).String()
		}
		om.connections.WithLabelValues(result).Inc()
	})
	return nil
}

// reuse registers c on m, or returns the collector of the same
// description already there.
func reuse[C prometheus.Collector](m prometheus.Registerer, c C) (C, error) {
	err := m.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, fmt.Errorf("registering the scheduler's metrics: %w", err)
}

// queueGauge reads both queue sizes with one Stats call per scrape.
type queueGauge struct {
	q    *queue.Queues
	desc *prometheus.Desc
}

func (g queueGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }
func (g queueGauge) Collect(ch chan<- prometheus.Metric) {
	st := g.q.Stats()
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(st.Active), "active")
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(st.Delayed), "delayed")
}

// spoolUsage is what the spool gauges need; *spool.Spool has it.
type spoolUsage interface {
	Usage() (used, free uint64, err error)
}

// spoolGauge reads the spool's usage once per scrape; a spool that
// cannot say (closed, reopening) reports nothing rather than a zero.
type spoolGauge struct {
	u          spoolUsage
	used, free *prometheus.Desc
}

func (g spoolGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.used; ch <- g.free }
func (g spoolGauge) Collect(ch chan<- prometheus.Metric) {
	used, free, err := g.u.Usage()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(g.used, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(g.free, prometheus.GaugeValue, float64(free))
}

// received counts a message handed over by injection.
func (s *Scheduler) received(rcpts int) {
	now := s.clock.Now()
	s.sum.add(now, sumReceived, 1)
	s.sum.add(now, sumReceivedRecipients, rcpts)
	if s.om.msgsReceived != nil {
		s.om.msgsReceived.Inc()
		s.om.rcptsReceived.Add(float64(rcpts))
	}
}

// countOutcomes counts one settle's recipients: by event, binding and
// class, the delivered ones' delay, and by domain for the top domains.
func (s *Scheduler) countOutcomes(domain, binding string, verdicts []verdict, classes []policy.BounceClass, delay time.Duration) {
	if s.om.recipients == nil {
		return
	}
	var byEvent [vExpired + 1]int
	for i, v := range verdicts {
		byEvent[v]++
		class := ""
		if v == vDelivered {
			s.om.delay.Observe(delay.Seconds())
		} else {
			class = strconv.Itoa(int(classes[i]))
		}
		s.om.recipients.WithLabelValues(verdictEvent[v], binding, class).Inc()
	}
	for v, n := range byEvent {
		if n > 0 {
			s.om.top.add(domain, verdictEvent[v], n)
		}
	}
}

var verdictEvent = [...]string{vDelivered: "delivered", vDeferred: "deferred", vBounced: "bounced", vExpired: "expired"}

// tickMetrics recomputes the top domains every topInterval; tickMu is held.
func (s *Scheduler) tickMetrics(now time.Time) {
	if s.om.top != nil {
		s.om.top.maybeRecompute(now)
	}
}

// topDomains labels per-domain series with the domain's name only for the
// n domains with the most recipient outcomes recently; every other domain
// counts under "other". A Space-Saving summary of 8n counters (at least
// 64) tracks the volume in bounded memory; each minute its top n become
// the labelled set, the series of domains that left it are deleted, and
// its counts are halved so it follows the recent stream. Until the set is
// full a new domain joins it at once, so the first minute is not all
// "other". The label decision and the counter update share one lock, so a
// deleted series is never brought back by a late update: at most n domain
// labels exist at any time, plus "other".
type topDomains struct {
	mu   sync.Mutex
	n    int
	ss   *spaceSaving
	top  map[string]bool
	vec  *prometheus.CounterVec
	next time.Time // the next recompute; zero before the first tick
}

func newTopDomains(n int, vec *prometheus.CounterVec) *topDomains {
	if n <= 0 {
		n = DefaultTopDomains
	}
	return &topDomains{n: n, ss: newSpaceSaving(max(8*n, 64)), top: make(map[string]bool, n), vec: vec}
}

// add counts k outcomes of event for domain.
func (t *topDomains) add(domain, event string, k int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ss.add(domain, uint64(k))
	label := "other"
	switch {
	case t.top[domain]:
		label = domain
	case len(t.top) < t.n && domain != "other":
		t.top[domain] = true
		label = domain
	}
	t.vec.WithLabelValues(label, event).Add(float64(k))
}

// maybeRecompute recomputes the labelled set when its minute is up.
func (t *topDomains) maybeRecompute(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next.IsZero() {
		t.next = now.Add(topInterval)
		return
	}
	if now.Before(t.next) {
		return
	}
	t.next = now.Add(topInterval)
	t.recomputeLocked()
}

func (t *topDomains) recomputeLocked() {
	top := make(map[string]bool, t.n)
	for _, d := range t.ss.top(t.n) {
		if d != "other" { // a domain named "other" cannot have a label of its own
			top[d] = true
		}
	}
	for d := range t.top {
		if !top[d] {
			t.vec.DeletePartialMatch(prometheus.Labels{"domain": d})
		}
	}
	t.top = top
	t.ss.decay()
}

// labels returns the domains labelled now, for tests and the admin API.
func (t *topDomains) labels() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.top))
	for d := range t.top {
		out = append(out, d)
	}
	return out
}
