package scheduler

import (
	"testing"
	"time"

	"github.com/mtad/mtad/internal/spool"
)

// TestBounceDamaged: a message the spool lost part of gets one DSN, spooled
// and submitted, reporting each recipient still pending as failed with
// 5.3.0 and the reason; delivered recipients and NOTIFY=NEVER ones are left
// out, and a null sender gets none.
func TestBounceDamaged(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, nil)
	m := &spool.Message{ID: "01JDAMAGED0000000000000000", Sender: "alice@example.org", Received: time.Now().Add(-time.Hour),
		EnvID: "env-1", Recipients: []spool.Recipient{
			{Addr: "bob@example.net"},
			{Addr: "carol@example.net", State: spool.Delivered},
			{Addr: "dave@example.net", Notify: spool.NotifyNever},
			{Addr: "erin@example.net", Notify: spool.NotifyFailure, ORcpt: "rfc822;erin@example.net"},
		}}
	dm, err := h.s.BounceDamaged(m)
	if err != nil || dm == nil {
		t.Fatalf("BounceDamaged: %v, %v", dm, err)
	}
	if dm.Sender != "" || len(dm.Recipients) != 1 || dm.Recipients[0].Addr != m.Sender || dm.DSNFor != m.ID {
		t.Fatalf("DSN envelope %+v", dm)
	}
	if e := h.next("dsn"); e.str("dsn_for") != m.ID {
		t.Errorf("dsn record for %q, want %s", e.str("dsn_for"), m.ID)
	}
	// The DSN is delivered (here: bounced, no MX) at once once submitted,
	// so its text is checked as built, by the builder BounceDamaged used.
	if dm.Size == 0 {
		t.Error("empty DSN spooled")
	}
	p, err := parseDSN(damagedDSN(m, "mta.test", time.Now()).build())
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Report.Get("Original-Envelope-Id"); got != "env-1" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if len(p.Recipients) != 2 {
		t.Fatalf("%d recipients reported, want bob and erin: %v", len(p.Recipients), p.Recipients)
	}
	for i, addr := range []string{"bob@example.net", "erin@example.net"} {
		r := p.Recipients[i]
		if r.Get("Final-Recipient") != "rfc822; "+addr || r.Get("Action") != "failed" || r.Get("Status") != "5.3.0" ||
			r.Get("Diagnostic-Code") != "X-mtad; message damaged in the spool" {
			t.Errorf("recipient %d: %v", i, r)
		}
	}
	if got := p.Recipients[1].Get("Original-Recipient"); got != "rfc822; erin@example.net" {
		t.Errorf("Original-Recipient = %q", got)
	}

	null := &spool.Message{ID: "01JDAMAGED0000000000000001", Recipients: []spool.Recipient{{Addr: "bob@example.net"}}}
	if dm, err := h.s.BounceDamaged(null); dm != nil || err != nil {
		t.Errorf("null sender: DSN %v, err %v; want none", dm, err)
	}
}
