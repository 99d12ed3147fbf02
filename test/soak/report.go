package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

type reportData struct {
	dur, warmup time.Duration
	rate        int
	st          *injectStats
	sum         summary
	sinks       []*sink
	faults      map[string]int64
	samples     []sample
	exit        int
	logPath     string
}

// report prints the summary and returns whether every figure stayed flat
// (and mtad exited 0 on SIGTERM).
func report(w io.Writer, r reportData) bool {
	fmt.Fprintf(w, "\n== soak summary: %s at %d msg/s (%s warm-up) ==\n", r.dur, r.rate, r.warmup)
	fmt.Fprintf(w, "messages  injected %d, accepted %d (250/202), refused %d\n",
		r.st.tried.Load(), r.st.accepted.Load(), r.st.tried.Load()-r.st.accepted.Load())
	for _, k := range sortedKeys(r.st.refused) {
		fmt.Fprintf(w, "          refused %-40s %d\n", k, r.st.refused[k])
	}
	t := r.sum.Totals
	fmt.Fprintf(w, "mtad      received %d msgs / %d rcpts; delivered %d, bounced %d, expired %d, deferrals %d; pending at end %d msgs / %d rcpts\n",
		t.Received, t.ReceivedRecipients, t.Delivered, t.Bounced, t.Expired, t.Deferred, r.sum.QueuedMessages, r.sum.QueuedRecipients)
	var acc int64
	var distinct int
	for _, s := range r.sinks {
		a, d := s.counts()
		acc += a
		distinct += d
	}
	fmt.Fprintf(w, "sinks     accepted %d messages, %d distinct Message-IDs (repeats: %d)\n", acc, distinct, acc-int64(distinct))
	fmt.Fprintln(w, "faults    injected, by kind:")
	for _, k := range sortedKeys(r.faults) {
		fmt.Fprintf(w, "          %-40s %d\n", k, r.faults[k])
	}
	if fi, err := os.Stat(r.logPath); err == nil {
		fmt.Fprintf(w, "mtad log  %.1f MiB\n", float64(fi.Size())/(1<<20))
	}

	// Warm-up figure: the first sample at or after the warm-up; end: the
	// last (taken as the duration ended, under load).
	var base, end, peak sample
	found := false
	for _, s := range r.samples {
		if !found && s.at >= r.warmup {
			base, found = s, true
		}
		peak.rssKB = max(peak.rssKB, s.rssKB)
		peak.goroutines = max(peak.goroutines, s.goroutines)
		peak.fds = max(peak.fds, s.fds)
	}
	if !found || len(r.samples) == 0 {
		fmt.Fprintln(w, "verdict   NO DATA: no sample after the warm-up")
		return false
	}
	end = r.samples[len(r.samples)-1]
	fmt.Fprintf(w, "rule      flat when end <= warm-up x %.1f + slack (RSS %d MiB, goroutines %d, fds %d)\n",
		growthFactor, slackRSSKB>>10, slackGor, slackFDs)
	ok := true
	row := func(name string, b, m, e, slack int64, unit func(int64) string) {
		limit := int64(float64(b)*growthFactor) + slack
		v := "flat"
		if e > limit {
			v, ok = "GROWING", false
		}
		fmt.Fprintf(w, "%-10s warm-up %-10s max %-10s end %-10s limit %-10s %s\n", name, unit(b), unit(m), unit(e), unit(limit), v)
	}
	n := func(v int64) string { return fmt.Sprint(v) }
	row("rss", base.rssKB, peak.rssKB, end.rssKB, slackRSSKB, func(v int64) string { return fmt.Sprintf("%.1fMiB", float64(v)/1024) })
	row("goroutines", base.goroutines, peak.goroutines, end.goroutines, slackGor, n)
	row("fds", base.fds, peak.fds, end.fds, slackFDs, n)
	fmt.Fprintf(w, "queued    warm-up %d msgs, end %d msgs (under load)\n", base.queuedMsgs, end.queuedMsgs)
	// Flat figures mean nothing if the load never reached the spool (a
	// refusal at every message once showed a flat daemon doing no work).
	if tried, acc := r.st.tried.Load(), r.st.accepted.Load(); acc*4 < tried {
		fmt.Fprintf(w, "load      only %d of %d messages accepted (< 25%%): the soak did not load mtad\n", acc, tried)
		ok = false
	}
	fmt.Fprintf(w, "mtad exit %d after SIGTERM\n", r.exit)
	if r.exit != 0 {
		ok = false
	}
	if ok {
		fmt.Fprintln(w, "verdict   flat")
	} else {
		fmt.Fprintln(w, "verdict   GROWING (or no load, or an unclean exit)")
	}
	return ok
}
