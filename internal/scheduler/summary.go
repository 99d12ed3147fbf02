package scheduler

// The operator's summary (issue 11, `mtactl summary`, GET /api/v1/summary):
// totals since start and counts over the last minute of what came in and
// what became of each recipient, beside the queue, connection, spool and
// suspension figures of the moment. The counts are kept here, in process,
// whether or not Prometheus metrics are on: the summary must not depend on
// a registry, nor read counters back out of one. They are updated at the
// same call sites as the metrics (received in Intake, outcomes in settle).

import (
	"sync"
	"time"
)

// Event indices of a counter set.
const (
	sumReceived           = iota // messages handed over by injection
	sumReceivedRecipients        // their recipients
	sumDelivered                 // recipient outcomes from here on
	sumDeferred
	sumBounced
	sumExpired
	sumCancelled
	sumEvents
)

// summaryWindow is the span of Summary.LastMinute, in one-second buckets.
const summaryWindow = 60

// hourWindow is the span of Summary.LastHour, in one-minute buckets.
const hourWindow = 60

// Counts are numbers of messages received and of recipient outcomes. A
// recipient deferred three times counts three deferrals.
type Counts struct {
	Received           int64 `json:"received"`            // messages
	ReceivedRecipients int64 `json:"received_recipients"` // their recipients
	Delivered          int64 `json:"delivered"`
	Deferred           int64 `json:"deferred"`
	Bounced            int64 `json:"bounced"`
	Expired            int64 `json:"expired"`
	Cancelled          int64 `json:"cancelled"`
}

func countsOf(c [sumEvents]int64) Counts {
	return Counts{Received: c[sumReceived], ReceivedRecipients: c[sumReceivedRecipients],
		Delivered: c[sumDelivered], Deferred: c[sumDeferred], Bounced: c[sumBounced],
		Expired: c[sumExpired], Cancelled: c[sumCancelled]}
}

// Summary is the daemon's state at a glance.
type Summary struct {
	Time  time.Time `json:"time"`  // when it was taken (the scheduler's clock)
	Since time.Time `json:"since"` // when counting began (the scheduler's start)
	// Totals count since Since; LastMinute over the 60 seconds up to Time,
	// so it is also the rate per minute.
	Totals     Counts `json:"totals"`
	LastMinute Counts `json:"last_minute"`

	QueuedMessages   int   `json:"queued_messages"`   // messages with recipients pending
	QueuedRecipients int64 `json:"queued_recipients"` // recipients pending (active, delayed or in a session)

	Connections    int `json:"connections"`     // outbound connections open or being set up
	MaxConnections int `json:"max_connections"` // the global cap (delivery.max_connections)

	// The spool's disk use and the space left on its file system; nil
	// when the spool cannot say (rather than a misleading zero).
	SpoolBytes     *uint64 `json:"spool_bytes"`
	SpoolFreeBytes *uint64 `json:"spool_free_bytes"`

	Suspensions int `json:"suspensions"` // suspensions in force

	// LastHour is the throughput of the hourWindow minutes up to Time's,
	// oldest first, always hourWindow entries (a minute with nothing in
	// it counts zero), so a chart needs no gap filling.
	LastHour []MinuteCounts `json:"last_hour"`
}

// MinuteCounts are the counts of one minute of LastHour.
type MinuteCounts struct {
	Minute time.Time `json:"minute"` // the minute's start, UTC
	Counts
}

// summaryCounts are the totals, a ring of per-second buckets for the
// last minute and a ring of per-minute buckets for the last hour. The
// rings are fixed (60 buckets, 7 counters each): a bucket whose second
// (minute) has passed out of the window is reset when its slot comes
// round again, so nothing runs in the background and memory never grows.
// One mutex, held for a few additions: Intake's caller (the 250 path)
// takes it briefly, never while the scheduler does anything else.
type summaryCounts struct {
	mu     sync.Mutex
	since  time.Time
	totals [sumEvents]int64
	ring   [summaryWindow]struct {
		sec int64 // the Unix second the bucket counts; 0 = never used
		n   [sumEvents]int64
	}
	hour [hourWindow]struct {
		min int64 // the Unix minute (seconds / 60) the bucket counts; 0 = never used
		n   [sumEvents]int64
	}
}

// add counts n events of kind ev at now.
func (c *summaryCounts) add(now time.Time, ev, n int) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	c.bucket(now)[ev] += int64(n)
	c.minuteBucket(now)[ev] += int64(n)
	c.totals[ev] += int64(n)
	c.mu.Unlock()
}

