package adaptive_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/hooks/adaptive"
	"github.com/mtad/mtad/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is a registry with the adaptive plugin enabled by name, a default
// action that reports 1, a fake clock and an observed log.
type rig struct {
	t    *testing.T
	reg  *hooks.Registry
	now  time.Time
	logs *observer.ObservedLogs
	p    *queue.Pair
	mets *prometheus.Registry
}

func newRig(t *testing.T, settings map[string]any) *rig {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	r := &rig{t: t, reg: hooks.NewRegistry(), now: time.Unix(1_000_000, 0), logs: logs, mets: prometheus.NewRegistry()}
	r.reg.MailQueueMaintain.SetDefault(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { return 1 })
	base := hooks.PluginConfig{Logger: zap.New(core), Metrics: r.mets, Now: func() time.Time { return r.now }}
	if err := hooks.Enable(r.reg, []string{"adaptive"}, map[string]map[string]any{"adaptive": settings}, base); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	r.p = queue.New().Push(&queue.Delivery{MsgID: "m", Domain: "flaky.test", Slot: 2})
	return r
}

func (r *rig) maintain() int {
	return r.reg.MailQueueMaintain.Call(r.p.Domain(), r.p.Slot(), r.p, r.now, 3, 0)
}

func (r *rig) connFail(n int) {
	for range n {
		r.reg.PostInitiateConnectionSMTP.Call(r.p.Domain(), r.p.Slot(), r.now, int(hooks.ConnErrRefused))
	}
}

func (r *rig) connOK() { r.reg.PostInitiateConnectionSMTP.Call(r.p.Domain(), r.p.Slot(), r.now, 9) }

func (r *rig) session(code421 bool) {
	res := hooks.SessionResult{Delivered: 1, LastCode: 250}
	if code421 {
		res = hooks.SessionResult{Deferred: 1, LastCode: 421, Code421: true}
	}
	r.reg.PostSessionSMTP.Call(r.p.Domain(), r.p.Slot(), r.now, res)
}

// pausedFor checks the pair is held now and until just before d from now,
// and released at d.
func (r *rig) pausedFor(d time.Duration) {
	r.t.Helper()
	start := r.now
	if got := r.maintain(); got != hooks.Handled {
		r.t.Fatalf("at pause start: maintain = %d, want Handled", got)
	}
	r.now = start.Add(d - time.Nanosecond)
	if got := r.maintain(); got != hooks.Handled {
		r.t.Fatalf("just before %v: maintain = %d, want Handled", d, got)
	}
	r.now = start.Add(d)
	if got := r.maintain(); got != 1 {
		r.t.Fatalf("at %v: maintain = %d, want the default's 1", d, got)
	}
}

func (r *rig) events(name string) []observer.LoggedEntry {
	return r.logs.FilterField(zap.String("event", name)).All()
}

func TestTripPauseAndLogs(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 3, "pause": "30s", "max_pause": "10m"})
	r.connFail(2)
	if got := r.maintain(); got != 1 {
		t.Fatalf("below threshold: maintain = %d, want 1", got)
	}
	r.connFail(1)
	r.pausedFor(30 * time.Second)

	starts := r.events("adaptive_pause_start")
	if len(starts) != 1 {
		t.Fatalf("%d pause_start events, want 1", len(starts))
	}
	f := starts[0].ContextMap()
	if f["domain"] != "flaky.test" || f["binding_slot"] != int64(2) || f["pause"] != 30*time.Second {
		t.Fatalf("pause_start fields %v", f)
	}
	ends := r.events("adaptive_pause_end")
	if len(ends) != 1 || ends[0].ContextMap()["domain"] != "flaky.test" || ends[0].ContextMap()["binding_slot"] != int64(2) {
		t.Fatalf("pause_end events %v", ends)
	}
	mfs, err := r.mets.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "mtad_adaptive_trips_total" || mfs[0].GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Fatalf("metrics %v %v", mfs, err)
	}
}

