package inject

import (
	"fmt"
	"sync/atomic"

	"go.uber.org/zap"
)

// Watermark is the listeners' back-pressure on a deep queue: once the
// number of queued messages reaches High it reports Over until the number
// falls to Low or below (hysteresis, so the listener does not flap around
// one figure). While Over, the SMTP listener greets new connections with
// 421 4.3.2 and closes them, answers MAIL in sessions already open with
// 452 4.3.2, and the HTTP API answers 503 with a JSON error.
//
// It refuses before any body is sent: the client keeps the mail in its own
// queue and retries later, which costs it nothing, while accepting would
// put more on a spool the deliveries are not draining (and memory: each
// queued message costs the scheduler its metadata).
//
// One Watermark is shared by the SMTP and HTTP listeners so that both
// change state together. Safe for concurrent use; it reads the depth only
// (an atomic load in the scheduler), so it costs nothing per connection.
type Watermark struct {
	high, low int64
	depth     func() int64
	log       *zap.Logger
	over      atomic.Bool
}

// NewWatermark returns a Watermark over depth, the number of messages
// queued now. low 0 means 90% of high. high must be > 0 and low < high.
// Each change of state is logged to log (a warning going over, info
// coming back), so a refusal is never silent; nil logs nothing.
func NewWatermark(high, low int64, depth func() int64, log *zap.Logger) (*Watermark, error) {
	if high <= 0 {
		return nil, fmt.Errorf("inject: watermark: high %d must be > 0", high)
	}
	if low == 0 {
		low = high - high/10
	}
	if low < 0 || low >= high {
		return nil, fmt.Errorf("inject: watermark: low %d must be in [0, high %d)", low, high)
	}
	if depth == nil {
		return nil, fmt.Errorf("inject: watermark: nil depth")
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Watermark{high: high, low: low, depth: depth, log: log}, nil
}

// Over reports whether new mail is refused now, moving between the two
// states on the way: up at High, down at Low. A nil Watermark is never over.
func (w *Watermark) Over() bool {
	if w == nil {
		return false
	}
	d := w.depth()
	if w.over.Load() {
		if d <= w.low {
			if w.over.CompareAndSwap(true, false) {
				w.log.Info("queue below its low watermark; injection accepted again",
					zap.Int64("queued", d), zap.Int64("low_watermark", w.low))
			}
			return false
		}
		return true
	}
	if d >= w.high {
		if w.over.CompareAndSwap(false, true) {
			w.log.Warn("queue at its high watermark; injection refused (SMTP 421/452 4.3.2, HTTP 503)",
				zap.Int64("queued", d), zap.Int64("high_watermark", w.high), zap.Int64("low_watermark", w.low))
		}
		return true
	}
	return false
}

// Limits returns the high and low marks.
func (w *Watermark) Limits() (high, low int64) { return w.high, w.low }
