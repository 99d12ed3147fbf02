package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/cluster/redistest"
	"github.com/mtad/mtad/internal/spool"
)

// clusterOf is admin.Cluster over a real node (cmd/mtad's adapter).
type clusterOf struct{ c *cluster.Cluster }

func (a clusterOf) Nodes(ctx context.Context) (any, bool) { return a.c.Nodes(ctx) }
func (a clusterOf) Status() error                         { return a.c.Status() }
func (a clusterOf) Stopped() bool                         { return a.c.Stopped() }

func newNode(t *testing.T, addr, name string, fb cluster.Fallback) *cluster.Cluster {
	t.Helper()
	c, err := cluster.New(cluster.Config{Addrs: []string{addr}, Node: name, Version: "v9", Fallback: fb, Prefix: "adm:"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// TestClusterEndpoints: GET /api/v1/cluster lists the nodes of a real
// redis-server; with Redis stalled it answers 200 with the nodes last
// seen, "stale": true and the fallback share (a node that never reached
// Redis: no nodes, stale), and /readyz names
// the fallback: ready (200, "degraded") in share fallback, not ready (503)
// in stop fallback.
func TestClusterEndpoints(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	a := newNode(t, r.Addr(), "a", cluster.FallbackShare)
	newNode(t, r.Addr(), "b", cluster.FallbackShare)
	base := startServer(t, Options{Cluster: clusterOf{a}})
	code, v := getJSON(t, http.MethodGet, base+"/api/v1/cluster")
	nodes, _ := v["nodes"].([]any)
	if code != 200 || len(nodes) != 2 || v["status"] != "shared" {
		t.Fatalf("cluster: %d %v", code, v)
	}
	if n := nodes[0].(map[string]any); n["name"] != "a" || n["version"] != "v9" || n["last_heartbeat"] == "" {
		t.Errorf("node a: %v", n)
	}
	r.Pause()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if down, _ := a.Fallback(); down {
			break
		}
		if time.Now().After(deadline) {
			r.Resume()
			t.Fatal("node a not in fallback 10 s after Redis stalled")
		}
	}
	code, v = getJSON(t, http.MethodGet, base+"/api/v1/cluster")
	r.Resume()
	nodes, _ = v["nodes"].([]any)
	st, _ := v["status"].(string)
	if code != 200 || len(nodes) != 2 || v["stale"] != true || !strings.Contains(st, "fallback share") || !strings.Contains(st, "1 of 2") {
		t.Fatalf("cluster during the outage: %d %v; want 200, both nodes, stale, share 1 of 2", code, v)
	}
	if n := nodes[1].(map[string]any); n["name"] != "b" || n["version"] != "v9" {
		t.Errorf("node b as last seen: %v", n)
	}

	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	const interval = 5 * time.Millisecond
	sched := newScheduler(t, sp, interval)
	sched.Start()
	deadline := time.Now().Add(10 * time.Second)
	for sched.LastTick().IsZero() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling an atomic: no event to wait on
	}
	dead := deadAddr(t)
	for _, tc := range []struct {
		fb   cluster.Fallback
		code int
		want string
	}{
		{cluster.FallbackShare, 200, "degraded: redis unreachable"},
		{cluster.FallbackStop, 503, "fallback stop"},
	} {
		c := newNode(t, dead, "down-"+tc.fb.String(), tc.fb)
		base := startServer(t, Options{Cluster: clusterOf{c},
			Ready: Readiness{Spool: sp, Listeners: &listening{}, Scheduler: sched, MaintainInterval: interval, Cluster: clusterOf{c}}})
		code, v := getJSON(t, http.MethodGet, base+"/readyz")
		checks, _ := v["checks"].(map[string]any)
		got, _ := checks["cluster"].(string)
		if code != tc.code || !strings.Contains(got, tc.want) {
			t.Errorf("fallback %s: /readyz %d, cluster %q; want %d and %q", tc.fb, code, got, tc.code, tc.want)
		}
		if code, v := getJSON(t, http.MethodGet, base+"/api/v1/cluster"); code != 200 || v["stale"] != true || fmt.Sprint(v["nodes"]) != "[]" {
			t.Errorf("fallback %s: /api/v1/cluster %d %v; want 200, no nodes, stale", tc.fb, code, v)
		}
	}
}