func TestPauseDoublesAndCaps(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 2, "pause": "1m", "max_pause": "5m"})
	for _, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		r.connFail(2)
		r.pausedFor(want)
	}
	var got []time.Duration
	for _, e := range r.events("adaptive_pause_start") {
		got = append(got, e.ContextMap()["pause"].(time.Duration))
	}
	if len(got) != 5 || got[4] != 5*time.Minute {
		t.Fatalf("pauses %v", got)
	}
}

func TestSuccessResets(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 3, "pause": "1m", "max_pause": "1h"})
	// A connection made resets the connection-failure count.
	r.connFail(2)
	r.connOK()
	r.connFail(2)
	if got := r.maintain(); got != 1 {
		t.Fatalf("failures were not consecutive, yet maintain = %d", got)
	}
	r.connFail(1)
	r.pausedFor(time.Minute)
	r.connFail(3)
	r.pausedFor(2 * time.Minute) // doubled
	// A good session resets the doubling.
	r.session(false)
	r.connFail(3)
	r.pausedFor(time.Minute)
}

func TestSessions421Trip(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 2})
	// Each session opens fine and then gets a 421: the connections made do
	// not clear the 421 count.
	r.connOK()
	r.session(true)
	r.connOK()
	if got := r.maintain(); got != 1 {
		t.Fatalf("after one 421: maintain = %d", got)
	}
	r.session(true)
	r.pausedFor(30 * time.Second) // the default pause
	if e := r.events("adaptive_pause_start"); len(e) != 1 || e[0].ContextMap()["reason"] != "421" {
		t.Fatalf("pause_start %v", e)
	}
}

func TestIgnoredDuringPauseAndLocalCodes(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 2, "pause": "1m", "max_pause": "1h"})
	for range 10 {
		r.reg.PostInitiateConnectionSMTP.Call(r.p.Domain(), r.p.Slot(), r.now, int(hooks.ConnErrHostMax))
		r.reg.PostInitiateConnectionSMTP.Call(r.p.Domain(), r.p.Slot(), r.now, int(hooks.ConnErrCanceled))
	}
	if got := r.maintain(); got != 1 {
		t.Fatalf("local codes tripped the breaker: maintain = %d", got)
	}
	r.connFail(2)
	r.now = r.now.Add(10 * time.Second)
	r.connFail(10) // from connections opened before the pause: not counted
	r.now = r.now.Add(50 * time.Second)
	if got := r.maintain(); got != 1 {
		t.Fatalf("after the pause: maintain = %d, want 1", got)
	}
	if n := len(r.events("adaptive_pause_start")); n != 1 {
		t.Fatalf("%d trips, want 1", n)
	}
}

func TestPairsAreSeparate(t *testing.T) {
	t.Parallel()
	r := newRig(t, map[string]any{"failures": 1})
	other := r.p.Domain().Pair(3)
	r.connFail(1)
	if got := r.maintain(); got != hooks.Handled {
		t.Fatalf("tripped pair: maintain = %d", got)
	}
	if got := r.reg.MailQueueMaintain.Call(other.Domain(), 3, other, r.now, 1, 0); got != 1 {
		t.Fatalf("other slot held: maintain = %d", got)
	}
}

