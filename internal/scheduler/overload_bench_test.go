package scheduler

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// vmHWM is the process's peak resident set (VmHWM in /proc/self/status)
// in bytes; 0 where there is no such file.
func vmHWM() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkOverloadQueued500k queues 500,000 messages of ~1 KB, each
// stored by spool.Put (fsync'd, group commits from 16 writers, as the
// listener's sessions would) and handed to the scheduler by Intake, with
// every delivery held (the maintain chain answers Handled, so nothing is
// dialed): the state the queue is in when injection outruns delivery up
// to the high watermark. It goes straight to the spool rather than through
// the SMTP listener, whose per-message protocol cost would make the run
// last far longer and shows nothing about memory. 10,000 domains × 4
// bindings.
//
// It reports the live heap after GC per queued message (scheduler and
// queue metadata, the pebble memtable and block cache included) and the
// peak RSS of the whole test process (VmHWM), for RELIABILITY.md. Run by
// make bench-overload.
func BenchmarkOverloadQueued500k(b *testing.B) {
	const (
		msgs    = 500_000
		domains = 10_000
		writers = 16
	)
	body := []byte("From: app@mail.sender.example\r\nTo: user@example.test\r\nSubject: overload\r\n\r\n" +
		strings.Repeat(strings.Repeat("y", 76)+"\r\n", 11))
	for b.Loop() {
		b.StopTimer()
		r := newScaleRig(b, nil)
		r.serve(b, domains)
		names := domainNames(domains)
		r.resolveAll(b, names)
		r.s.Start()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()

		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < msgs; i += writers {
					m := r.message(i, names[i%domains], r.bindings[i/domains%len(r.bindings)])
					m.ID = ""
					if err := r.sp.Put(m, body); err != nil {
						errs <- fmt.Errorf("put %d: %w", i, err)
						return
					}
					r.s.Intake(m)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Minute) // a hang guard
		for r.s.Queued() != msgs || r.s.in.waiting.Load() != 0 {
			if time.Now().After(deadline) {
				b.Fatalf("queued %d, want %d", r.s.Queued(), msgs)
			}
			time.Sleep(10 * time.Millisecond)
		}
		elapsed := time.Since(start)

		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := r.s.Pending(); n != msgs {
			b.Fatalf("pending %d, want %d", n, msgs)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/msgs, "heap-B/msg")
		b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(vmHWM())/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(vmHWM())/msgs, "peak-RSS-B/msg")
		b.ReportMetric(msgs/elapsed.Seconds(), "msgs/s")
		runtime.KeepAlive(r)
		b.StartTimer()
	}
}
