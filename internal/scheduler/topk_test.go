package scheduler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSpaceSavingFindsHeavyHitters: in a stream of 2000 distinct items,
// 10 heavy ones among a long tail that arrives interleaved, a summary of
// 64 counters holds exactly the heavy ones as its top 10, and never more
// than 64 items.
func TestSpaceSavingFindsHeavyHitters(t *testing.T) {
	t.Parallel()
	ss := newSpaceSaving(64)
	var heavy []string
	for i := range 10 {
		heavy = append(heavy, fmt.Sprintf("heavy%02d.test", i))
	}
	for round := range 200 {
		for i, h := range heavy {
			ss.add(h, uint64(10-i)) // heavy00 the heaviest
		}
		for j := range 10 {
			ss.add(fmt.Sprintf("tail%04d.test", round*10+j), 1)
		}
		if len(ss.idx) > 64 || len(ss.heap) > 64 {
			t.Fatalf("round %d: %d items held, cap 64", round, len(ss.idx))
		}
	}
	if got := ss.top(10); !slices.Equal(got, heavy) {
		t.Errorf("top 10 = %v, want %v", got, heavy)
	}
	if got := ss.top(1000); len(got) != 64 {
		t.Errorf("top(1000) gave %d items, want the 64 held", len(got))
	}
	// Halving keeps the order, and a new heavy item overtakes the old
	// ones after a few halvings.
	for range 4 {
		ss.decay()
	}
	for range 50 {
		ss.add("new.test", 10)
	}
	if got := ss.top(1); got[0] != "new.test" {
		t.Errorf("after decay the top is %v, want new.test", got)
	}
}

// domainLabels returns the domain label values of the series in vec.
func domainLabels(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "mtad_domain_recipients_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "domain" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestTopDomainsBounded: with N = 5 and 300 domains, at most 5 domain
// labels plus "other" exist at any time; before the first recompute the
// first 5 domains seen take the places, after it the 5 busiest do, the
// series of those that left are gone, and every outcome is counted under
// its domain or "other" (none lost between recomputes).
func TestTopDomainsBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mtad_domain_recipients_total", Help: "test"}, []string{"domain", "event"})
	reg.MustRegister(vec)
	top := newTopDomains(5, vec)
	now := time.Unix(1_000_000, 0)
	top.maybeRecompute(now) // the first tick only starts the minute

	busy := []string{"busy0.test", "busy1.test", "busy2.test", "busy3.test", "busy4.test"}
	total := 0
	feed := func() {
		for i := range 300 {
			d := fmt.Sprintf("d%03d.test", i)
			top.add(d, "delivered", 1)
			total++
			if i%30 == 0 {
				for j, b := range busy {
					top.add(b, "deferred", 10+j)
					total += 10 + j
				}
			}
			if got := domainLabels(t, reg); len(got) > 6 {
				t.Fatalf("%d domain labels: %v", len(got), got)
			}
		}
	}
	feed()
	// Seen first: d000 and then four busy ones, in the same round.
	got := domainLabels(t, reg)
	first := []string{"busy0.test", "busy1.test", "busy2.test", "busy3.test", "d000.test", "other"}
	if k := sorted(keys(got)); !slices.Equal(k, first) {
		t.Errorf("before the first recompute the series are %v, want %v", k, first)
	}
	top.maybeRecompute(now.Add(30 * time.Second)) // not yet
	if got := domainLabels(t, reg); got["d000.test"] == 0 {
		t.Errorf("recomputed before the minute: %v", got)
	}
	top.maybeRecompute(now.Add(topInterval))
	if got := domainLabels(t, reg); got["d000.test"] != 0 || len(got) != 5 {
		t.Errorf("after the recompute d000's series should be gone, the busy ones and other kept: %v", got)
	}
	if l := top.labels(); len(l) != 5 || !slices.Equal(sorted(l), busy) {
		t.Errorf("top domains %v, want %v", l, busy)
	}
	before := 0.0
	for _, v := range domainLabels(t, reg) {
		before += v
	}
	total = 0
	feed()
	got = domainLabels(t, reg)
	sum := 0.0
	for d, v := range got {
		if d != "other" && !slices.Contains(busy, d) {
			t.Errorf("series for %s, not a top domain", d)
		}
		sum += v
	}
	if sum-before != float64(total) {
		t.Errorf("counted %v outcomes after the recompute, fed %d", sum-before, total)
	}
	if n := testutil.CollectAndCount(vec); n > 5*2+1 {
		t.Errorf("%d series, want at most 5 domains × 2 events + other", n)
	}
}

func keys(m map[string]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
