// Command benchmon measures what a daemon costs while the benchmark runs:
// CPU seconds and peak memory of a process and all its descendants (mtad is
// one process; Postfix is master plus dozens of short-lived children).
//
// It samples /proc every -interval from start until SIGINT/SIGTERM (or until
// the root process exits), then writes one JSON object to -out. CPU is the
// tree's utime+stime+cutime+cstime at the end minus at the start, so children
// that exited and were reaped during the run are counted once. Memory is the
// peak over samples of Σ RSS and of Σ PSS over the tree, and the root's own
// VmHWM. It only reads /proc; it must never signal the processes it watches.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

// result is the JSON written at the end.
type result struct {
	RootPID    int     `json:"root_pid"`
	Samples    int     `json:"samples"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_s"`
	PeakRSSKB  int64   `json:"peak_rss_sum_kb"`
	PeakPSSKB  int64   `json:"peak_pss_sum_kb"`
	RootHWMKB  int64   `json:"root_hwm_kb"`
	MaxProcs   int     `json:"max_procs"`
	RootExited bool    `json:"root_exited"`
}

func main() {
	pid := flag.Int("pid", 0, "root process to watch")
	pidfile := flag.String("pidfile", "", "read the root pid from this file (waits up to 10 s for it)")
	interval := flag.Duration("interval", 250*time.Millisecond, "sampling interval")
	out := flag.String("out", "", "file to write the JSON result to (default stdout)")
	flag.Parse()

	root := *pid
	if *pidfile != "" {
		p, err := readPidfile(*pidfile, 10*time.Second)
		if err != nil {
			fatal(err)
		}
		root = p
	}
	if root <= 0 {
		fatal(errors.New("need -pid or -pidfile"))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	res, err := watch(root, *interval, sig, nil)
	if err != nil {
		fatal(err)
	}
	b, _ := json.Marshal(res)
	b = append(b, '\n')
	if *out == "" {
		os.Stdout.Write(b)
		return
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fatal(fmt.Errorf("writing result: %w", err))
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchmon:", err)
	os.Exit(1)
}

// watch samples root's tree until stop delivers or root exits. It calls
// sampled, if not nil, once the first (baseline) sample is taken.
func watch(root int, interval time.Duration, stop <-chan os.Signal, sampled func()) (result, error) {
	start := time.Now()
	first, err := sampleTree("/proc", root)
	if err != nil {
		return result{}, fmt.Errorf("first sample of pid %d: %w", root, err)
	}
	res := result{RootPID: root}
	last := first
	take := func(s treeSample) {
		res.Samples++
		last = s
		res.PeakRSSKB = max(res.PeakRSSKB, s.rssKB)
		res.PeakPSSKB = max(res.PeakPSSKB, s.pssKB)
		res.RootHWMKB = max(res.RootHWMKB, s.rootHWM)
		res.MaxProcs = max(res.MaxProcs, s.procs)
	}
	take(first)
	if sampled != nil {
		sampled()
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		case <-tick.C:
		}
		s, err := sampleTree("/proc", root)
		if errors.Is(err, errGone) {
			res.RootExited = true
			break
		}
		if err != nil {
			return result{}, err
		}
		take(s)
	}
	res.Seconds = time.Since(start).Seconds()
	res.CPUSeconds = float64(last.ticks-first.ticks) / clockTicks
	return res, nil
}

func readPidfile(path string, wait time.Duration) (int, error) {
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no pid in %s after %s", path, wait)
		}
		time.Sleep(50 * time.Millisecond) // polling a file another process writes: no event to wait on
	}
}
