package scheduler

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
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

// quarantineWithoutRecipients spools m with body in a fresh spool in dir,
// deletes its recipient records under the spool (as a damaged block
// would lose them) and reopens it, so that Recover moves m to quarantine
// with its envelope and body readable and no recipient: what a salvage
// leaves of a message whose recipient records were in the damaged block.
func quarantineWithoutRecipients(t *testing.T, dir string, m *spool.Message, body string) *spool.Spool {
	t.Helper()
	opts := spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20}
	sp, err := spool.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Put(m, []byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open(filepath.Join(dir, "db"), &pebble.Options{FormatMajorVersion: pebble.FormatNewest})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteRange([]byte("r/"+m.ID+"/"), []byte("r/"+m.ID+"0"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	sp, err = spool.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sp.Recover(func(*spool.Message) error { return nil })
	if err != nil || st.Quarantined != 1 {
		t.Fatalf("recover: %+v, %v; want the message quarantined", st, err)
	}
	return sp
}

// TestNoticeDamaged: a damaged message whose envelope reads but none of
// whose recipients does gets a damage notice, delivered over SMTP to a
// loopback sink from the null sender: multipart/mixed (no delivery-status
// part: there is no recipient to report on), Auto-Submitted, naming the
// queue id, Message-ID, arrival and size, and quoting the original header
// block read back from the quarantined body. Without a readable body it
// goes without the headers; a null sender, or a pending recipient that
// asked for no DSN, gets nothing.
func TestNoticeDamaged(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(67, 10)}, nil)
	received := time.Date(2026, 11, 30, 8, 15, 0, 0, time.UTC)
	m := &spool.Message{Sender: "alice@origin.test", MessageID: "<orig.1@origin.test>", Received: received, EnvID: "env-7",
		Recipients: []spool.Recipient{{Addr: "bob@dest.test"}, {Addr: "carol@dest.test"}}}
	const headers = "From: alice@origin.test\r\nSubject: quarterly figures\r\nMessage-ID: <orig.1@origin.test>\r\n"
	sp := quarantineWithoutRecipients(t, t.TempDir(), m, headers+"\r\nthe body\r\n")
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	h := newHarness(t, port, func(o *Options) { o.Spool = sp })
	h.mxFor("origin.test", ip(67, 10))
	// As spool.SalvageOwed returns it: the envelope, no recipient read.
	owed := *m
	owed.Recipients = nil
	dm, err := h.s.BounceDamaged(&owed)
	if err != nil || dm == nil {
		t.Fatalf("BounceDamaged: %v, %v", dm, err)
	}
	if e := h.next("dsn"); e.str("dsn_for") != m.ID || e.str("queue_id") != dm.ID {
		t.Errorf("dsn record %v, want the notice for %s", e.fields, m.ID)
	}
	got := sinks[0].WaitMessages(t, 1)[0]
	if got.From != "" || len(got.To) != 1 || got.To[0] != m.Sender {
		t.Fatalf("notice sent MAIL FROM:<%s> to %v; want the null sender to %s", got.From, got.To, m.Sender)
	}
	n := parseNotice(t, got.Data)
	for k, want := range map[string]string{"From": "Mail Delivery System <MAILER-DAEMON@mta.test>", "To": "<alice@origin.test>",
		"Subject": "Undelivered Mail: damaged in the spool", "Auto-Submitted": "auto-replied"} {
		if v := n.header.Get(k); v != want {
			t.Errorf("%s: %q, want %q", k, v, want)
		}
	}
	if len(n.parts) != 2 || n.parts[0].typ != "text/plain" || n.parts[1].typ != "text/rfc822-headers" {
		t.Fatalf("parts %v, want text/plain and text/rfc822-headers", n.types())
	}
	for _, want := range []string{m.ID, "<orig.1@origin.test>", "env-7", received.Format(time.RFC1123Z), "Size: " + strconv.FormatInt(m.Size, 10) + " bytes",
		"damaged in this mail system's storage", "send the message again"} {
		if !strings.Contains(unwrap(n.parts[0].body), want) {
			t.Errorf("text part lacks %q:\n%s", want, n.parts[0].body)
		}
	}
	if n.parts[1].body+"\r\n" != headers {
		t.Errorf("headers part %q, want %q", n.parts[1].body, headers)
	}

	// A message with nothing in quarantine: no body to quote.
	lost := &spool.Message{ID: "01JNOTICE00000000000000000", Sender: "dave@origin.test", Received: received, Size: 99}
	if dm, err := h.s.BounceDamaged(lost); err != nil || dm == nil {
		t.Fatalf("BounceDamaged without a body: %v, %v", dm, err)
	}
	n = parseNotice(t, sinks[0].WaitMessages(t, 2)[1].Data)
	if len(n.parts) != 1 || n.parts[0].typ != "text/plain" || !strings.Contains(n.parts[0].body, lost.ID) {
		t.Errorf("notice without a body: parts %v", n.types())
	}

	for _, none := range []*spool.Message{
		{ID: "01JNOTICE00000000000000001"},
		{ID: "01JNOTICE00000000000000002", Sender: "erin@origin.test", Recipients: []spool.Recipient{{Addr: "x@dest.test", Notify: spool.NotifyNever}}},
	} {
		if dm, err := h.s.BounceDamaged(none); dm != nil || err != nil {
			t.Errorf("%s: notice %v, err %v; want none", none.ID, dm, err)
		}
	}
}

