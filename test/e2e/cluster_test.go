package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mtad/mtad/internal/cluster/redistest"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// The cluster issue's checks: three nodes (the real binary, each with its
// own spool, binding address and admin API) share one redis-server; two
// loopback sinks record concurrency and arrival times.
//
//   - cap.e2e: max_connections 4 across the nodes; the sink holds each
//     message 150 ms, so each node alone would open its 4 (12 together).
//   - rate.e2e: max_message_rate 30/s across the nodes; each node alone
//     would send 30/s (90/s together).

const (
	clusterCap  = 4
	clusterRate = 30.0 // per second
)

type clusterRig struct {
	redis *redistest.Server
	sinks []*loopbacktest.Sink // [0] for cap.e2e (slow), [1] for rate.e2e
	nodes []*daemon
	envs  []*env
}

// startCluster starts redis-server, the sinks and three nodes named n1..n3
// with bindings named "out" (one budget key for all) from 127.0.66.11..13.
func startCluster(t *testing.T, extra string) *clusterRig {
	t.Helper()
	rg := &clusterRig{redis: redistest.Start(t)}
	z, sinks, port := remote(t, []string{"127.0.66.1", "127.0.66.2"}, func(i int) loopbacktest.Config {
		if i == 0 {
			return loopbacktest.Config{Data: func(string, []string, []byte) error {
				time.Sleep(150 * time.Millisecond) // holds the connection: demand for more
				return nil
			}}
		}
		return loopbacktest.Config{}
	})
	rg.sinks = sinks
	addMX(t, z, "cap.e2e", "127.0.66.1")
	addMX(t, z, "rate.e2e", "127.0.66.2")
	for i := 1; i <= 3; i++ {
		addr := fmt.Sprintf("127.0.66.%d", 10+i)
		e := newEnv(t, cfgOpts{dns: z.Addr, port: port, maxConnections: 40, bindings: []string{addr}})
		b, err := os.ReadFile(e.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		y := strings.Replace(string(b), "name: "+bindingName(addr)+"\n", "name: out\n", 1)
		y = strings.Replace(y, "shaping:\n  domains:\n", fmt.Sprintf(`shaping:
  domains:
    - match: cap.e2e
      max_connections: %d
    - match: rate.e2e
      max_connections: 20
      max_message_rate: "%g/s"
`, clusterCap, clusterRate), 1)
		y += fmt.Sprintf("cluster:\n  redis: [%q]\n  node: n%d\n  lease_ttl: 3s\n  timeout: 100ms\n%s", rg.redis.Addr(), i, extra)
		if err := os.WriteFile(e.cfgPath, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		rg.envs = append(rg.envs, e)
		rg.nodes = append(rg.nodes, start(t, e))
	}
	// Every node sees the three (the share a node falls back to counts them).
	for _, d := range rg.nodes {
		waitFor(t, 10*time.Second, "3 nodes in /api/v1/cluster on "+d.admin, func() bool {
			var v struct{ Nodes []struct{ Name string } }
			return getJSON(d, "/api/v1/cluster", &v) == http.StatusOK && len(v.Nodes) == 3
		})
	}
	return rg
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getJSON(d *daemon, path string, v any) int {
	resp, err := http.Get("http://" + d.admin + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, v)
	return resp.StatusCode
}

func clusterMsgs(node int, domain string, n int, tag string) []testMsg {
	out := make([]testMsg, n)
	for i := range out {
		out[i] = testMsg{id: fmt.Sprintf("%s-n%d-%d@e2e", tag, node, i), from: "app@sender.e2e",
			to: []string{fmt.Sprintf("u%d.n%d.%s@%s", i, node, tag, domain)}}
	}
	return out
}

// injectAll injects n messages to domain through every node at once.
func (rg *clusterRig) injectAll(t *testing.T, domain string, n int, tag string) {
	t.Helper()
	var wg sync.WaitGroup
	for i, d := range rg.nodes {
		if d == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := clusterMsgs(i+1, domain, n, tag)
			if in := inject(d.smtpAddr, 4, msgs, nil); in.ackedCount() != n {
				t.Errorf("node %d acked %d of %d: %v", i+1, in.ackedCount(), n, in.errs)
			}
		}()
	}
	wg.Wait()
}

func countTag(s *loopbacktest.Sink, tag string) (n int, times []time.Time, from map[string]int) {
	return countMsgs(s.Messages(), tag)
}

// countMsgs is countTag over msgs (inside a Sink.Wait condition, which
// holds the sink's lock: Messages would deadlock there).
func countMsgs(msgs []loopbacktest.Message, tag string) (n int, times []time.Time, from map[string]int) {
	from = map[string]int{}
	for _, m := range msgs {
		if len(m.To) > 0 && strings.Contains(m.To[0], "."+tag+"@") {
			n++
			times = append(times, m.ReceivedAt)
			from[m.RemoteIP]++
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	return n, times, from
}

// TestClusterSharedLimits: the sink never sees more connections than the
// shared cap, the arrivals stay within the shared rate, a suspension set
// through one node stops all three within a second, and lifting it through
// another restarts them.
func TestClusterSharedLimits(t *testing.T) {
	rg := startCluster(t, "")
	capSink, rateSink := rg.sinks[0], rg.sinks[1]

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rg.injectAll(t, "cap.e2e", 30, "c1") }()
	go func() { defer wg.Done(); rg.injectAll(t, "rate.e2e", 40, "r1") }()
	wg.Wait()
	capSink.Wait(t, 60*time.Second, "90 cap.e2e messages", func(msgs []loopbacktest.Message, _ int) bool { return len(msgs) >= 90 })
	rateSink.Wait(t, 60*time.Second, "120 rate.e2e messages", func(msgs []loopbacktest.Message, _ int) bool { return len(msgs) >= 120 })

	// Connections: at most the shared cap (each node alone may open 4:
	// 12 together), and every node took part.
	_, _, from := countTag(capSink, "c1")
	t.Logf("cap.e2e: high water %d connections (cap %d across 3 nodes), by node %v", capSink.HighWater(), clusterCap, from)
	if hw := capSink.HighWater(); hw > clusterCap {
		t.Errorf("cap.e2e saw %d connections at once, over the shared cap %d", hw, clusterCap)
	}
	if len(from) != 3 {
		t.Errorf("cap.e2e mail came from %d nodes, want 3: %v", len(from), from)
	}
	// Rate: n arrivals over span T may be at most the burst (one
	// second's worth, 30) + 30/s × T + a batch (3) per node held when the
	// others ran out; unshared, 3 nodes would send 90/s.
	n, times, from := countTag(rateSink, "r1")
	span := times[len(times)-1].Sub(times[0]).Seconds()
	bound := clusterRate + clusterRate*span + 3*3
	t.Logf("rate.e2e: %d in %.2fs (%.1f/s); bound %.0f (shared %g/s); by node %v", n, span, float64(n)/span, bound, clusterRate, from)
	if float64(n) > bound {
		t.Errorf("rate.e2e: %d messages in %.2fs, over the shared rate's bound %.0f", n, span, bound)
	}
	if len(from) != 3 {
		t.Errorf("rate.e2e mail came from %d nodes, want 3: %v", len(from), from)
	}

	// A suspension through node 1 holds all three within a second.
	body := `{"scope":"domain","name":"rate.e2e","duration":"10m","reason":"cluster test","by":"e2e"}`
	resp, err := http.Post("http://"+rg.nodes[0].admin+"/api/v1/suspensions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("suspend: %s", resp.Status)
	}
	time.Sleep(time.Second) // the bound: every node applies it within a second
	for i, d := range rg.nodes[1:] {
		if !hasSuspension(d, "rate.e2e") {
			t.Fatalf("node %d does not list the suspension 1 s after node 1 set it", i+2)
		}
		d.waitLog("suspend from n1", time.Second, func(r record) bool {
			return r.str("action") == "suspend" && r.str("node") == "n1" && r.str("name") == "rate.e2e"
		})
	}
	before, _, _ := countTag(rateSink, "r2")
	rg.injectAll(t, "rate.e2e", 5, "r2")
	time.Sleep(2 * time.Second) // nothing may arrive while suspended: an absence, so a wait
	if got, _, from := countTag(rateSink, "r2"); got != before {
		t.Fatalf("%d messages reached a suspended domain (from %v)", got-before, from)
	}

	// Lifted through node 2 (its own id for the shared suspension): all
	// three deliver again.
	var list struct {
		Suspensions []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
			Node string `json:"node"`
		} `json:"suspensions"`
	}
	getJSON(rg.nodes[1], "/api/v1/suspensions", &list)
	id := ""
	for _, s := range list.Suspensions {
		if s.Name == "rate.e2e" && s.Node != "n1" {
			t.Errorf("node 2 lists the suspension with source node %q, want n1", s.Node)
		}
		if s.Name == "rate.e2e" {
			id = s.ID
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+rg.nodes[1].admin+"/api/v1/suspensions/"+id+"?reason=done&by=e2e", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("resume %q on node 2: %s %s", id, resp.Status, b)
	}
	rateSink.Wait(t, 30*time.Second, "15 r2 messages after the lift", func(msgs []loopbacktest.Message, _ int) bool {
		n, _, _ := countMsgs(msgs, "r2")
		return n == 15
	})
	if _, _, from := countTag(rateSink, "r2"); len(from) != 3 {
		t.Errorf("after the lift mail came from %d nodes, want 3: %v", len(from), from)
	}
}

func hasSuspension(d *daemon, name string) bool {
	var list struct {
		Suspensions []struct {
			Name string `json:"name"`
		} `json:"suspensions"`
	}
	getJSON(d, "/api/v1/suspensions", &list)
	for _, s := range list.Suspensions {
		if s.Name == name {
			return true
		}
	}
	return false
}

// TestClusterRedisDown: with redis-server killed the nodes fall back to
// their share (cap 4 over 3 nodes by name: 2, 1 and 1, so at most 4 at
// once, the cap), say so in
// the log and /readyz, and take the shared limits up again when it is
// back; a SIGKILLed node's leases return within the lease time (3 s).
func TestClusterRedisDown(t *testing.T) {
	rg := startCluster(t, "  fallback: share\n")
	capSink := rg.sinks[0]
	rg.redis.Kill()
	rg.injectAll(t, "cap.e2e", 10, "f1")
	for i, d := range rg.nodes {
		d.waitLog("the fallback", 10*time.Second, func(r record) bool {
			return strings.Contains(r.str("msg"), "redis unreachable")
		})
		var rz struct {
			Checks map[string]string `json:"checks"`
		}
		code := getJSON(d, "/readyz", &rz)
		if code != http.StatusOK || !strings.Contains(rz.Checks["cluster"], "degraded") || !strings.Contains(rz.Checks["cluster"], "1/3") {
			t.Errorf("node %d /readyz in fallback: %d %v", i+1, code, rz.Checks)
		}
	}
	capSink.Wait(t, 60*time.Second, "30 f1 messages", func(msgs []loopbacktest.Message, _ int) bool {
		n, _, _ := countMsgs(msgs, "f1")
		return n == 30
	})
	if hw := capSink.HighWater(); hw > 4 {
		t.Errorf("in fallback the sink saw %d connections at once; the nodes' shares (2+1+1) allow 4", hw)
	}

	rg.redis.Restart()
	for _, d := range rg.nodes {
		d.waitLog("the return to shared limits", 10*time.Second, func(r record) bool {
			return strings.Contains(r.str("msg"), "redis answers again")
		})
	}
	for _, d := range rg.nodes {
		waitFor(t, 5*time.Second, "/readyz cluster ok", func() bool {
			var rz struct {
				Checks map[string]string `json:"checks"`
			}
			return getJSON(d, "/readyz", &rz) == http.StatusOK && rz.Checks["cluster"] == "ok"
		})
	}

	// Node 1 holds leases while it delivers; killed, they come back
	// within the lease time.
	rdb := redis.NewClient(&redis.Options{Addr: rg.redis.Addr()})
	defer rdb.Close()
	live := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			return -1
		}
		keys, _ := rdb.Keys(ctx, "mtad:conn:*").Result()
		n := 0
		for _, k := range keys {
			c, _ := rdb.ZCount(ctx, k, fmt.Sprintf("(%d", now.UnixMilli()), "+inf").Result()
			n += int(c)
		}
		return n
	}
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		inject(rg.nodes[0].smtpAddr, 2, clusterMsgs(1, "cap.e2e", 20, "k1"), nil)
	}()
	waitFor(t, 20*time.Second, "node 1 holding leases", func() bool { return live() > 0 })
	rg.nodes[0].kill()
	killed := time.Now()
	<-injected // its sessions end with the node
	rg.nodes[0] = nil
	waitFor(t, 3*time.Second+1500*time.Millisecond, "the killed node's leases expired (lease_ttl 3s)", func() bool { return live() == 0 })
	t.Logf("leases back %v after the SIGKILL", time.Since(killed).Round(10*time.Millisecond))
}
