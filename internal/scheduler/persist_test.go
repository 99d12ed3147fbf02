package scheduler

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
)

// TestSuspensionsSurviveRestart: suspensions are written to
// Options.SuspensionsFile and read back by New with their ids; one that
// ended meanwhile is logged as ended and not restored; ids go on from the
// highest restored, so a saved id never names another suspension; the
// held pair stays held after the restart.
func TestSuspensionsSurviveRestart(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(64, 10)}, nil)
	file := filepath.Join(t.TempDir(), "suspensions.json")
	// With a shaper, as the daemon always has: suspensions are applied
	// through the pairs' shaping.
	h := newHarness(t, port, func(o *Options) {
		o.SuspensionsFile = file
		o.Shaper = testShaper(t, func(*config.Shaping) {})
	})
	h.mxFor("held.test", ip(64, 10))
	now := h.clock.Now()
	long := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "held.test", Source: policy.SourceOperator,
		Reason: "abuse desk", Until: now.Add(24 * time.Hour)})
	short := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "brief.test", Source: policy.SourceOperator,
		Reason: "a minute", Until: now.Add(time.Minute)})
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("no suspensions file after Suspend: %v", err)
	}
	h.clock.Advance(2 * time.Minute)
	h.restart()
	got := h.s.Suspensions(h.clock.Now())
	if len(got) != 1 || got[0].ID != long.ID || got[0].Name != "held.test" || got[0].Reason != "abuse desk" ||
		!got[0].Until.Equal(long.Until) {
		t.Fatalf("after the restart: %+v, want %s (%s) alone", got, long.ID, long.Name)
	}
	if e := h.policyEvent("suspension_ended"); e.str("id") != short.ID {
		t.Errorf("ended record for %v, want %s", e.fields, short.ID)
	}
	next := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "other.test", Source: policy.SourceOperator,
		Reason: "r", Until: h.clock.Now().Add(time.Hour)})
	if next.ID == long.ID || next.ID == short.ID {
		t.Errorf("new suspension got a used id %s", next.ID)
	}
	// Resolved first, so that the check below does not pass merely
	// because the lookup had not ended yet.
	h.resolved("held.test")
	injectVia(h, "b0", "", "a@held.test")
	for range 3 {
		h.s.Tick(h.clock.Advance(time.Second))
	}
	h.quiet()
	if n := len(sinks[0].Messages()); n != 0 {
		t.Fatalf("%d messages delivered to a domain suspended before the restart", n)
	}
	if _, ok := h.s.Resume(long.ID, "alice", "done"); !ok {
		t.Fatal("the restored suspension could not be lifted by its id")
	}
	h.s.Tick(h.clock.Now())
	sinks[0].WaitMessages(t, 1)
}

// TestBadSuspensionsFileStopsStart: a suspensions file that cannot be
// read stops New (held mail must not be sent because the file is broken),
// naming the file.
func TestBadSuspensionsFileStopsStart(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "suspensions.json")
	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, port := loopbacktest.StartSinks(t, []string{ip(64, 11)}, nil)
	h := newHarness(t, port, nil)
	opts := h.opts
	opts.SuspensionsFile = file
	if s, err := New(opts); err == nil {
		_ = s.Close(t.Context())
		t.Fatal("New accepted a broken suspensions file")
	} else if !strings.Contains(err.Error(), file) {
		t.Fatalf("error %v does not name %s", err, file)
	}
}