type notice struct {
	header mail.Header
	parts  []noticePart
}

type noticePart struct{ typ, body string }

func (n notice) types() []string {
	var out []string
	for _, p := range n.parts {
		out = append(out, p.typ)
	}
	return out
}

// parseNotice reads a damage notice as a mail reader would, checking
// line lengths and that it is multipart/mixed.
func parseNotice(t *testing.T, raw []byte) notice {
	t.Helper()
	for i, l := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSuffix(l, []byte("\r"))) > maxLineOctets {
			t.Fatalf("line %d is %d octets", i+1, len(l))
		}
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q (%v), want multipart/mixed", msg.Header.Get("Content-Type"), err)
	}
	n := notice{header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		typ, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		n.parts = append(n.parts, noticePart{typ, strings.TrimSuffix(string(b), "\r\n")})
	}
}

// unwrap joins wrapped lines, so a phrase split over two is found.
func unwrap(s string) string { return strings.Join(strings.Fields(s), " ") }

// FuzzDamageNotice: whatever the envelope and the original headers hold,
// the notice parses as multipart/mixed with lines within 998 octets, one
// text/plain part and at most one text/rfc822-headers part, ASCII but for
// a non-ASCII sender's address, and no header field beyond its own (no
// outside text injects one).
func FuzzDamageNotice(f *testing.F) {
	f.Add("alice@origin.test", "<a.1@origin.test>", "env-1", "Subject: hi\r\nFrom: a@b\r\n\r\nbody")
	f.Add("ü@例え.jp", "<x\r\nBcc: evil@x>", "e\r\nX: y", "Subject: =?utf-8?q?x?=\r\nX-Ü: ü\r\n\r\n")
	f.Add("a@b\r\nBcc: c@d", "", "", "no blank line")
	f.Fuzz(func(t *testing.T, sender, msgID, envID, head string) {
		if clean(sender) == "" {
			return // BounceDamaged sends nothing to the null sender
		}
		n := &damageNotice{ReportingMTA: "mta.example", QueueID: "01JFUZZ", Sender: sender, MessageID: msgID, EnvID: envID,
			Arrival: time.Unix(1e9, 0).UTC(), Size: 1234, Now: time.Unix(2e9, 0).UTC(), Headers: headerBlock([]byte(head))}
		var b bytes.Buffer
		if err := n.write(&b); err != nil {
			t.Fatal(err)
		}
		raw := b.Bytes()
		p := parseNotice(t, raw)
		if !n.global() && !isASCII(raw) {
			t.Fatalf("an ASCII sender's notice has 8-bit octets:\n%q", raw)
		}
		allowed := map[string]bool{"From": true, "To": true, "Subject": true, "Date": true, "Message-Id": true,
			"Auto-Submitted": true, "X-Mtad-Queue-Id": true, "Mime-Version": true, "Content-Type": true}
		for k := range p.header {
			if !allowed[k] {
				t.Fatalf("header field %q in the notice:\n%q", k, raw)
			}
		}
		if p.header.Get("Subject") != noticeSubject {
			t.Fatalf("Subject %q", p.header.Get("Subject"))
		}
		if len(p.parts) == 0 || len(p.parts) > 2 || p.parts[0].typ != "text/plain" ||
			len(p.parts) == 2 && p.parts[1].typ != "text/rfc822-headers" {
			t.Fatalf("parts %v", p.types())
		}
		if !strings.Contains(p.parts[0].body, "01JFUZZ") {
			t.Fatalf("text part lacks the queue id:\n%s", p.parts[0].body)
		}
	})
}

// TestDamagedDSNReportsOwedBounce: a damaged message kept for the DSN of a
// recipient that had bounced gets that DSN (with the recipient's own
// reply), not silence: its sender was told 250.
func TestDamagedDSNReportsOwedBounce(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	m := &spool.Message{ID: "01DAMAGED", Sender: "a@origin.test", Received: now.Add(-time.Minute), Recipients: []spool.Recipient{
		{Addr: "x@dest.test", State: spool.Bounced, LastCode: 550, LastEnh: "5.1.1", LastText: "no such user", UpdatedAt: now},
		{Addr: "y@dest.test", State: spool.Delivered},
	}}
	d := damagedDSN(m, "mta.test", now)
	if d == nil || len(d.Rcpts) != 1 {
		t.Fatalf("DSN %+v, want one report for the bounced recipient", d)
	}
	if r := d.Rcpts[0]; r.Addr != "x@dest.test" || r.Enhanced != "5.1.1" || r.Code != 550 || r.Action != actFailed {
		t.Fatalf("report %+v, want x@dest.test failed 550 5.1.1", r)
	}
	m.Recipients[0].State = spool.Delivered
	if d := damagedDSN(m, "mta.test", now); d != nil {
		t.Fatalf("every recipient delivered: DSN %+v, want none", d)
	}
}
