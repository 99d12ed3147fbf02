package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// procStat is what we need from /proc/PID/stat.
type procStat struct {
	pid, ppid int
	// ticks is utime+stime+cutime+cstime: the process's own CPU time plus
	// that of every child it has reaped, so summing it over a tree counts a
	// process that exited during the run exactly once (in its parent).
	ticks int64
}

// parseStat reads a /proc/PID/stat line. The command name sits in
// parentheses and may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(line []byte) (procStat, error) {
	open, end := bytes.IndexByte(line, '('), bytes.LastIndexByte(line, ')')
	if open < 1 || end < open {
		return procStat{}, fmt.Errorf("malformed stat line %q", line)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(line[:open])))
	if err != nil {
		return procStat{}, fmt.Errorf("parsing pid in stat line: %w", err)
	}
	// After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
	f := bytes.Fields(line[end+1:])
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat line of pid %d has %d fields after the name, want ≥ 15", pid, len(f))
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procStat{}, fmt.Errorf("parsing ppid of %d: %w", pid, err)
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("parsing cpu field of %d: %w", pid, err)
		}
		ticks += v
	}
	return procStat{pid: pid, ppid: ppid, ticks: ticks}, nil
}

// treeSample is one look at a process and all its descendants.
type treeSample struct {
	procs   int
	ticks   int64 // summed over the tree, see procStat.ticks
	rssKB   int64 // Σ VmRSS: counts shared pages once per process
	pssKB   int64 // Σ Pss: shared pages split between their users
	rootHWM int64 // the root's VmHWM (peak RSS) in kB
}

// errGone says the root process no longer exists.
var errGone = errors.New("root process is gone")

// sampleTree walks procDir (normally /proc) for root and its descendants.
// Processes that vanish while being read are skipped.
func sampleTree(procDir string, root int) (treeSample, error) {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return treeSample{}, fmt.Errorf("listing %s: %w", procDir, err)
	}
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		st, err := parseStat(b)
		if err != nil {
			return treeSample{}, err
		}
		stats[pid] = st
		children[st.ppid] = append(children[st.ppid], pid)
	}
	if _, ok := stats[root]; !ok {
		return treeSample{}, errGone
	}
	var s treeSample
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		queue = append(queue, children[pid]...)
		s.procs++
		s.ticks += stats[pid].ticks
		dir := filepath.Join(procDir, strconv.Itoa(pid))
		status := readKB(filepath.Join(dir, "status"), "VmRSS:", "VmHWM:")
		s.rssKB += status[0]
		if pid == root {
			s.rootHWM = status[1]
		}
		s.pssKB += readKB(filepath.Join(dir, "smaps_rollup"), "Pss:")[0]
	}
	return s, nil
}

// readKB returns the kB values of the named "Key:   123 kB" lines of a
// /proc file, 0 for any missing (or for a file that vanished).
func readKB(path string, keys ...string) []int64 {
	out := make([]int64, len(keys))
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		for i, k := range keys {
			if bytes.HasPrefix(line, []byte(k)) {
				if fs := bytes.Fields(line[len(k):]); len(fs) > 0 {
					out[i], _ = strconv.ParseInt(string(fs[0]), 10, 64)
				}
			}
		}
	}
	return out
}
