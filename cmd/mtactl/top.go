package main

// mtactl top: the daemon at a glance, redrawn every --interval.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// maxTopErrors is how many refreshes in a row may fail before top gives
// up: a daemon gone for good must not leave top polling forever.
const maxTopErrors = 5

func (a *app) topCmd() *cobra.Command {
	var interval time.Duration
	var limit, frames int
	var once bool
	cmd := &cobra.Command{
		Use:   "top [--interval 2s] [--limit 20] [--once]",
		Short: "rates, queue, connections and the busiest domains, redrawn until q, EOF or Ctrl-C",
		Long: `Redraw, every --interval, the last minute's rates (per second), the queue,
the connections and the busiest domains. Type q and Enter, or close stdin
(Ctrl-D), or Ctrl-C to stop. --once prints one frame and exits.`,
		Args: nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval < 100*time.Millisecond || limit < 1 || frames < 0 {
				return usagef("--interval must be at least 100ms, --limit at least 1, --frames not negative")
			}
			if a.asJSON && !once {
				// A stream of redrawn JSON frames is no document a
				// program could read: one frame, with --once.
				return usagef("--json needs --once (one frame)")
			}
			if once && a.asJSON {
				return a.topJSON(limit)
			}
			if once {
				text, err := a.topFrame(limit)
				if err != nil {
					return err
				}
				_, err = io.WriteString(a.out, text)
				return err
			}
			return a.topLoop(interval, limit, frames)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&interval, "interval", 2*time.Second, "time between redraws")
	f.IntVar(&limit, "limit", 20, "show this many domains")
	f.BoolVar(&once, "once", false, "print one frame and exit (no screen clearing)")
	f.IntVar(&frames, "frames", 0, "stop after this many frames (0: until q, EOF or Ctrl-C)")
	return cmd
}

// topLoop redraws until stdin says q or ends, a write to stdout fails
// (closed), frames are done, or maxTopErrors refreshes in a row failed.
// It waits on stdin with poll(2) for the interval instead of a reader
// goroutine: a blocked read of a terminal cannot be stopped, and no
// goroutine is left behind.
func (a *app) topLoop(interval time.Duration, limit, frames int) error {
	in, _ := a.in.(*os.File)
	failures := 0
	for n := 0; frames == 0 || n < frames; n++ {
		text, err := a.topFrame(limit)
		if err != nil {
			failures++
			if failures >= maxTopErrors {
				return fmt.Errorf("top: %d refreshes in a row failed, the last: %w", failures, err)
			}
			text = fmt.Sprintf("%s\nrefresh failed (%d of %d before giving up): %v\n", time.Now().Format(time.TimeOnly), failures, maxTopErrors, err)
		} else {
			failures = 0
		}
		// ANSI: cursor home, clear the screen.
		if _, err := io.WriteString(a.out, "\x1b[H\x1b[2J"+text); err != nil {
			return nil // stdout closed: the reader has gone, so do we
		}
		stop, err := waitInput(in, interval)
		if stop || err != nil {
			return err
		}
	}
	return nil
}

// waitInput waits up to d for input on in; it says stop on "q" or EOF.
// Without a file to poll (stdin not a file), it only waits.
func waitInput(in *os.File, d time.Duration) (stop bool, err error) {
	if in == nil {
		time.Sleep(d)
		return false, nil
	}
	fds := []unix.PollFd{{Fd: int32(in.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d/time.Millisecond))
	if errors.Is(err, unix.EINTR) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("top: waiting for input: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	buf := make([]byte, 256)
	k, err := in.Read(buf)
	if k == 0 || err != nil { // EOF (or a stdin that fails): stop
		return true, nil
	}
	return strings.ContainsAny(string(buf[:k]), "qQ"), nil
}

// topJSON prints one frame as the API's answers:
// {"summary": GET /api/v1/summary, "queues": GET /api/v1/queues (null
// while the daemon lacks it)}.
func (a *app) topJSON(limit int) error {
	_, sum, err := a.call("GET", "/api/v1/summary", nil)
	if err != nil {
		return err
	}
	q := queuesQuery{by: "domain", sort: "active", limit: limit}
	_, queues, err := a.call("GET", q.path(), nil)
	switch {
	case isNotFound(err):
		queues = []byte("null")
	case err != nil:
		return err
	}
	b, err := json.Marshal(struct {
		Summary json.RawMessage `json:"summary"`
		Queues  json.RawMessage `json:"queues"`
	}{sum, queues})
	if err != nil {
		return fmt.Errorf("top: the daemon's answers are not JSON: %w", err)
	}
	return a.printJSON(b)
}

// topFrame builds one frame: a summary line of rates, the queue and
// connections, then the busiest domains from /api/v1/queues (left out,
// with a note, while the daemon lacks that endpoint).
func (a *app) topFrame(limit int) (string, error) {
	_, b, err := a.call("GET", "/api/v1/summary", nil)
	if err != nil {
		return "", err
	}
	var s summary
	if err := json.Unmarshal(b, &s); err != nil {
		return "", fmt.Errorf("summary: the answer is not a summary: %w", err)
	}
	var sb strings.Builder
	at := s.Time
	if at.IsZero() {
		at = time.Now()
	}
	m := s.LastMinute
	rate := func(n int64) string { return fmt.Sprintf("%.2f/s", float64(n)/60) }
	fmt.Fprintf(&sb, "mtad %s  last minute: received %s  delivered %s  deferred %s  bounced %s\n",
		at.UTC().Format(time.TimeOnly), rate(m.Received), rate(m.Delivered), rate(m.Deferred), rate(m.Bounced))
	fmt.Fprintf(&sb, "queued %d messages, %d recipients  connections %d of %d  suspensions %d\n\n",
		s.QueuedMessages, s.QueuedRecipients, s.Connections, s.MaxConnections, s.Suspensions)
	q := queuesQuery{by: "domain", sort: "active", limit: limit}
	_, b, err = a.call("GET", q.path(), nil)
	switch {
	case isNotFound(err):
		sb.WriteString("(no per-domain view: this daemon has no /api/v1/queues)\n")
	case err != nil:
		return "", err
	default:
		if err := printQueues(&sb, b); err != nil {
			return "", err
		}
	}
	return sb.String(), nil
}
