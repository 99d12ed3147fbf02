package policy

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/mtad/mtad/internal/config"
)

// Rate is a budget of N events per Per: "100/s" is {100, time.Second}. The
// zero Rate is unlimited.
type Rate struct {
	N   float64
	Per time.Duration
}

// ParseRate reads a rate as the config writes it: "100/s", "10,000/h",
// "3000/m", "2.5/s", "5/d", blanks allowed around the parts, or "unlimited"
// (the zero Rate). Zero, negative and malformed numbers, other units and
// the empty string are errors naming the value. The syntax is
// config.ParseRate's, so that config validation and this agree.
func ParseRate(s string) (Rate, error) {
	n, per, err := config.ParseRate(s)
	if err != nil {
		return Rate{}, fmt.Errorf("rate %q: %w", s, err)
	}
	return Rate{N: n, Per: per}, nil
}

// Unlimited reports whether r sets no limit.
func (r Rate) Unlimited() bool { return r.N <= 0 || r.Per <= 0 }

// perSecond is the rate in events per second.
func (r Rate) perSecond() float64 { return r.N / r.Per.Seconds() }

// Limit is r for a golang.org/x/time/rate.Limiter: events per second,
// rate.Inf when unlimited.
func (r Rate) Limit() rate.Limit {
	if r.Unlimited() {
		return rate.Inf
	}
	return rate.Limit(r.perSecond())
}

// Burst is the bucket size to pair with Limit: one second's worth of the
// rate, rounded up, and at least 1. A budget of "3000/m" thus sends at most
// 50 at once, then one every 20 ms, instead of 3000 in a burst at the top
// of the minute, which is what receivers that count per second punish;
// "1/m" still lets one message through at once. Unlimited rates have Burst
// 0 (a Limiter with rate.Inf ignores it).
func (r Rate) Burst() int {
	if r.Unlimited() {
		return 0
	}
	b := math.Ceil(r.perSecond())
	if b > math.MaxInt32 {
		return math.MaxInt32
	}
	return max(1, int(b))
}

// String writes r back in the config's syntax ("100/s", "2.5/m",
// "unlimited"). A Per that is not a whole unit is written in seconds.
func (r Rate) String() string {
	if r.Unlimited() {
		return "unlimited"
	}
	n, unit := r.N, "s"
	switch r.Per {
	case time.Second:
	case time.Minute:
		unit = "m"
	case time.Hour:
		unit = "h"
	case 24 * time.Hour:
		unit = "d"
	default:
		n = r.perSecond()
	}
	return strconv.FormatFloat(n, 'f', -1, 64) + "/" + unit
}
