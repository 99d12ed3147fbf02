package main

import (
	"math"
	"runtime/debug"
	"testing"

	"github.com/mtad/mtad/internal/config"
)

// TestApplyRuntime changes process-wide runtime settings, so it is not
// parallel and puts them back.
func TestApplyRuntime(t *testing.T) {
	prevGC := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLimit) })

	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	gc, limit := applyRuntime(config.Runtime{GCPercent: 400, MemoryLimit: 2 * config.GiB}, getenv)
	if got := debug.SetGCPercent(100); got != 400 || gc != "400" {
		t.Errorf("gc percent = %d (reported %q), want 400", got, gc)
	}
	if got := debug.SetMemoryLimit(-1); got != 2<<30 || limit != (2*config.GiB).String() {
		t.Errorf("memory limit = %d (reported %q), want %d", got, limit, 2<<30)
	}

	// The environment wins: nothing is changed.
	debug.SetMemoryLimit(math.MaxInt64)
	env["GOGC"], env["GOMEMLIMIT"] = "50", "1GiB"
	gc, limit = applyRuntime(config.Runtime{GCPercent: 400, MemoryLimit: 2 * config.GiB}, getenv)
	if got := debug.SetGCPercent(100); got != 100 || gc != "GOGC=50" {
		t.Errorf("with GOGC set: gc percent = %d (reported %q), want it left at 100", got, gc)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 || limit != "GOMEMLIMIT=1GiB" {
		t.Errorf("with GOMEMLIMIT set: memory limit = %d (reported %q), want it untouched", got, limit)
	}

	delete(env, "GOMEMLIMIT")
	if _, limit = applyRuntime(config.Runtime{GCPercent: 100}, getenv); limit != "none" {
		t.Errorf("no limit: reported %q, want none", limit)
	}
}
