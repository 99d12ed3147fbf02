package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/scheduler"
)

func testSummary() scheduler.Summary {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	return scheduler.Summary{
		Time: at, Since: at.Add(-time.Hour),
		LastMinute:     scheduler.Counts{Received: 120, Delivered: 240, Deferred: 6, Bounced: 3},
		QueuedMessages: 12, QueuedRecipients: 20, Connections: 7, MaxConnections: 200, Suspensions: 1,
	}
}

// TestTopOnce: one frame, without screen clearing: the rates per second
// over the last minute, the queue and connections; while the daemon has
// no /api/v1/queues, a note instead of the domain rows.
func TestTopOnce(t *testing.T) {
	t.Parallel()
	base := startSummaryAdmin(t, func() any { return testSummary() })
	code, out, errOut := mtactl(t, base, "top", "--once")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"mtad 10:00:00  last minute: received 2.00/s  delivered 4.00/s  deferred 0.10/s  bounced 0.05/s\n",
		"queued 12 messages, 20 recipients  connections 7 of 200  suspensions 1\n",
		"(no per-domain view: this daemon has no /api/v1/queues)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("--once cleared the screen: %q", out)
	}
	if code, _, errOut := mtactl(t, startSummaryAdmin(t, nil), "top", "--once"); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("no summary: exit %d %q, want 1 with the 404", code, errOut)
	}
}

// TestTopLoop: top redraws until q or EOF on stdin, a frame count, or
// repeated failures.
func TestTopLoop(t *testing.T) {
	t.Parallel()
	base := startSummaryAdmin(t, func() any { return testSummary() })
	for _, c := range []struct {
		name, input string
		close       bool
	}{
		{"q", "q\n", false},
		{"EOF", "", true},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteString(c.input); err != nil {
			t.Fatal(err)
		}
		if c.close {
			w.Close()
		}
		var out, errb bytes.Buffer
		code := run([]string{"--admin", base, "top", "--interval", "10s"}, r, &out, &errb)
		r.Close()
		w.Close()
		// The input is there before the first wait: one frame, then stop
		// (without it, the 10s wait would show as a slow test, not pass).
		if code != 0 || strings.Count(out.String(), "\x1b[H\x1b[2J") != 1 || !strings.Contains(out.String(), "connections 7 of 200") {
			t.Errorf("%s: exit %d, %q %q", c.name, code, out.String(), errb.String())
		}
	}
	var out, errb bytes.Buffer
	code := run([]string{"--admin", base, "top", "--interval", "100ms", "--frames", "2"}, strings.NewReader(""), &out, &errb)
	if code != 0 || strings.Count(out.String(), "\x1b[H\x1b[2J") != 2 {
		t.Errorf("--frames 2: exit %d, %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code = run([]string{"--admin", "127.0.0.1:1", "top", "--interval", "100ms"}, strings.NewReader(""), &out, &errb)
	if code != 1 || strings.Count(out.String(), "refresh failed") != maxTopErrors-1 ||
		!strings.Contains(errb.String(), "5 refreshes in a row failed, the last: ") {
		t.Errorf("daemon gone: exit %d, %q %q", code, out.String(), errb.String())
	}
	if code, _, errOut := mtactl(t, base, "top", "--interval", "1ms"); code != 2 || !strings.Contains(errOut, "--interval") {
		t.Errorf("--interval 1ms: exit %d %q", code, errOut)
	}
}

// TestPrintQueues: the table of a /api/v1/queues page, as the contract
// in the issue gives it: key columns by view, human ages, the last reply
// cut to fit, the state, and a paging hint.
func TestPrintQueues(t *testing.T) {
	t.Parallel()
	page := `{"by":"pair","total":4,"offset":0,"limit":3,"items":[
{"domain":"a.test","binding":"b1","provider":"bigmail","active":40,"delayed":7,"connections":3,"oldest_seconds":3900,
 "deferred":12,"bounced":2,"bounce_classes":{"invalid-recipient":2},
 "last_reply":{"at":"2026-12-01T10:00:00Z","code":451,"enhanced":"4.7.1","text":"Try again later, the receiving server is having a very long day today"},
 "suspension":{"id":"s1","scope":"domain","until":"2026-12-01T12:00:00Z","reason":"r","by":"x"},"throttle":null},
{"domain":"b.test","binding":"b2","provider":"","active":1,"delayed":0,"connections":0,"oldest_seconds":0,
 "deferred":0,"bounced":0,"bounce_classes":{},"last_reply":null,"suspension":null,"throttle":{"scope":"site:x","rate":"1/m","until":"2026-12-01T11:00:00Z"}},
{"domain":"c.test","binding":"b1","provider":"","active":1,"delayed":1,"connections":0,"oldest_seconds":0,
 "deferred":1,"bounced":0,"bounce_classes":{},"last_reply":{"at":"2026-12-01T10:00:00Z","code":0,"enhanced":"4.4.1","text":"connection refused"},"suspension":null,"throttle":null}]}`
	var out bytes.Buffer
	if err := printQueues(&out, []byte(page)); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]string{
		{"DOMAIN", "BINDING", "PROVIDER", "ACTIVE", "DELAYED", "CONNS", "OLDEST", "DEFERRED", "BOUNCED", "LAST", "REPLY", "STATE"},
		append([]string{"a.test", "b1", "bigmail", "40", "7", "3", "1h05m", "12", "2"},
			append(strings.Fields("451 4.7.1 Try again later, the receivin…"), "suspended")...),
		{"b.test", "b2", "-", "1", "0", "0", "-", "0", "0", "-", "throttled"},
		// A local error's code 0 is not shown: only the enhanced code.
		{"c.test", "b1", "-", "1", "1", "0", "-", "1", "0", "4.4.1", "connection", "refused", "-"},
		{"(1-3", "of", "4;", "--offset", "3", "for", "more)"},
	} {
		if !hasRow(out.String(), want) {
			t.Errorf("no row %q in\n%s", want, out.String())
		}
	}
	for _, c := range []struct {
		sec  float64
		want string
	}{{0, ""}, {45, "45s"}, {600, "10m"}, {3900, "1h05m"}, {2*86400 + 4*3600, "2d04h"}} {
		if got := age(c.sec); got != c.want {
			t.Errorf("age(%v) = %q, want %q", c.sec, got, c.want)
		}
	}
	if err := printQueues(&out, []byte(`[]`)); err == nil {
		t.Error("a list is not a queue page, and no error")
	}
}

// TestQueueSummaryFallback: while the daemon has no /api/v1/queues,
// queue-summary without filters prints the summary (saying so on
// stderr); with a filter it cannot honour, it fails with the 404.
func TestQueueSummaryFallback(t *testing.T) {
	t.Parallel()
	base := startSummaryAdmin(t, func() any { return testSummary() })
	code, out, errOut := mtactl(t, base, "queue-summary")
	if code != 0 || !hasRow(out, []string{"queued", "12", "messages,", "20", "recipients"}) || !strings.Contains(errOut, "no /api/v1/queues") {
		t.Errorf("queue-summary: exit %d %q %q", code, out, errOut)
	}
	code, _, errOut = mtactl(t, base, "queue-summary", "--domain", "*.test")
	if code != 1 || !strings.Contains(errOut, "404 Not Found") {
		t.Errorf("queue-summary --domain: exit %d %q", code, errOut)
	}
}
