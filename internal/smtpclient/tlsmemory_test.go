package smtpclient

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestTLSMemoryTTL(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := NewTLSMemory(time.Hour, 10, clk.Now)
	if m.Skip("mx.example.com") {
		t.Fatal("unknown host skipped")
	}
	m.Failed("MX.Example.com.")
	steps := []struct {
		advance time.Duration
		skip    bool
	}{
		{0, true},
		{59 * time.Minute, true},
		{time.Minute, false}, // exactly the TTL: expired
		{0, false},
	}
	for i, s := range steps {
		clk.advance(s.advance)
		if got := m.Skip("mx.example.com"); got != s.skip {
			t.Errorf("step %d: Skip = %v, want %v", i, got, s.skip)
		}
	}
	if m.Len() != 0 {
		t.Errorf("expired entry kept: Len = %d", m.Len())
	}
	m.Failed("mx.example.com")
	clk.advance(30 * time.Minute)
	m.Failed("mx.example.com") // a new failure extends the period
	clk.advance(45 * time.Minute)
	if !m.Skip("mx.example.com") {
		t.Error("renewed failure not remembered")
	}
}

func TestTLSMemoryBounded(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := NewTLSMemory(time.Hour, 3, clk.Now)
	for i := range 3 {
		m.Failed(fmt.Sprintf("mx%d.test", i))
		clk.advance(time.Minute)
	}
	m.Failed("mx3.test")
	if m.Len() != 3 {
		t.Fatalf("Len = %d, want 3", m.Len())
	}
	if m.Skip("mx0.test") {
		t.Error("the oldest host was kept over the bound")
	}
	for _, h := range []string{"mx1.test", "mx2.test", "mx3.test"} {
		if !m.Skip(h) {
			t.Errorf("%s forgotten", h)
		}
	}
	// Expired entries go first.
	clk.advance(58 * time.Minute) // mx1 expires (failed at +1m, now +62m)
	m.Failed("mx4.test")
	if m.Len() != 3 || !m.Skip("mx2.test") || !m.Skip("mx4.test") {
		t.Errorf("after expiry: Len = %d, mx2 %v, mx4 %v", m.Len(), m.Skip("mx2.test"), m.Skip("mx4.test"))
	}
}

func TestTLSMemoryConcurrent(t *testing.T) {
	t.Parallel()
	m := NewTLSMemory(time.Hour, 50, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				h := fmt.Sprintf("mx%d-%d.test", g, i)
				m.Failed(h)
				m.Skip(h)
			}
		})
	}
	wg.Wait()
	if m.Len() > 50 {
		t.Errorf("Len = %d over the bound 50", m.Len())
	}
}
