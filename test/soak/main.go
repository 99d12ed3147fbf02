// Command soak is mtad's soak test (issue 12 point 9, `make soak`): it runs
// the built daemon for SOAK_DURATION (default 30m) under steady mixed load
// — SMTP and HTTP injection — into loopback sinks and a loopback DNS
// server that misbehave on a schedule, samples the daemon's RSS,
// goroutines, open fds and queue every 10 s, and prints a summary with a
// verdict: "flat", or "GROWING" and exit status 1. As root it also puts
// the spool on a tmpfs that it fills now and then (disk full).
//
// It owns nothing of mtad's: it only talks to the binary over loopback
// (SMTP, HTTP, the admin API), reads /proc and fills the spool's file
// system only with a file of its own. It must never listen
// beyond 127.0.0.0/8, and every loop it runs ends with the duration.
//
// Not part of `make test`: it is a program, not a test, and takes minutes.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Flatness rule: a figure is flat when its end value is at most its
// warm-up value × 1.2 plus a small constant that absorbs the churn of
// connections and sessions open at the moment of the sample.
const (
	growthFactor = 1.2
	slackRSSKB   = 16 << 10 // 16 MiB
	slackGor     = 100      // a few sessions' worth (≈3 goroutines each)
	slackFDs     = 50       // one per connection, in and out
)

const (
	sinkPhase = 15 * time.Second // one entry of sinkSchedule
	dnsPhase  = 20 * time.Second // one entry of dnsSchedule
	sampleGap = 10 * time.Second
)

