package scheduler

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

// countCore counts "delivered" records and closes done at target.
type countCore struct {
	n      atomic.Int64
	target int64
	done   chan struct{}
}

func (c *countCore) Enabled(zapcore.Level) bool        { return true }
func (c *countCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *countCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == "delivered" {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c *countCore) Write(zapcore.Entry, []zapcore.Field) error {
	if c.n.Add(1) == c.target {
		close(c.done)
	}
	return nil
}
func (c *countCore) Sync() error { return nil }

// BenchmarkEndToEnd injects 2000 messages of 5 KB to 100 domains (spool
// put + Submit from 32 goroutines) and measures until every one was
// delivered to the loopback sinks, with the real clock and ticker.
func BenchmarkEndToEnd(b *testing.B) {
	const msgs, domains, writers = 2000, 100, 32
	sinkIPs := []string{ip(60, 10), ip(60, 11), ip(60, 12), ip(60, 13)}
	_, port := loopbacktest.StartSinks(b, sinkIPs, nil)
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 5*1024/80))
	for b.Loop() {
		b.StopTimer()
		cc := &countCore{target: msgs, done: make(chan struct{})}
		h := newHarness(b, port, func(o *Options) {
			o.Clock = systemClock{}
			o.Logger = zap.New(cc)
			o.MaintainInterval = 50 * time.Millisecond
			o.Pool.MaxConnections = 200
			o.Reserve = scaleReserve(200) // the shipped proportion
			o.Pool.IdleTimeout = time.Second
		})
		for i := range domains {
			h.mxFor(fmt.Sprintf("d%d.test", i), sinkIPs[i%len(sinkIPs)])
		}
		h.s.Start()
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < msgs; i += writers {
					m := &spool.Message{Sender: "bench@origin.test", Received: time.Now(),
						Recipients: []spool.Recipient{{Addr: fmt.Sprintf("u%d@d%d.test", i, i%domains)}}}
					if err := h.sp.Put(m, body); err != nil {
						b.Error(err)
						return
					}
					if err := h.s.Submit(m); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		select {
		case <-cc.done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("only %d of %d delivered", cc.n.Load(), msgs)
		}
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(msgs)/el.Seconds(), "msgs/s")
		b.ReportMetric(float64(h.connects.Load()), "connections")
		h.close()
		b.StartTimer()
	}
}
