package spool

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// BenchmarkScaleRecover1M measures start-up over a spool of 1,000,000
// queued messages (one recipient, 1 KB body): Open, which replays the
// write-ahead log of what was not yet flushed, then Recover's scan handing
// every message to a callback that keeps nothing. The spool is filled
// through Put from 64 concurrent writers and closed, as a daemon stopped
// with a full queue leaves it; production Options throughout. The files
// are in the page cache (just written), so this is a warm start; a cold
// one adds reading ≈1.3 GB from disk. Target < 60 s.
//
// It also reports the fill rate (fill-msgs/s): synced Puts of 1 KB
// messages from 64 writers.
func BenchmarkScaleRecover1M(b *testing.B) {
	const (
		n       = 1_000_000
		writers = 64
		size    = 1024
	)
	dir := b.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	body := testBody(0, size)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				if err := s.Put(testMessage(i, 1), body); err != nil {
					errs <- fmt.Errorf("put %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	fill := time.Since(start)
	close(errs)
	for err := range errs {
		_ = s.Close()
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}

	var open, scan time.Duration
	var readAmp int
	var l0Tables int64
	for b.Loop() {
		t0 := time.Now()
		s, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		_ = s.withDB(func(db *pebble.DB) error {
			m := db.Metrics()
			readAmp, l0Tables = m.ReadAmp(), m.Levels[0].TablesCount
			return nil
		})
		tScan := time.Now() // the metrics above count in neither figure
		seen := 0
		st, err := s.Recover(func(*Message) error { seen++; return nil })
		t2 := time.Now()
		b.StopTimer()
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil || st.Messages != n || st.Recipients != n || seen != n || st.Quarantined+st.Finished+st.Owed != 0 {
			b.Fatalf("Recover: %+v (fn saw %d), %v", st, seen, err)
		}
		open += t1.Sub(t0)
		scan += t2.Sub(tScan)
		b.StartTimer()
	}
	runs := float64(b.N)
	total := (open + scan).Seconds() / runs
	b.ReportMetric(total, "s")
	b.ReportMetric(open.Seconds()/runs, "open-s")
	b.ReportMetric(scan.Seconds()/runs, "recover-s")
	b.ReportMetric(n/total, "msgs/s")
	b.ReportMetric(n/fill.Seconds(), "fill-msgs/s")
	// The LSM's shape at start-up: each SeekGE that is not a continuation
	// of the previous one visits every sublevel.
	b.ReportMetric(float64(readAmp), "read-amp")
	b.ReportMetric(float64(l0Tables), "l0-tables")
}
