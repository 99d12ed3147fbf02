package spool

import (
	"runtime"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// BenchmarkPut5KB measures synced Puts of 5 KB messages from about 64
// concurrent writers, the injection listener's load; group commit is what
// makes this fast.
func BenchmarkPut5KB(b *testing.B) {
	s := openTest(b, "", Options{MemTableSize: 64 << 20, CacheSize: 16 << 20})
	body := testBody(1, 5*1024)
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((64 + procs - 1) / procs)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			m := testMessage(i, 2)
			if err := s.Put(m, body); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRecover measures the start-up scan over 100k queued messages
// (two recipients, 1 KB body each) read back from disk.
func BenchmarkRecover(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	s := openTest(b, dir, Options{})
	fillFast(b, s, n, 1024)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	s = openTest(b, dir, Options{})
	b.ResetTimer()
	for range b.N {
		st, err := s.Recover(func(*Message) error { return nil })
		if err != nil || st.Messages != n {
			b.Fatalf("Recover: %+v, %v", st, err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// fillFast writes n messages in large unsynced batches (setup only: the
// records are the ones Put writes) and flushes them to sstables.
func fillFast(b *testing.B, s *Spool, n, size int) {
	b.Helper()
	body := testBody(0, size)
	err := s.withDB(func(db *pebble.DB) error {
		batch := db.NewBatch()
		for i := 0; i < n; i++ {
			m := testMessage(i, 2)
			m.ID = s.NewID()
			m.Size = int64(size)
			_ = batch.Set(metaKey(m.ID), encodeMeta(m), nil)
			_ = batch.Set(bodyKey(m.ID), encodeBody(body), nil)
			for r := range m.Recipients {
				_ = batch.Set(rcptKey(m.ID, r), encodeRecipient(&m.Recipients[r]), nil)
			}
			if batch.Len() > 4<<20 || i == n-1 {
				if err := batch.Commit(pebble.NoSync); err != nil {
					return err
				}
				_ = batch.Close()
				batch = db.NewBatch()
			}
		}
		_ = batch.Close()
		return db.Flush()
	})
	if err != nil {
		b.Fatal(err)
	}
}
