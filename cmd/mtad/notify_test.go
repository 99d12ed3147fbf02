package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestShouldPing(t *testing.T) {
	t.Parallel()
	const period = 15 * time.Second
	for _, tc := range []struct {
		since time.Duration
		want  bool
	}{
		{0, true},
		{time.Second, true},              // one maintain_interval ago
		{period - time.Nanosecond, true}, // a slow tick, still in time
		{period, false},                  // a whole period without a tick
		{2 * period, false},              // systemd will act at 30s
		{-time.Millisecond, true},        // a beat stored after the reading of now
	} {
		if got := shouldPing(tc.since, period); got != tc.want {
			t.Errorf("shouldPing(%v, %v) = %v, want %v", tc.since, period, got, tc.want)
		}
	}
}

// newNotifier reads the watchdog from the environment, so these tests are
// not parallel.
func TestNotifierWatchdogSettings(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_PID", "")

	t.Setenv("WATCHDOG_USEC", "")
	n, err := newNotifier(zap.NewNop(), time.Second)
	if err != nil || n.interval != 0 {
		t.Fatalf("no watchdog: interval %v, err %v", n.interval, err)
	}
	n.start()
	n.stopWatchdog() // returns: nothing was started

	t.Setenv("WATCHDOG_USEC", "30000000")
	if n, err = newNotifier(zap.NewNop(), time.Second); err != nil || n.interval != 15*time.Second {
		t.Fatalf("WatchdogSec=30s: interval %v, err %v; want 15s", n.interval, err)
	}
	if _, err = newNotifier(zap.NewNop(), 15*time.Second); err == nil || !strings.Contains(err.Error(), "delivery.maintain_interval (15s)") {
		t.Errorf("maintain_interval of half the watchdog: err %v, want one naming delivery.maintain_interval", err)
	}
	t.Setenv("WATCHDOG_USEC", "thirty")
	if _, err = newNotifier(zap.NewNop(), time.Second); err == nil {
		t.Error("WATCHDOG_USEC=thirty accepted")
	}
}