func main() {
	mtadBin := flag.String("mtad", "bin/mtad", "the mtad binary to run")
	flag.Parse()
	// run returns before any exit, so its deferred clean-up (the mtad
	// process, the spool tmpfs, the temp dir) always runs.
	flat, err := run(*mtadBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !flat {
		os.Exit(1)
	}
}

func envDuration(key string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Minute {
		return 0, fmt.Errorf("%s=%q: want a Go duration of at least 1m", key, v)
	}
	return d, nil
}

func run(mtadBin string) (flat bool, err error) {
	dur, err := envDuration("SOAK_DURATION", 30*time.Minute)
	if err != nil {
		return false, err
	}
	rate := 100
	if v := os.Getenv("SOAK_RATE"); v != "" {
		if rate, err = strconv.Atoi(v); err != nil || rate < 5 || rate > 500 {
			return false, fmt.Errorf("SOAK_RATE=%q: want messages per second, 5-500", v)
		}
	}
	// Disk-full periods need a tmpfs mount, so root: on by default as
	// root, SOAK_DISKFULL=0 turns them off, =1 insists on them.
	diskFull := os.Geteuid() == 0 && os.Getenv("SOAK_DISKFULL") != "0"
	if os.Getenv("SOAK_DISKFULL") == "1" && os.Geteuid() != 0 {
		return false, fmt.Errorf("SOAK_DISKFULL=1 mounts a tmpfs: needs root")
	}
	// The reference is the halfway sample, not an early one: pebble's
	// memtables and block cache (about 64 MiB each, up to five memtables
	// while flushes lag) fill for the first ten-odd minutes at 100 msg/s,
	// which is bounded growth, not a leak. A leak keeps growing through
	// the second half; that is what the rule compares.
	warmup := dur / 2
	if _, err := os.Stat(mtadBin); err != nil {
		return false, fmt.Errorf("mtad binary: %w (run `make build` first)", err)
	}
	// mtad runs in the temp dir: its path must not depend on ours.
	if mtadBin, err = filepath.Abs(mtadBin); err != nil {
		return false, err
	}

	dir, err := os.MkdirTemp("", "mtad-soak-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)

	fc := &faultCounts{n: map[string]int64{}}

	// The sinks: 127.0.70.1 is steady (the senders' domain: DSNs land
	// there), 127.0.70.2-6 misbehave, all on the port the first one got.
	steady, err := startSink("127.0.70.1", 0, fc)
	if err != nil {
		return false, fmt.Errorf("sink: %w", err)
	}
	_, ps, _ := net.SplitHostPort(steady.addr)
	portS, _ := strconv.Atoi(ps)
	sinks := []*sink{steady}
	defer func() {
		for _, s := range sinks {
			s.stop()
		}
	}()
	z, err := startDNS(fc)
	if err != nil {
		return false, fmt.Errorf("dns: %w", err)
	}
	defer z.stop()
	z.add("src.soak", "127.0.70.1")
	domains := []string{"src.soak"}
	for i := 1; i <= 5; i++ {
		ip := fmt.Sprintf("127.0.70.%d", i+1)
		s, err := startSink(ip, portS, fc)
		if err != nil {
			return false, fmt.Errorf("sink %s: %w", ip, err)
		}
		sinks = append(sinks, s)
		d := fmt.Sprintf("f%d.soak", i)
		z.add(d, ip)
		domains = append(domains, d)
	}

	spoolDir := filepath.Join(dir, "spool")
	var ballast *diskBallast
	if diskFull {
		if ballast, err = mountSpool(spoolDir, fc); err != nil {
			return false, err
		}
		defer ballast.unmount()
	}

	cfgPath := filepath.Join(dir, "mtad.yaml")
	logPath := filepath.Join(dir, "mtad.log")
	if err := os.WriteFile(cfgPath, []byte(config(spoolDir, logPath, z.addr, portS)), 0o600); err != nil {
		return false, err
	}
	d, err := startMtad(mtadBin, cfgPath, logPath, dir)
	if err != nil {
		return false, err
	}
	defer d.kill() // a no-op after a clean stop
	fmt.Printf("soak: mtad pid %d, smtp %s, http %s, admin %s; %s at %d msg/s, warm-up %s, disk-full periods %v\n",
		d.cmd.Process.Pid, d.smtp, d.http, d.admin, dur, rate, warmup, diskFull)

	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigc)
	go func() {
		select {
		case <-sigc:
			cancel()
		case <-ctx.Done():
		}
	}()

	var wg sync.WaitGroup
	st := &injectStats{refused: map[string]int64{}}
	var seq atomic.Int64
	const smtpClients = 4
	per := time.Second * time.Duration(smtpClients+1) / time.Duration(rate)
	for i := range smtpClients {
		wg.Add(1)
		go func() { defer wg.Done(); smtpInjector(ctx, i, d.smtp, per, domains, &seq, st) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		httpInjector(ctx, "http://"+d.http+"/api/v1/messages", per, domains, &seq, st)
	}()

	// The fault schedule: every sink phase, each misbehaving sink moves to
	// its next fault; every DNS phase, each flaky domain too.
	wg.Add(1)
	go func() {
		defer wg.Done()
		sinkT, dnsT := time.NewTicker(sinkPhase), time.NewTicker(dnsPhase)
		defer sinkT.Stop()
		defer dnsT.Stop()
		for p, q := 1, 1; ; {
			select {
			case <-ctx.Done():
				return
			case <-sinkT.C:
				for i, s := range sinks[1:] {
					if err := s.setMode(sinkSchedule[(p+2*i)%len(sinkSchedule)]); err != nil {
						fmt.Println("soak:", err)
					}
				}
				if ballast != nil {
					ballast.phase(p%4 == 0) // one phase in four with the spool's disk full
				}
				p++
			case <-dnsT.C:
				for i, dom := range domains[1:] {
					z.setMode(dom, dnsSchedule[(q+i)%len(dnsSchedule)])
				}
				q++
			}
		}
	}()

	// Sampling, every 10 s until the duration ends.
	var samples []sample
	start := time.Now()
	tick := time.NewTicker(sampleGap)
	var end sample
	func() {
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.done:
				cancel()
				return
			case <-tick.C:
				s, err := d.sample(time.Since(start))
				if err != nil {
					fmt.Println("soak: sample:", err)
					continue
				}
				samples = append(samples, s)
				fmt.Println(s)
			}
		}
	}()
	select {
	case <-d.done:
		wg.Wait()
		return false, fmt.Errorf("mtad exited during the soak: %v\n%s\nlog tail:\n%s", d.cmd.ProcessState, d.out.String(), tail(logPath, 20))
	default:
	}
	// The end figure is taken while the load still runs, as the warm-up
	// one was, so the two are comparable.
	if end, err = d.sample(time.Since(start)); err != nil {
		return false, fmt.Errorf("final sample: %w", err)
	}
	samples = append(samples, end)
	fmt.Println(end)
	cancel()
	wg.Wait()
	if ballast != nil {
		ballast.phase(false)
	}
	for _, s := range sinks[1:] {
		_ = s.setMode(faultNone)
	}
	for _, dom := range domains[1:] {
		z.setMode(dom, dnsOK)
	}
	// Let mtad drain what it can in 30 s (deferred mail waits for its
	// retry, up to 30 s): what is left is reported as pending.
	drain := time.Now().Add(30 * time.Second)
	var sum summary
	for {
		sum, err = d.summary()
		if err != nil || sum.QueuedRecipients == 0 || time.Now().After(drain) {
			break
		}
		time.Sleep(2 * time.Second) // polling the API: no event to wait on
	}
	if err != nil {
		return false, fmt.Errorf("summary: %w", err)
	}

	code, err := d.stop(60 * time.Second)
	if err != nil {
		return false, err
	}

	return report(os.Stdout, reportData{
		dur: dur, warmup: warmup, rate: rate, st: st, sum: sum, sinks: sinks, faults: fc.snapshot(),
		samples: samples, exit: code, logPath: logPath,
	}), nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func tail(path string, n int) string {
	out, _ := exec.Command("tail", "-n", strconv.Itoa(n), path).CombinedOutput()
	return string(out)
}
