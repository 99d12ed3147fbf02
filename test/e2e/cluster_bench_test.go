package e2e

import (
	"context"
	"fmt"
	"os"
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
// MTAD_BENCH_CLUSTER=1): W1's shape (BENCH_CLUSTER_N messages, 3,000 by
// default, one recipient each, over 100 domains on 5 loopback sinks,
// injected by 20 SMTP sessions) through one node without a cluster, one
// node with one, and three nodes sharing one redis-server, each node with
// the harness's limits (20 connections, 5 per domain: shared across the
// nodes in the cluster legs). It reports messages per second from the
// first injection to the last arrival, and Redis commands per message
// from INFO commandstats (reset before each leg). The messages are the
// harness's (about 1 KB), not bench/run.sh's 5 KB through smtp-source: the
// figures compare the legs with each other, not with BENCHMARKS.md's W1.
func TestBenchClusterW1(t *testing.T) {
	if os.Getenv("MTAD_BENCH_CLUSTER") == "" {
		t.Skip("a benchmark: make bench-cluster runs it")
	}
	n := 3000
	if v := os.Getenv("BENCH_CLUSTER_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 100 {
			t.Fatalf("BENCH_CLUSTER_N=%q: want a number ≥ 100", v)
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
	fmt.Printf("\nW1 shape, %d messages to 100 domains:\n%s\n", n, strings.Join(results, "\n"))
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
	sinkIPs := ips("127.0.67", 5)
	z, _, port := remote(t, sinkIPs, func(int) loopbacktest.Config { return loopbacktest.Config{Data: count} })
	for d := range 100 {
		addMX(t, z, fmt.Sprintf("w%d.e2e", d), sinkIPs[d%len(sinkIPs)])
	}
	var ds []*daemon
	for i := 1; i <= nodes; i++ {
		addr := fmt.Sprintf("127.0.67.%d", 10+i)
		e := newEnv(t, cfgOpts{dns: z.Addr, port: port, bindings: []string{addr}})
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
	msgs := make([]testMsg, n)
	for i := range msgs {
		msgs[i] = testMsg{id: fmt.Sprintf("w1-%d@e2e", i), from: "app@sender.e2e", to: []string{fmt.Sprintf("u%d@w%d.e2e", i, i%100)}}
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var part []testMsg
			for j := i; j < n; j += len(ds) {
				part = append(part, msgs[j])
			}
			if in := inject(d.smtpAddr, 20/len(ds), part, nil); in.ackedCount() != len(part) {
				t.Errorf("node %d acked %d of %d: %v", i+1, in.ackedCount(), len(part), in.errs)
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
