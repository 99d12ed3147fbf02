package inject

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestWatermarkHysteresis walks a queue depth up and down and checks the
// state after each step: refused from high until the depth is at low.
func TestWatermarkHysteresis(t *testing.T) {
	t.Parallel()
	var depth int64
	core, logs := observer.New(zap.InfoLevel)
	w, err := NewWatermark(100, 0, func() int64 { return depth }, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if h, l := w.Limits(); h != 100 || l != 90 {
		t.Fatalf("limits %d %d, want 100 90 (low defaults to 90%%)", h, l)
	}
	for _, s := range []struct {
		depth int64
		over  bool
	}{{0, false}, {99, false}, {100, true}, {150, true}, {95, true}, {91, true}, {90, false}, {99, false}, {100, true}, {0, false}} {
		depth = s.depth
		if got := w.Over(); got != s.over {
			t.Fatalf("depth %d: over %v, want %v", s.depth, got, s.over)
		}
	}
	// Two crossings up, two down: each logged once.
	if up, down := logs.FilterMessageSnippet("high watermark").Len(), logs.FilterMessageSnippet("low watermark;").Len(); up != 2 || down != 2 {
		t.Fatalf("%d records going over, %d coming back; want 2 and 2", up, down)
	}
	var nilW *Watermark
	if nilW.Over() {
		t.Fatal("a nil Watermark refused")
	}
}

func TestWatermarkInvalid(t *testing.T) {
	t.Parallel()
	d := func() int64 { return 0 }
	for _, c := range []struct {
		high, low int64
		depth     func() int64
	}{{0, 0, d}, {-1, 0, d}, {10, 10, d}, {10, 11, d}, {10, -1, d}, {10, 5, nil}} {
		if _, err := NewWatermark(c.high, c.low, c.depth, nil); err == nil {
			t.Errorf("NewWatermark(%d, %d) accepted", c.high, c.low)
		}
	}
}
