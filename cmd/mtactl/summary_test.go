package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/scheduler"
)

// startSummaryAdmin runs the real admin server with a summary source
// (nil: none).
func startSummaryAdmin(t *testing.T, f admin.SummaryFunc) string {
	t.Helper()
	s := admin.New(admin.Options{Listen: "127.0.0.1:0", Summary: f})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr().String()
}

// TestSummaryCmd: `mtactl summary` prints the counts (total, last
// minute, per second) and the state of the moment as aligned tables,
// --json the API's answer as it came, an unknown spool as "unknown", and
// refuses arguments (2) and a daemon without the endpoint (1).
func TestSummaryCmd(t *testing.T) {
	t.Parallel()
	used, free := uint64(3<<20), uint64(5<<30)
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	sum := scheduler.Summary{
		Time: at, Since: at.Add(-90 * time.Minute),
		Totals:         scheduler.Counts{Received: 1000, ReceivedRecipients: 2500, Delivered: 2300, Deferred: 140, Bounced: 50, Expired: 7, Cancelled: 3},
		LastMinute:     scheduler.Counts{Received: 120, ReceivedRecipients: 300, Delivered: 240, Deferred: 6, Bounced: 3},
		QueuedMessages: 12, QueuedRecipients: 20, Connections: 7, MaxConnections: 200,
		SpoolBytes: &used, SpoolFreeBytes: &free, Suspensions: 2,
	}
	// The server reads the summary on its goroutines; the test swaps it.
	var cur atomic.Pointer[scheduler.Summary]
	cur.Store(&sum)
	base := startSummaryAdmin(t, func() any { return *cur.Load() })

	code, out, errOut := mtactl(t, base, "summary")
	t.Logf("mtactl summary:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range [][]string{
		{"EVENT", "TOTAL", "LAST", "MINUTE", "PER", "SECOND"},
		{"received", "messages", "1000", "120", "2.00"},
		{"received", "recipients", "2500", "300", "5.00"},
		{"delivered", "2300", "240", "4.00"},
		{"deferred", "140", "6", "0.10"},
		{"bounced", "50", "3", "0.05"},
		{"expired", "7", "0", "0.00"},
		{"cancelled", "3", "0", "0.00"},
		{"queued", "12", "messages,", "20", "recipients"},
		{"connections", "7", "of", "200"},
		{"spool", "3.0", "MiB", "used,", "5.0", "GiB", "free"},
		{"suspensions", "2"},
		{"counting", "since", "2026-12-01T08:30:00Z", "(1h30m0s)"},
	} {
		if !hasRow(out, want) {
			t.Errorf("no row %q in\n%s", want, out)
		}
	}
	// Aligned: every count starts in TOTAL's column.
	col := -1
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			break
		}
		if col < 0 {
			col = strings.Index(l, "TOTAL")
			continue
		}
		if len(l) <= col || l[col-1] != ' ' || l[col] < '0' || l[col] > '9' {
			t.Errorf("row %q: its total does not start at column %d\n%s", l, col, out)
		}
	}

	code, out, _ = mtactl(t, base, "summary", "--json")
	var got scheduler.Summary
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || got.Totals != sum.Totals || *got.SpoolFreeBytes != free {
		t.Errorf("--json: exit %d, %v, %+v", code, err, got)
	}

	noSpool := sum
	noSpool.SpoolBytes = nil
	cur.Store(&noSpool)
	if _, out, _ = mtactl(t, base, "summary"); !hasRow(out, []string{"spool", "unknown"}) {
		t.Errorf("spool without figures:\n%s", out)
	}
	if code, _, errOut := mtactl(t, base, "summary", "extra"); code != 2 || !strings.Contains(errOut, "takes no arguments") {
		t.Errorf("summary extra: exit %d %q, want 2", code, errOut)
	}
	bare := startSummaryAdmin(t, nil)
	if code, _, errOut := mtactl(t, bare, "summary"); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("summary without the endpoint: exit %d %q, want 1 with the 404", code, errOut)
	}
}

// hasRow reports whether some line of out has exactly the fields want.
func hasRow(out string, want []string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}
