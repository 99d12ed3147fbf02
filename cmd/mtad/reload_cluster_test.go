package main

import (
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/config"
)

// TestReloadClusterNeedsRestart: a change to any cluster.* key is
// reported as needing a restart, with why; an unchanged section is not.
func TestReloadClusterNeedsRestart(t *testing.T) {
	t.Parallel()
	old := config.Default()
	old.Cluster.Redis = []string{"127.0.0.1:6379"}
	for _, edit := range []func(*config.Cluster){
		func(c *config.Cluster) { c.Fallback = "stop" },
		func(c *config.Cluster) { c.Mode = "local" },
		func(c *config.Cluster) { c.Redis = []string{"127.0.0.2:6379"} },
		func(c *config.Cluster) { c.Timeout *= 2 },
	} {
		next := config.Default()
		next.Cluster = old.Cluster
		next.Cluster.Redis = append([]string(nil), old.Cluster.Redis...)
		edit(&next.Cluster)
		got := needingRestart(old, next)
		if len(got) != 1 || got[0].key != "cluster" || !strings.Contains(got[0].why, "at start") {
			t.Errorf("cluster %+v → %+v: needing restart %+v, want cluster with its reason", old.Cluster, next.Cluster, got)
		}
	}
	same := config.Default()
	same.Cluster.Redis = []string{"127.0.0.1:6379"}
	if got := needingRestart(old, same); len(got) != 0 {
		t.Errorf("unchanged config: needing restart %+v", got)
	}
}
