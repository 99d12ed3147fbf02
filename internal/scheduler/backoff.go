package scheduler

import (
	"math"
	"time"
)

// Backoff returns how long a delivery waits after its attempts-th failed
// attempt: base × 2^(attempts−1), capped at max, then multiplied by a jitter
// factor drawn from [1−spread, 1+spread] (r is a uniform draw from [0, 1)),
// and capped at max again. The arithmetic is done in float64 so that the
// jitter is a real multiplier — truncating it to an integer would make every
// delivery deferred in the same tick retry in the same tick again, which is
// what the jitter is there to prevent after an outage or a restart.
// attempts < 1 is taken as 1; base ≤ 0 gives 0; max ≤ 0 means no cap.
func Backoff(base, max time.Duration, attempts int, spread, r float64) time.Duration {
	if base <= 0 {
		return 0
	}
	if attempts < 1 {
		attempts = 1
	}
	limit := math.Inf(1)
	if max > 0 {
		limit = float64(max)
	}
	// 2^(attempts−1) overflows float64 only past 2^1023; Min keeps it sane.
	f := math.Min(float64(base)*math.Exp2(float64(attempts-1)), limit)
	f *= 1 + spread*(2*r-1)
	f = math.Min(f, limit)
	if f >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(f)
}

// Goal returns how many new connections a domain/binding pair should get:
// one for each delivery waiting in its active queue beyond the connections
// it already has open or opening, but never more than the domain's or the
// pair's remaining headroom. A session carries one delivery at a time, so
// fewer connections than waiting deliveries means mail waits in the queue
// (carrying the backlog in connections of max_deliveries_per_connection each
// kept a hot domain's queue ~1,000 deep at 1,400 msgs/s); a connection that
// finds the queue empty idles briefly and quits. domainMax or pairMax ≤ 0
// mean no limit. The result is never negative.
func Goal(backlog, pairOpen, pairMax, domainOpen, domainMax int) int {
	if backlog <= 0 {
		return 0
	}
	g := backlog - pairOpen
	if pairMax > 0 {
		g = min(g, pairMax-pairOpen)
	}
	if domainMax > 0 {
		g = min(g, domainMax-domainOpen)
	}
	return max(g, 0)
}
