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

// backlogPerConnection is how many waiting deliveries justify one more
// connection for a pair. A session carries one delivery at a time, so a
// large figure (it was max_deliveries_per_connection, 100) keeps a hot
// domain's queue standing hundreds deep (W3: p50 821 ms at 1,400 msgs/s);
// 1 opens and closes a connection per message when many domains share the
// global cap (W1: the delivered rate fell by a quarter in connection churn).
const backlogPerConnection = 8

// Goal returns how many new connections a domain/binding pair should get:
// one per backlogPerConnection deliveries waiting in its active queue,
// counting the connections it already has open or opening, but never more
// than the domain's or the pair's remaining headroom. domainMax or pairMax
// ≤ 0 mean no limit. The result is never negative.
func Goal(backlog, pairOpen, pairMax, domainOpen, domainMax int) int {
	if backlog <= 0 {
		return 0
	}
	g := (backlog+backlogPerConnection-1)/backlogPerConnection - pairOpen
	if pairMax > 0 {
		g = min(g, pairMax-pairOpen)
	}
	if domainMax > 0 {
		g = min(g, domainMax-domainOpen)
	}
	return max(g, 0)
}
