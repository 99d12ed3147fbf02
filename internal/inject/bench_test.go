package inject

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// BenchmarkInject5KB: 50 concurrent go-smtp clients, each on its own
// connection, inject 5 KB messages into a Server on loopback backed by a
// real spool (synced writes, group commit). Reports messages per second
// and the time from MAIL to the 250 after DATA, p50 and p99.
func BenchmarkInject5KB(b *testing.B) { benchInject(b, 5*1024) }

// BenchmarkInject100KB is BenchmarkInject5KB with the W2 workload's 100 KB
// bodies, where the body scan and the chunked spool write dominate.
func BenchmarkInject100KB(b *testing.B) { benchInject(b, 100*1024) }

func benchInject(b *testing.B, size int) {
	const clients = 50
	sp := openSpool(b, nil)
	srv, err := New(Options{
		Listen:         []string{"127.0.0.1:0"},
		RelayNetworks:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:       "mx.bench",
		MaxMessageSize: 1 << 20,
		ReadTimeout:    time.Minute,
		WriteTimeout:   time.Minute,
		Logger:         zap.NewNop(),
	}, sp, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(b.Context())
	addr := srv.Addrs()[0].String()

	body := "From: app@example.com\r\nTo: a@example.net\r\nSubject: bench\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 76)+"\r\n", size/78)
	conns := make([]*smtp.Client, clients)
	for i := range conns {
		c, err := smtp.Dial(addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("bench.client"); err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}

	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := send(c, "app@example.com", []string{"a@example.net"}, body, nil); err != nil {
					failed.Add(1)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d injections failed", n)
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
}

// BenchmarkDataScan100KB is the DATA scan alone (line ends, dots, flags)
// of a 100 KB body of 78-byte CRLF lines, in 32 KiB blocks as read.
func BenchmarkDataScan100KB(b *testing.B) {
	line := strings.Repeat("x", 76) + "\r\n"
	body := []byte(strings.Repeat(line, 100<<10/len(line)) + ".\r\n")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var sink discard
	for b.Loop() {
		sc := newDataScanner(true)
		for off := 0; off < len(body); {
			end := min(len(body), off+readBlock)
			n, done := sc.scan(body[off:end], sink)
			off += n
			if done {
				break
			}
		}
	}
}
