package policy

// This file is a stand-in for the shaping branch's rate.go, with the same
// API, so that throttles and rules compile before the two branches meet.
// The lead deletes it at merge and keeps rate.go.

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Rate is N events per Per; the zero Rate is unlimited.
type Rate struct {
	N   float64
	Per time.Duration
}

// ParseRate reads "100/s", "10,000/h", "1/m" or "5/10m".
func ParseRate(s string) (Rate, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("%q is not a rate such as \"100/s\" or \"10,000/h\"", s)
	}
	f, err := strconv.ParseFloat(strings.ReplaceAll(n, ",", ""), 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return Rate{}, fmt.Errorf("%q is not a rate such as \"100/s\" or \"10,000/h\"", s)
	}
	var d time.Duration
	switch per {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	case "d":
		d = 24 * time.Hour
	default:
		d, err = time.ParseDuration(per)
		if err != nil || d <= 0 {
			return Rate{}, fmt.Errorf("%q is not a rate such as \"100/s\" or \"10,000/h\"", s)
		}
	}
	return Rate{N: f, Per: d}, nil
}

// Unlimited reports whether r sets no limit.
func (r Rate) Unlimited() bool { return r.N <= 0 || r.Per <= 0 }

// Limit is r as events per second.
func (r Rate) Limit() rate.Limit {
	if r.Unlimited() {
		return rate.Inf
	}
	return rate.Limit(r.N / r.Per.Seconds())
}

// Burst is the bucket's depth: one second's worth, at least 1.
func (r Rate) Burst() int {
	if r.Unlimited() {
		return 0
	}
	return max(1, int(math.Ceil(float64(r.Limit()))))
}
