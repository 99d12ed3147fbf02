package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/cluster/redistest"
)

// nodes is admin.Cluster over a real cluster node (cmd/mtad's adapter,
// which this package cannot import).
type nodes struct{ c *cluster.Cluster }

func (n nodes) Nodes(ctx context.Context) (any, bool) { return n.c.Nodes(ctx) }
func (n nodes) Status() error                         { return n.c.Status() }
func (n nodes) Stopped() bool                         { return n.c.Stopped() }

// TestClusterCmd: `mtactl cluster` lists the nodes of a real redis-server
// with their versions, queued counts and heartbeats, and says the limits
// are shared; with Redis stalled it lists the same nodes and says they are
// stale (exit 0); a daemon without a cluster answers 404 (exit 1).
func TestClusterCmd(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	var cs []*cluster.Cluster
	for i, name := range []string{"mta-a", "mta-b"} {
		c, err := cluster.New(cluster.Config{Addrs: []string{r.Addr()}, Node: name, Version: "v1." + name[4:],
			Queued: func() int { return 10 * (i + 1) }, Prefix: "ctl:",
			Heartbeat: time.Hour}) // one heartbeat, in New: the printed one stays the latest
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	s := admin.New(admin.Options{Listen: "127.0.0.1:0", Cluster: nodes{cs[0]}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	code, out, errOut := mtactl(t, "http://"+s.Addr().String(), "cluster")
	t.Logf("mtactl cluster:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range [][]string{
		{"NODE", "VERSION", "QUEUED", "LAST", "HEARTBEAT"},
		{"mta-a", "v1.a", "10", hb(cs[0], "mta-a")},
		{"mta-b", "v1.b", "20", hb(cs[0], "mta-b")},
		{"limits:", "shared"},
	} {
		if !hasRow(out, want) {
			t.Errorf("no row %q in\n%s", want, out)
		}
	}

	if strings.Contains(out, "(stale:") {
		t.Errorf("stale with Redis answering:\n%s", out)
	}
	rowA := []string{"mta-a", "v1.a", "10", hb(cs[0], "mta-a")}
	r.Pause()
	code, out, errOut = mtactl(t, "http://"+s.Addr().String(), "cluster")
	r.Resume()
	t.Logf("mtactl cluster, Redis stalled:\n%s", out)
	if code != 0 {
		t.Fatalf("Redis stalled: exit %d: %s", code, errOut)
	}
	for _, want := range [][]string{rowA, {"(stale:", "Redis", "unreachable)"}} {
		if !hasRow(out, want) {
			t.Errorf("Redis stalled: no row %q in\n%s", want, out)
		}
	}

	code, _, errOut = mtactl(t, startSummaryAdmin(t, nil), "cluster")
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("without a cluster: exit %d, %q; want 1 and a 404", code, errOut)
	}
}

// hb is node name's last heartbeat as the cluster has it, as mtactl
// prints it.
func hb(c *cluster.Cluster, name string) string {
	ms, _ := c.Members(context.Background())
	for _, m := range ms {
		if m.Name == name {
			return m.Heartbeat.UTC().Format(time.RFC3339)
		}
	}
	return "none"
}
