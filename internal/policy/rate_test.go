package policy

import (
	"math"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestParseRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in     string
		want   Rate
		limit  rate.Limit
		burst  int
		str    string
		errSub string
	}{
		{in: "100/s", want: Rate{100, time.Second}, limit: 100, burst: 100, str: "100/s"},
		{in: "10,000/h", want: Rate{10000, time.Hour}, limit: rate.Limit(10000.0 / 3600), burst: 3, str: "10000/h"},
		{in: "3000/m", want: Rate{3000, time.Minute}, limit: 50, burst: 50, str: "3000/m"},
		{in: "1/m", want: Rate{1, time.Minute}, limit: rate.Limit(1.0 / 60), burst: 1, str: "1/m"},
		{in: "5/d", want: Rate{5, 24 * time.Hour}, limit: rate.Limit(5.0 / 86400), burst: 1, str: "5/d"},
		{in: "2.5/s", want: Rate{2.5, time.Second}, limit: 2.5, burst: 3, str: "2.5/s"},
		{in: "  7 / m ", want: Rate{7, time.Minute}, limit: rate.Limit(7.0 / 60), burst: 1, str: "7/m"},
		{in: "unlimited", want: Rate{}, limit: rate.Inf, burst: 0, str: "unlimited"},
		{in: "0/s", errSub: `rate "0/s": must be more than 0`},
		{in: "-5/s", errSub: `rate "-5/s": "-5" is not a number`},
		{in: "5/w", errSub: `rate "5/w": unit must be s, m, h or d`},
		{in: "5/sec", errSub: `unit must be s, m, h or d`},
		{in: "", errSub: `rate "": empty rate`},
		{in: "  ", errSub: `empty rate`},
		{in: "NaN/s", errSub: `is not a number`},
		{in: "1e3/s", errSub: `is not a number`},
		{in: "100", errSub: `no "/"`},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if tt.errSub != "" {
			if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Errorf("ParseRate(%q) = %v, %v; want error %q", tt.in, got, err, tt.errSub)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			continue
		}
		if got.Unlimited() != (tt.want == Rate{}) {
			t.Errorf("%q: Unlimited = %v", tt.in, got.Unlimited())
		}
		if l := got.Limit(); math.Abs(float64(l-tt.limit)) > 1e-12 && l != tt.limit {
			t.Errorf("%q: Limit = %v, want %v", tt.in, l, tt.limit)
		}
		if b := got.Burst(); b != tt.burst {
			t.Errorf("%q: Burst = %d, want %d", tt.in, b, tt.burst)
		}
		if s := got.String(); s != tt.str {
			t.Errorf("%q: String = %q, want %q", tt.in, s, tt.str)
		}
	}
}

// A limiter built from a Rate admits one burst at once and then paces at
// the rate: checked against the limiter's own clock arithmetic, no sleeping.
func TestRateDrivesLimiter(t *testing.T) {
	t.Parallel()
	r, err := ParseRate("3000/m")
	if err != nil {
		t.Fatal(err)
	}
	lim := rate.NewLimiter(r.Limit(), r.Burst())
	t0 := time.Unix(1_700_000_000, 0)
	if n := admitted(lim, t0); n != 50 {
		t.Errorf("3000/m admits %d at once, want 50 (one second's worth)", n)
	}
	// One simulated second later, another 50.
	if n := admitted(lim, t0.Add(time.Second)); n != 50 {
		t.Errorf("after 1s, %d more, want 50", n)
	}
	// Over a simulated minute the limiter admits the budget, not more.
	total := 0
	for i := 1; i <= 60; i++ {
		total += admitted(lim, t0.Add(time.Second+time.Duration(i)*time.Second))
	}
	if total != 3000 {
		t.Errorf("a minute admits %d, want 3000", total)
	}
}

// admitted counts the events lim allows at instant now, up to 10,000.
func admitted(lim *rate.Limiter, now time.Time) int {
	n := 0
	for n < 10_000 && lim.AllowN(now, 1) {
		n++
	}
	return n
}

// FuzzParseRate: ParseRate never panics, every rate it accepts is positive
// or unlimited, with a positive burst, and its String parses back to the
// same rate.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100/s", "10,000/h", "3000/m", "1/m", "5/d", "2.5/s", " 7 / m ", "unlimited", "0/s", "-1/s", "1/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			if r != (Rate{}) {
				t.Fatalf("ParseRate(%q) failed but returned %v", s, r)
			}
			return
		}
		if r.Unlimited() {
			if r != (Rate{}) || r.Limit() != rate.Inf {
				t.Fatalf("ParseRate(%q) = %v: unlimited but not the zero Rate", s, r)
			}
			return
		}
		if !(r.N > 0) || math.IsInf(r.N, 0) || r.Burst() < 1 || !(r.Limit() > 0) {
			t.Fatalf("ParseRate(%q) = %+v, limit %v, burst %d", s, r, r.Limit(), r.Burst())
		}
		back, err := ParseRate(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %+v; String %q parses to %+v, %v", s, r, r.String(), back, err)
		}
	})
}
