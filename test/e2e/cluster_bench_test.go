package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mtad/mtad/internal/cluster/redistest"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestBenchClusterW1 is `make bench-cluster` (skipped unless
// MTAD_BENCH_CLUSTER=1): bench/run.sh's W1 shape (BENCH_CLUSTER_N
// messages, 5,000 by default, of 5 KB, one recipient each, over 100
// domains each on its own loopback sink address, injected by run.sh's own
// driver: Postfix's smtp-source in 20 lanes, one message per connection,
// each lane a sequence of `smtp-source -s 1 -m ≤50 -N -l 5120` runs to
// one domain) and run.sh's limits (delivery.max_connections 100, reserve
// 5, 50 per domain: shared across the nodes in the cluster legs), through
// one node without a cluster, one node with one, and three nodes sharing
// one redis-server (the lanes spread over the nodes). It reports messages
// per second from the first injection to the last arrival, and Redis
// commands per message from INFO commandstats (reset before each leg).
// The daemons are the e2e harness's (its short maintain interval and idle
// timeout, no TLS, the accounting plugin), so the figures compare the legs
// with each other more than with BENCHMARKS.md's W1 table.
func TestBenchClusterW1(t *testing.T) {
	if os.Getenv("MTAD_BENCH_CLUSTER") == "" {
		t.Skip("a benchmark: make bench-cluster runs it")
	}
	if _, err := exec.LookPath("smtp-source"); err != nil {
		t.Fatalf("smtp-source (postfix) not installed: bench/run.sh's injector: %v", err)
	}
	n := 5000
	if v := os.Getenv("BENCH_CLUSTER_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 100 || n%100 != 0 {
			t.Fatalf("BENCH_CLUSTER_N=%q: want a multiple of 100 (W1's), at least 100", v)
		}
	}
	var results []string
	for _, leg := range []struct {
		name    string
		nodes   int
		cluster bool
	}{{"1 node, no cluster", 1, false}, {"1 node, cluster", 1, true}, {"3 nodes, cluster", 3, true}} {
		rate, cmds := benchClusterLeg(t, n, leg.nodes, leg.cluster)
		line := fmt.Sprintf("%-20s %8.0f msgs/s", leg.name, rate)
		if leg.cluster {
			line += fmt.Sprintf("   %.2f redis commands/msg", cmds)
		}
		t.Log(line)
		results = append(results, line)
	}
	fmt.Printf("\nW1 shape, %d × 5 KB messages to 100 domains, 20 smtp-source lanes:\n%s\n", n, strings.Join(results, "\n"))
}

func benchClusterLeg(t *testing.T, n, nodes int, withCluster bool) (rate, cmdsPerMsg float64) {
	var r *redistest.Server
	if withCluster {
		r = redistest.Start(t)
	}
	var mu sync.Mutex
	got := 0
	count := func(string, []string, []byte) error {
		mu.Lock()
		got++
		mu.Unlock()
		return nil
	}
	sinkIPs := ips("127.0.67", 100)
	z, _, port := remote(t, sinkIPs, func(int) loopbacktest.Config { return loopbacktest.Config{Data: count} })
	for d := range 100 {
		addMX(t, z, fmt.Sprintf("w%d.e2e", d), sinkIPs[d])
	}
	var ds []*daemon
	for i := 1; i <= nodes; i++ {
		addr := fmt.Sprintf("127.0.68.%d", 10+i)
		e := newEnv(t, cfgOpts{dns: z.Addr, port: port, bindings: []string{addr}, maxConnections: 100, perDomain: 50})
		if withCluster {
			b, err := os.ReadFile(e.cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			y := strings.Replace(string(b), "name: "+bindingName(addr)+"\n", "name: out\n", 1)
			y += fmt.Sprintf("cluster:\n  redis: [%q]\n  node: n%d\n", r.Addr(), i)
			if err := os.WriteFile(e.cfgPath, []byte(y), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		ds = append(ds, start(t, e))
	}
	var rdb *redis.Client
	if withCluster {
		rdb = redis.NewClient(&redis.Options{Addr: r.Addr()})
		defer rdb.Close()
		if err := rdb.ConfigResetStat(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	lanes := w1Lanes(n)
	t0 := time.Now()
	var wg sync.WaitGroup
	for k, lane := range lanes {
		d := ds[k%len(ds)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, run := range lane {
				// run.sh's lane: one smtp-source run per chunk, one
				// message per connection, 5,120 bytes each.
				cmd := exec.Command("smtp-source", "-s", "1", "-m", strconv.Itoa(run.n), "-N", "-l", "5120",
					"-f", "bench@src.bench", "-M", "inj.bench", "-t", fmt.Sprintf("l%d@%s", k, run.dom), d.smtpAddr)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("lane %d: smtp-source to %s: %v: %s", k, run.dom, err, out)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 5*time.Minute, fmt.Sprintf("%d messages at the sinks", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got >= n
	})
	rate = float64(n) / time.Since(t0).Seconds()
	if withCluster {
		info, err := rdb.Info(context.Background(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, l := range strings.Split(info, "\n") {
			// cmdstat_evalsha:calls=123,usec=...
			if _, rest, ok := strings.Cut(l, ":calls="); ok && strings.HasPrefix(l, "cmdstat_") && !strings.HasPrefix(l, "cmdstat_info:") {
				c, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
				total += c
			}
		}
		cmdsPerMsg = float64(total) / float64(n)
	}
	for _, d := range ds {
		d.stop()
	}
	return rate, cmdsPerMsg
}

// laneRun is one smtp-source run of a lane: n messages to dom.
type laneRun struct {
	dom string
	n   int
}

// w1Lanes plans bench/run.sh's W1 injection: n/100 messages to each of
// the 100 domains, in runs of at most 50 to one domain, dealt round-robin
// to 20 lanes.
func w1Lanes(n int) [][]laneRun {
	const nLanes = 20
	lanes := make([][]laneRun, nLanes)
	k := 0
	per := n / 100
	for d := range 100 {
		for left := per; left > 0; left -= 50 {
			lanes[k%nLanes] = append(lanes[k%nLanes], laneRun{fmt.Sprintf("w%d.e2e", d), min(left, 50)})
			k++
		}
	}
	return lanes
}
