package main

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/mtad/mtad/internal/logging"
)

// notifier speaks systemd's notify protocol (sd_notify(3)) on
// $NOTIFY_SOCKET: READY=1 once recovery is done and the listeners are up,
// RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 at SIGTERM,
// and WATCHDOG=1 every half of $WATCHDOG_USEC while the scheduler ticks.
// Without $NOTIFY_SOCKET (not run by systemd, or a Type= that does not
// listen) every call is a no-op.
//
// The watchdog pings come from a goroutine of their own, but only while the
// scheduler's ticker has beaten recently (scheduler.Options.OnTick): a
// scheduler stuck in a hook or on a lock stops the pings, and systemd
// kills and restarts mtad (WatchdogSec=, Restart=on-failure). A goroutine
// that pinged unconditionally would prove only that the runtime runs.
type notifier struct {
	log *zap.Logger
	// interval is the ping period, half of WATCHDOG_USEC as sd_watchdog_enabled(3)
	// advises; 0 when the watchdog is off.
	interval time.Duration

	epoch    time.Time    // lastBeat counts from here, on the monotonic clock
	lastBeat atomic.Int64 // nanoseconds from epoch to the scheduler's last tick

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// newNotifier reads $WATCHDOG_USEC (and $WATCHDOG_PID, which must be ours
// when set). maintain is the scheduler's tick period: a watchdog shorter
// than two ticks would kill a healthy daemon, so it is refused at start.
func newNotifier(log *zap.Logger, maintain time.Duration) (*notifier, error) {
	n := &notifier{log: log, epoch: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return nil, fmt.Errorf("systemd watchdog: %w", err)
	}
	if wd > 0 {
		n.interval = wd / 2
		if maintain >= n.interval {
			return nil, fmt.Errorf("systemd watchdog: WatchdogSec=%s needs delivery.maintain_interval (%s) under half of it, or every ping would be withheld", wd, maintain)
		}
	}
	if s := os.Getenv("NOTIFY_SOCKET"); s != "" {
		log.Info("systemd notify", zap.String("socket", s), zap.Duration("watchdog", wd))
	}
	return n, nil
}

// beat records a scheduler tick; it is scheduler.Options.OnTick, so it
// only stores a number.
func (n *notifier) beat(time.Time) { n.lastBeat.Store(int64(time.Since(n.epoch))) }

// shouldPing is the watchdog's decision: ping while the scheduler's last
// tick is younger than a ping period. A tick runs every
// delivery.maintain_interval (under the period, newNotifier checks), so a
// healthy scheduler always has one; after a stall of one to two periods
// the pings stop, and systemd acts at WATCHDOG_USEC after the last one.
func shouldPing(sinceBeat, interval time.Duration) bool { return sinceBeat < interval }

// start runs the watchdog goroutine when the watchdog is on; stop ends it.
func (n *notifier) start() {
	n.startOnce.Do(func() {
		if n.interval <= 0 {
			close(n.done)
			return
		}
		go n.watchdog()
	})
}

func (n *notifier) watchdog() {
	defer close(n.done)
	t := time.NewTicker(n.interval)
	defer t.Stop()
	withheld := false // log a stall once, not at every period
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		since := time.Since(n.epoch) - time.Duration(n.lastBeat.Load())
		if !shouldPing(since, n.interval) {
			if !withheld {
				n.log.Error("scheduler has not ticked: withholding the systemd watchdog ping", zap.Duration("since_last_tick", since))
				withheld = true
			}
			continue
		}
		if withheld {
			n.log.Info("scheduler ticking again: systemd watchdog pings resumed")
			withheld = false
		}
		n.send(daemon.SdNotifyWatchdog)
	}
}

// stopWatchdog ends the watchdog goroutine and waits for it; start must
// have been called.
func (n *notifier) stopWatchdog() {
	n.stopOnce.Do(func() { close(n.stop) })
	<-n.done
}

// ready says start-up or a reload is done.
func (n *notifier) ready(status string) {
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading says a reload has begun. MONOTONIC_USEC is what systemd ≥ 253
// requires with RELOADING=1 for Type=notify-reload, to tell this reload
// from an earlier one; older versions and Type=notify ignore it.
func (n *notifier) reloading() {
	var ts unix.Timespec
	state := daemon.SdNotifyReloading
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
		state += fmt.Sprintf("\nMONOTONIC_USEC=%d", ts.Nano()/1000)
	}
	n.send(state)
}

// stopping says the drain has begun.
func (n *notifier) stopping() { n.send(daemon.SdNotifyStopping) }

func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("systemd notify", zap.String("state", state), zap.Error(err))
	}
}

// reopenLog opens log.file again at its path after logrotate moved it;
// with the log on standard output it does nothing.
func reopenLog(out *logging.Output, log *zap.Logger) {
	if out.Path() == "" {
		return
	}
	if err := out.Reopen(); err != nil {
		log.Error("log file not reopened: still writing to the old one", zap.String("file", out.Path()), zap.Error(err))
		return
	}
	log.Info("log file reopened", zap.String("file", out.Path()))
}