// bucket returns the counters of now's second; c.mu is held.
func (c *summaryCounts) bucket(now time.Time) *[sumEvents]int64 {
	sec := now.Unix()
	b := &c.ring[mod(sec, summaryWindow)]
	if b.sec != sec {
		b.sec, b.n = sec, [sumEvents]int64{}
	}
	return &b.n
}

// minuteBucket returns the counters of now's minute; c.mu is held.
func (c *summaryCounts) minuteBucket(now time.Time) *[sumEvents]int64 {
	m := floorDiv(now.Unix(), 60)
	b := &c.hour[mod(m, hourWindow)]
	if b.min != m {
		b.min, b.n = m, [sumEvents]int64{}
	}
	return &b.n
}

// snapshot returns the totals, the counts of the summaryWindow seconds up
// to and including now's, and those of the hourWindow minutes up to and
// including now's, oldest first. A bucket stamped after now (the clock
// went back) is left out rather than counted twice.
func (c *summaryCounts) snapshot(now time.Time) (since time.Time, totals, last [sumEvents]int64, hour [hourWindow][sumEvents]int64) {
	sec := now.Unix()
	min := floorDiv(sec, 60)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.ring {
		b := &c.ring[i]
		if b.sec > sec-summaryWindow && b.sec <= sec {
			for e, n := range b.n {
				last[e] += n
			}
		}
	}
	for i := range c.hour {
		b := &c.hour[i]
		if age := min - b.min; age >= 0 && age < hourWindow {
			hour[hourWindow-1-age] = b.n
		}
	}
	return c.since, c.totals, last, hour
}

// floorDiv is a/n rounded down (Go's / rounds toward zero).
func floorDiv(a, n int64) int64 { return (a - mod(a, n)) / n }

func mod(a, n int64) int64 {
	if r := a % n; r >= 0 {
		return r
	}
	return a%n + n
}

// countOutcomesSummary counts one settle's recipient verdicts.
func (s *Scheduler) countOutcomesSummary(verdicts []verdict, now time.Time) {
	var by [vExpired + 1]int
	for _, v := range verdicts {
		by[v]++
	}
	s.sum.mu.Lock()
	b, h := s.sum.bucket(now), s.sum.minuteBucket(now)
	for v, n := range by {
		ev := verdictSummary[v]
		b[ev] += int64(n)
		h[ev] += int64(n)
		s.sum.totals[ev] += int64(n)
	}
	s.sum.mu.Unlock()
}

var verdictSummary = [...]int{vDelivered: sumDelivered, vDeferred: sumDeferred, vBounced: sumBounced, vExpired: sumExpired}

// countCancelled counts n recipients cancelled by an operator; the cancel
// action (issue 11) calls it where it writes the `cancelled` records.
func (s *Scheduler) countCancelled(n int) { s.sum.add(s.clock.Now(), sumCancelled, n) }

// Summary returns the daemon's state at a glance, at the scheduler's
// clock's now. Safe for concurrent use; it walks no queue (every figure
// is a counter or the pool's and suspensions' own count), so an operator
// polling it costs the scheduler nothing that grows with the queue.
func (s *Scheduler) Summary() Summary {
	now := s.clock.Now()
	since, totals, last, hour := s.sum.snapshot(now)
	sum := Summary{
		Time: now, Since: since,
		Totals: countsOf(totals), LastMinute: countsOf(last),
		QueuedMessages: s.Pending(), QueuedRecipients: s.pendingRcpts.Load(),
		Connections: s.pool.Total(), MaxConnections: s.pool.Max(),
		Suspensions: len(s.suspensions.List(now)),
		LastHour:    lastHour(now, hour),
	}
	if u, ok := s.opts.Spool.(spoolUsage); ok {
		if used, free, err := u.Usage(); err == nil {
			sum.SpoolBytes, sum.SpoolFreeBytes = &used, &free
		}
	}
	return sum
}

// lastHour dates the hour ring's snapshot: entry i is the minute
// hourWindow-1-i minutes before now's.
func lastHour(now time.Time, hour [hourWindow][sumEvents]int64) []MinuteCounts {
	first := time.Unix(floorDiv(now.Unix(), 60)*60, 0).UTC().Add(-(hourWindow - 1) * time.Minute)
	out := make([]MinuteCounts, hourWindow)
	for i := range hour {
		out[i] = MinuteCounts{Minute: first.Add(time.Duration(i) * time.Minute), Counts: countsOf(hour[i])}
	}
	return out
}
