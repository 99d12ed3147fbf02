package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReportVerdict: the flatness rule as RELIABILITY.md states it (end ≤
// warm-up × 1.2 + slack, for each figure), a load mtad mostly refused,
// and an unclean exit.
func TestReportVerdict(t *testing.T) {
	t.Parallel()
	base := sample{at: 2 * time.Minute, rssKB: 100 << 10, goroutines: 100, fds: 40}
	grown := func(f func(*sample)) sample { s := base; s.at = 5 * time.Minute; f(&s); return s }
	for _, tc := range []struct {
		name     string
		end      sample
		accepted int64
		exit     int
		want     bool
		says     string
	}{
		{"same", grown(func(*sample) {}), 1000, 0, true, "verdict   flat"},
		{"rss at the limit", grown(func(s *sample) { s.rssKB = 120<<10 + slackRSSKB }), 1000, 0, true, "verdict   flat"},
		{"rss over", grown(func(s *sample) { s.rssKB = 120<<10 + slackRSSKB + 1 }), 1000, 0, false, "GROWING"},
		{"goroutines over", grown(func(s *sample) { s.goroutines = 120 + slackGor + 1 }), 1000, 0, false, "GROWING"},
		{"fds over", grown(func(s *sample) { s.fds = 48 + slackFDs + 1 }), 1000, 0, false, "GROWING"},
		{"no load", grown(func(*sample) {}), 249, 0, false, "did not load mtad"},
		{"unclean exit", grown(func(*sample) {}), 1000, 1, false, "mtad exit 1"},
	} {
		st := &injectStats{refused: map[string]int64{}}
		st.tried.Store(1000)
		st.accepted.Store(tc.accepted)
		var out strings.Builder
		got := report(&out, reportData{dur: 5 * time.Minute, warmup: 2 * time.Minute, rate: 100, st: st,
			faults: map[string]int64{}, exit: tc.exit,
			samples: []sample{{at: time.Minute, rssKB: 1}, base, tc.end}})
		if got != tc.want || !strings.Contains(out.String(), tc.says) {
			t.Errorf("%s: verdict %v, want %v with %q in:\n%s", tc.name, got, tc.want, tc.says, out.String())
		}
	}
	// No sample after the warm-up: no verdict to give.
	st := &injectStats{refused: map[string]int64{}}
	if report(io.Discard, reportData{warmup: 2 * time.Minute, st: st, samples: []sample{{at: time.Minute}}}) {
		t.Error("a run without a sample after the warm-up was judged flat")
	}
}
