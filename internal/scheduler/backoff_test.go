package scheduler

import (
	"math"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	const base, maxI = time.Minute, time.Hour
	tests := []struct {
		name     string
		attempts int
		spread   float64
		r        float64
		want     time.Duration
	}{
		{"first, no jitter", 1, 0.15, 0.5, time.Minute},
		{"zero attempts is first", 0, 0.15, 0.5, time.Minute},
		{"second doubles", 2, 0.15, 0.5, 2 * time.Minute},
		{"fifth", 5, 0.15, 0.5, 16 * time.Minute},
		{"low jitter", 1, 0.15, 0, time.Duration(0.85 * float64(time.Minute))},
		{"fractional jitter kept", 1, 0.15, 0.25, time.Duration(0.925 * float64(time.Minute))},
		{"capped", 10, 0.15, 0.5, time.Hour},
		{"capped then jittered down", 10, 0.15, 0, time.Duration(0.85 * float64(time.Hour))},
		{"jitter up never passes cap", 10, 0.15, 0.999, time.Hour},
		{"huge attempts", 5000, 0.15, 0.5, time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Backoff(base, maxI, tc.attempts, tc.spread, tc.r)
			if diff := got - tc.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Errorf("Backoff(%v, %v, %d, %v, %v) = %v, want %v", base, maxI, tc.attempts, tc.spread, tc.r, got, tc.want)
			}
		})
	}
	if got := Backoff(time.Second, 0, 2000, 0.1, 0.5); got != time.Duration(math.MaxInt64) {
		t.Errorf("uncapped overflow = %v, want max duration", got)
	}
	if got := Backoff(0, time.Hour, 3, 0.1, 0.5); got != 0 {
		t.Errorf("zero base = %v, want 0", got)
	}
}

// TestBackoffSpreads checks that jitter actually spreads retries: draws
// across [0,1) give distinct delays, not a handful of truncated values.
func TestBackoffSpreads(t *testing.T) {
	t.Parallel()
	seen := map[time.Duration]bool{}
	for i := range 100 {
		d := Backoff(time.Minute, time.Hour, 1, 0.15, float64(i)/100)
		if d < time.Duration(0.85*float64(time.Minute)) || d > time.Duration(1.15*float64(time.Minute)) {
			t.Fatalf("draw %d: %v outside ±15%%", i, d)
		}
		seen[d] = true
	}
	if len(seen) != 100 {
		t.Errorf("100 draws gave %d distinct delays", len(seen))
	}
}

func TestGoal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                                              string
		backlog, pairOpen, pairMax, domainOpen, domainMax int
		want                                              int
	}{
		{"empty", 0, 0, 5, 0, 5, 0},
		{"one", 1, 0, 5, 0, 5, 1},
		{"a few share one", 8, 0, 5, 0, 5, 1},
		{"ceil", 9, 0, 5, 0, 5, 2},
		{"open count", 30, 1, 5, 1, 5, 3},
		{"pair cap", 100, 0, 3, 0, 20, 3},
		{"domain cap", 100, 0, 20, 18, 20, 2},
		{"domain full", 100, 0, 20, 20, 20, 0},
		{"over served", 20, 3, 20, 3, 20, 0},
		{"no caps", 1000, 0, 0, 0, 0, 125},
	}
	for _, tc := range tests {
		if got := Goal(tc.backlog, tc.pairOpen, tc.pairMax, tc.domainOpen, tc.domainMax); got != tc.want {
			t.Errorf("%s: Goal = %d, want %d", tc.name, got, tc.want)
		}
	}
}
