package admin

// Liveness and readiness. /healthz says the process answers; /readyz says
// it can do its job: the spool takes a synced write, the listeners accept,
// and the scheduler's maintenance loop is turning. A load balancer or an
// orchestrator stops sending mail to a node whose /readyz is 503, and the
// body says which check failed.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// SpoolProbe is what /readyz asks of the spool: a real write, synced and
// undone, through the same path as a message's (so a full disk, a store
// left read-only after a write failure, or a closed spool all fail it).
type SpoolProbe interface {
	Probe(ctx context.Context) error
}

// ListenerCheck reports nil while every listener that takes mail in is
// accepting, or an error naming the one that is not.
type ListenerCheck interface {
	Listening() error
}

// TickSource is the scheduler's maintenance loop: the wall-clock time of
// its last completed tick, zero before the first.
type TickSource interface {
	LastTick() time.Time
}

// Readiness is what /readyz checks. A nil check fails ("not wired"):
// readiness is never claimed without evidence.
type Readiness struct {
	Spool     SpoolProbe
	Listeners ListenerCheck
	Scheduler TickSource
	// MaintainInterval is the scheduler's tick period: it is stalled when
	// it has not ticked for StaleTicks of them.
	MaintainInterval time.Duration
	// Cluster, when set (cluster.redis), adds the check "cluster": in
	// fallback it names the fallback, failing only when that stops
	// delivery.
	Cluster Cluster
}

// StaleTicks is how many maintenance intervals may pass without a tick
// before /readyz says the scheduler is stalled: one late tick (a long
// walk, a GC pause) is not an outage, three are.
const StaleTicks = 3

// probeTimeout bounds the spool probe: a synced write that takes longer
// than this means the disk cannot take mail at a useful pace.
const probeTimeout = 5 * time.Second

// readyCheck is one named check's result; err nil means passing.
type readyCheck struct {
	name string
	err  error
	warn bool // err is reported, but the node is still ready
}

// checks runs the readiness checks in a fixed order.
func (rd Readiness) checks(ctx context.Context, now time.Time, pc *probeCache) []readyCheck {
	out := make([]readyCheck, 0, 3)
	notWired := fmt.Errorf("not wired")

	err := notWired
	if rd.Spool != nil {
		err = pc.probe(ctx, now, rd.Spool)
	}
	out = append(out, readyCheck{name: "spool", err: err})

	err = notWired
	if rd.Listeners != nil {
		err = rd.Listeners.Listening()
	}
	out = append(out, readyCheck{name: "listeners", err: err})

	err = notWired
	if rd.Scheduler != nil {
		err = tickFresh(rd.Scheduler.LastTick(), now, rd.MaintainInterval)
	}
	out = append(out, readyCheck{name: "scheduler", err: err})
	if rd.Cluster != nil {
		err := rd.Cluster.Status()
		out = append(out, readyCheck{name: "cluster", err: err, warn: err != nil && !rd.Cluster.Stopped()})
	}
	return out
}

// tickFresh says whether a last tick at last is recent enough at now.
func tickFresh(last, now time.Time, interval time.Duration) error {
	limit := StaleTicks * interval
	switch {
	case last.IsZero():
		return fmt.Errorf("no maintenance tick yet")
	case interval <= 0:
		return fmt.Errorf("maintain interval unknown")
	case now.Sub(last) > limit:
		return fmt.Errorf("last maintenance tick %s ago, more than %d intervals (%s)",
			now.Sub(last).Round(time.Millisecond), StaleTicks, limit)
	}
	return nil
}

// healthz serves GET /healthz: the process is alive and serving HTTP.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz serves GET /readyz: 200 with every check "ok", or 503 with an
// error naming each failing check and the checks' results.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	res := map[string]string{}
	var failed []string
	for _, c := range s.opts.Ready.checks(r.Context(), time.Now(), &s.probes) {
		if c.err != nil && c.warn {
			res[c.name] = "degraded: " + c.err.Error()
			continue
		}
		if c.err != nil {
			res[c.name] = c.err.Error()
			failed = append(failed, c.name+": "+c.err.Error())
			continue
		}
		res[c.name] = "ok"
	}
	if len(failed) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"error":  "not ready: " + strings.Join(failed, "; "),
			"checks": res,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": res})
}

// probeFresh is how long a spool probe's answer stands: /readyz needs no
// token (a load balancer asks it), and each probe is a synced write in the
// same group commit as mail, so a flood of requests must not become a
// flood of fsyncs. Callers arriving while a probe runs wait for it.
const probeFresh = time.Second

// probeCache holds the last spool probe's answer.
type probeCache struct {
	mu  sync.Mutex
	at  time.Time
	err error
}

func (pc *probeCache) probe(ctx context.Context, now time.Time, sp SpoolProbe) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.at.IsZero() && now.Sub(pc.at) >= 0 && now.Sub(pc.at) < probeFresh {
		return pc.err
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	pc.err = sp.Probe(pctx)
	pc.at = now
	return pc.err
}