func TestBounded(t *testing.T) {
	t.Parallel()
	a, err := adaptive.New(adaptive.Config{Failures: 2, Pause: time.Minute, MaxPause: time.Hour, MaxPairs: 2}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := queue.New()
	now := time.Unix(5000, 0)
	fail := func(dom string) {
		a.PostInitiate(q.Domain(dom), 0, now, int(hooks.ConnErrTimeout))
	}
	fail("a.test")
	fail("a.test") // tripped: paused, never evicted
	fail("b.test")
	fail("c.test") // evicts b (not paused)
	if a.Tracked() != 2 {
		t.Fatalf("tracked %d, want 2", a.Tracked())
	}
	if a.Maintain(q.Domain("a.test"), 0, nil, now, 1, 0) != hooks.Handled {
		t.Fatal("paused pair was evicted")
	}
	fail("c.test") // c trips too
	fail("d.test") // table full of paused pairs: d is not tracked
	fail("d.test")
	if a.Tracked() != 2 || a.Maintain(q.Domain("d.test"), 0, nil, now, 1, 0) != 0 {
		t.Fatalf("untracked pair paused or table grew to %d", a.Tracked())
	}
	// Success forgets the pair once its pause is over.
	a.PostSession(q.Domain("a.test"), 0, now.Add(time.Minute), hooks.SessionResult{Delivered: 1})
	if a.Maintain(q.Domain("a.test"), 0, nil, now.Add(time.Minute), 1, 0) != 0 {
		t.Fatal("pause did not end")
	}
	if a.Tracked() != 1 {
		t.Fatalf("tracked %d after a's reset, want 1", a.Tracked())
	}
}

func TestPausedUsesPluginClock(t *testing.T) {
	t.Parallel()
	now := time.Unix(7000, 0)
	a, err := adaptive.New(adaptive.Config{Failures: 1, Pause: time.Minute, MaxPause: time.Hour, MaxPairs: 10},
		nil, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	dr := queue.New().Domain("p.test")
	if _, ok := a.Paused("p.test", 1); ok {
		t.Fatal("paused before any failure")
	}
	a.PostInitiate(dr, 1, now, int(hooks.ConnErrNetUnreachable))
	if until, ok := a.Paused("p.test", 1); !ok || !until.Equal(now.Add(time.Minute)) {
		t.Fatalf("Paused = %v %v, want until %v", until, ok, now.Add(time.Minute))
	}
	now = now.Add(time.Minute)
	if _, ok := a.Paused("p.test", 1); ok {
		t.Fatal("still paused when the pause ran out")
	}
}

func TestSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		settings map[string]any
		want     string // error prefix; "" for none
	}{
		{nil, ""},
		{map[string]any{"failures": 3, "pause": "10s", "max_pause": "1m", "max_pairs": 10}, ""},
		{map[string]any{"failures": float64(3), "pause": 10 * time.Second}, ""},
		{map[string]any{"failures": 0}, "hooks.settings.adaptive.failures: want a positive integer"},
		{map[string]any{"failures": 2.5}, "hooks.settings.adaptive.failures: want a whole number"},
		{map[string]any{"failures": "five"}, "hooks.settings.adaptive.failures: want a positive integer"},
		{map[string]any{"pause": "soon"}, "hooks.settings.adaptive.pause: want a duration"},
		{map[string]any{"pause": 30}, "hooks.settings.adaptive.pause: want a duration"},
		{map[string]any{"pause": "-1s"}, "hooks.settings.adaptive.pause: want a positive duration"},
		{map[string]any{"pause": "20m"}, "hooks.settings.adaptive.max_pause: 10m0s is shorter than pause 20m0s"},
		{map[string]any{"max_pairs": -1}, "hooks.settings.adaptive.max_pairs: want a positive integer"},
		{map[string]any{"pasue": "1s"}, "hooks.settings.adaptive.pasue: unknown setting"},
	}
	for _, tt := range tests {
		_, err := adaptive.ParseSettings(tt.settings)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ParseSettings(%v): %v", tt.settings, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("ParseSettings(%v) = %v, want %q", tt.settings, err, tt.want)
		}
	}
	c, _ := adaptive.ParseSettings(nil)
	if c != adaptive.DefaultConfig() || c.Failures != 5 || c.Pause != 30*time.Second || c.MaxPause != 10*time.Minute {
		t.Fatalf("defaults %+v", c)
	}
	// Through Enable, the error names the key too.
	err := hooks.Enable(hooks.NewRegistry(), []string{"adaptive"},
		map[string]map[string]any{"adaptive": {"pause": "x"}}, hooks.PluginConfig{})
	if err == nil || !strings.Contains(err.Error(), "hooks.settings.adaptive.pause:") {
		t.Fatalf("Enable error %v", err)
	}
}
