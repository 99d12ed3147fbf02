package main

import (
	"runtime/debug"
	"strconv"

	"github.com/mtad/mtad/internal/config"
)

// applyRuntime sets the collector's target and the soft memory limit from
// the runtime section, except where the operator's GOGC or GOMEMLIMIT
// environment variables already did (the runtime read those at start, and
// they are the usual way to tune a Go service in one run). It returns what
// is in force, for the start-up log.
func applyRuntime(rt config.Runtime, getenv func(string) string) (gcPercent, memoryLimit string) {
	if v := getenv("GOGC"); v != "" {
		gcPercent = "GOGC=" + v
	} else {
		debug.SetGCPercent(rt.GCPercent)
		gcPercent = strconv.Itoa(rt.GCPercent)
	}
	switch v := getenv("GOMEMLIMIT"); {
	case v != "":
		memoryLimit = "GOMEMLIMIT=" + v
	case rt.MemoryLimit > 0:
		debug.SetMemoryLimit(int64(rt.MemoryLimit))
		memoryLimit = rt.MemoryLimit.String()
	default:
		memoryLimit = "none"
	}
	return gcPercent, memoryLimit
}
