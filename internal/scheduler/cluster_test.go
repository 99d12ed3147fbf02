package scheduler

import (
	"testing"
	"time"

	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/cluster/redistest"
	"github.com/mtad/mtad/internal/policy"
)

// TestClusterSuspensionsShared: two schedulers on one real redis-server.
// A suspension put on one comes in force on the other (its source node
// kept); lifted on the second, it ends on the first. The promise is
// within a second (pub/sub, else the one-second read); the waits are
// bounded at five, so a loaded test machine does not fail what works —
// the time taken is logged.
func TestClusterSuspensionsShared(t *testing.T) {
	r := redistest.Start(t)
	node := func(name string) *cluster.Cluster {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Prefix: "sch:", Heartbeat: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	h1 := newHarness(t, 0, func(o *Options) { o.Cluster = node("n1") })
	h2 := newHarness(t, 0, func(o *Options) { o.Cluster = node("n2") })
	now := h1.clock.Now()
	h1.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "x.example", Source: policy.SourceOperator,
		Reason: "test", Start: now, Until: now.Add(time.Hour)})
	var got []policy.Suspension
	t0 := time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = h2.s.Suspensions(h2.clock.Now()); len(got) == 1 {
			break
		}
	}
	if len(got) != 1 || got[0].Name != "x.example" || got[0].Node != "n1" {
		t.Fatalf("node 2 holds %+v five seconds after node 1's suspension, want x.example from n1", got)
	}
	t.Logf("node 1's suspension seen on node 2 after %v", time.Since(t0))
	if _, ok := h2.s.Resume(got[0].ID, "t", "lifted on n2"); !ok {
		t.Fatal("resume on node 2 failed")
	}
	t0 = time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(h1.s.Suspensions(h1.clock.Now())) == 0 {
			t.Logf("node 2's resume seen on node 1 after %v", time.Since(t0))
			return
		}
	}
	t.Fatalf("node 1 still holds %+v five seconds after node 2 lifted it", h1.s.Suspensions(h1.clock.Now()))
}
