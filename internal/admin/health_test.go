package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/scheduler"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

// listening stands in for the daemon's listener check, which is the
// daemon's (it knows which listeners it started).
type listening struct{ err error }

func (l listening) Listening() error { return l.err }

// newScheduler builds a real scheduler with nothing to deliver.
func newScheduler(t *testing.T, sp *spool.Spool, interval time.Duration) *scheduler.Scheduler {
	t.Helper()
	set, err := binding.New(nil, nil, "mta.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := mx.New(mx.Options{Servers: []string{"127.0.0.1:1"}, Timeout: time.Second, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	to := 5 * time.Second
	s, err := scheduler.New(scheduler.Options{
		Spool: sp, Queues: queue.New(), Bindings: set, Hooks: hooks.NewRegistry(), Hostname: "mta.test",
		MaintainInterval: interval,
		Pool: connpool.Options{MaxConnections: 1, Resolver: res, IdleTimeout: time.Second, ConnectTimeout: to,
			Timeouts: smtpclient.Timeouts{Greeting: to, EHLO: to, Mail: to, Rcpt: to, DataInit: to,
				DataBlock: to, DataTerm: to, StartTLS: to, Quit: to}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	const interval = 5 * time.Millisecond
	sched := newScheduler(t, sp, interval)
	lst := &listening{}
	base := startServer(t, Options{Ready: Readiness{Spool: sp, Listeners: lst, Scheduler: sched, MaintainInterval: interval}})

	// Not started: the scheduler has never ticked.
	code, v := getJSON(t, http.MethodGet, base+"/readyz")
	if code != http.StatusServiceUnavailable || v["error"] != "not ready: scheduler: no maintenance tick yet" {
		t.Fatalf("scheduler not started: %d %v", code, v)
	}
	if c := v["checks"].(map[string]any); c["spool"] != "ok" || c["listeners"] != "ok" {
		t.Errorf("checks: %v", c)
	}

	sched.Start()
	deadline := time.Now().Add(10 * time.Second)
	for sched.LastTick().IsZero() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling an atomic: no event to wait on
	}
	code, v = getJSON(t, http.MethodGet, base+"/readyz")
	if code != http.StatusOK || v["status"] != "ready" {
		t.Fatalf("all well: %d %v", code, v)
	}

	// Every failing check is named, in order.
	lst.err = errors.New("inject 127.0.0.1:2525 closed")
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	// The spool's answer stands for probeFresh (a flood of /readyz must not
	// become a flood of fsyncs): poll until the closed spool shows.
	want := "not ready: spool: spool: closed; listeners: inject 127.0.0.1:2525 closed"
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, v = getJSON(t, http.MethodGet, base+"/readyz")
		if code == http.StatusServiceUnavailable && strings.HasPrefix(v["error"].(string), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool closed, listener down: %d %v; want 503 %q", code, v, want)
		}
		time.Sleep(50 * time.Millisecond) // polling: the probe's answer ages out
	}
	// /healthz says only that the process answers.
	if code, v := getJSON(t, http.MethodGet, base+"/healthz"); code != 200 || v["status"] != "ok" {
		t.Errorf("healthz: %d %v", code, v)
	}
}

func TestReadyzNotWired(t *testing.T) {
	t.Parallel()
	base := startServer(t, Options{})
	code, v := getJSON(t, http.MethodGet, base+"/readyz")
	if code != http.StatusServiceUnavailable || v["error"] != "not ready: spool: not wired; listeners: not wired; scheduler: not wired" {
		t.Fatalf("%d %v", code, v)
	}
}

func TestTickFresh(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, c := range []struct {
		last time.Time
		want string
	}{
		{time.Time{}, "no maintenance tick yet"},
		{now, ""},
		{now.Add(-3 * time.Second), ""},
		{now.Add(-3*time.Second - time.Millisecond), "last maintenance tick 3.001s ago, more than 3 intervals (3s)"},
	} {
		err := tickFresh(c.last, now, time.Second)
		if (err == nil) != (c.want == "") || (err != nil && err.Error() != c.want) {
			t.Errorf("tickFresh(now-%s) = %v, want %q", now.Sub(c.last), err, c.want)
		}
	}
}

func TestPprofSwitch(t *testing.T) {
	t.Parallel()
	off := startServer(t, Options{})
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/profile?seconds=1", "/debug/pprof/cmdline"} {
		if code, _ := getJSON(t, http.MethodGet, off+p); code != http.StatusNotFound {
			t.Errorf("pprof off: %s: %d, want 404", p, code)
		}
	}

	// A write timeout shorter than the profile: the profile's seconds
	// come on top, so it is written whole.
	on := startServer(t, Options{Pprof: true, WriteTimeout: 200 * time.Millisecond})
	resp, err := http.Get(on + "/debug/pprof/profile?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(body) == 0 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("profile: %d %q %v, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), err, len(body))
	}
	code, v := getJSON(t, http.MethodGet, on+"/debug/pprof/profile?seconds=9999")
	if code != http.StatusBadRequest || !strings.HasPrefix(v["error"].(string), `seconds: "9999"`) {
		t.Errorf("profile too long: %d %v", code, v)
	}
}

// countingProbe counts spool probes.
type countingProbe struct{ n atomic.Int32 }

func (c *countingProbe) Probe(context.Context) error { c.n.Add(1); return nil }

// TestReadyzProbeCached: a burst of /readyz requests makes one spool probe
// (each is a synced write in the mail's group commit), not one each.
func TestReadyzProbeCached(t *testing.T) {
	t.Parallel()
	var pc probeCache
	cp := &countingProbe{}
	now := time.Now()
	for range 50 {
		if err := pc.probe(context.Background(), now, cp); err != nil {
			t.Fatal(err)
		}
	}
	if n := cp.n.Load(); n != 1 {
		t.Fatalf("%d probes for 50 requests within a second, want 1", n)
	}
	if err := pc.probe(context.Background(), time.Now().Add(2*probeFresh), cp); err != nil || cp.n.Load() != 2 {
		t.Fatalf("a stale answer was not probed again (%d probes, %v)", cp.n.Load(), err)
	}
}
