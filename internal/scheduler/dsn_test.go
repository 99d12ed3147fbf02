package scheduler

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

// parsedDSN is a DSN read back with the standard library only.
type parsedDSN struct {
	Header       mail.Header
	Human        string
	HumanType    string                 // the text part's Content-Type, as written
	ReportType   string                 // message/delivery-status or message/global-delivery-status
	Report       textproto.MIMEHeader   // per-message fields
	Recipients   []textproto.MIMEHeader // per-recipient fields
	ReturnedType string                 // text/rfc822-headers, message/rfc822, message/global(-headers)
	Returned     []byte                 // the third part's content, decoded
	Headers      string                 // Returned, for a headers part
}

// parseDSN parses an RFC 3464 (or RFC 6533) report, failing on anything
// malformed: a line over 998 octets, a part labelled us-ascii that is not,
// a missing part.
func parseDSN(raw []byte) (*parsedDSN, error) {
	for i, l := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSuffix(l, []byte("\r"))) > maxLineOctets {
			return nil, fmt.Errorf("line %d is %d octets", i+1, len(l))
		}
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read message: %w", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("content-type: %w", err)
	}
	if mt != "multipart/report" || params["report-type"] != "delivery-status" {
		return nil, fmt.Errorf("content-type %s %v", mt, params)
	}
	out := &parsedDSN{Header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != 3 {
				return nil, fmt.Errorf("%d parts, want 3", i)
			}
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("part %d: %w", i, err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			return nil, fmt.Errorf("part %d body: %w", i, err)
		}
		ct, cparams, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if strings.EqualFold(cparams["charset"], "us-ascii") && !isASCII(body) {
			return nil, fmt.Errorf("part %d is labelled us-ascii and carries 8-bit text", i)
		}
		switch i {
		case 0:
			if ct != "text/plain" {
				return nil, fmt.Errorf("part 0 is %s", ct)
			}
			if !utf8.Valid(body) {
				return nil, fmt.Errorf("part 0 is not UTF-8")
			}
			out.Human, out.HumanType = string(body), p.Header.Get("Content-Type")
		case 1:
			if ct != "message/delivery-status" && ct != "message/global-delivery-status" {
				return nil, fmt.Errorf("part 1 is %s", ct)
			}
			if ct == "message/delivery-status" && !isASCII(body) {
				return nil, fmt.Errorf("message/delivery-status carries 8-bit text")
			}
			out.ReportType = ct
			r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			out.Report, err = r.ReadMIMEHeader()
			if err != nil {
				return nil, fmt.Errorf("per-message fields: %w", err)
			}
			for {
				h, err := r.ReadMIMEHeader()
				if len(h) > 0 {
					out.Recipients = append(out.Recipients, h)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("per-recipient fields: %w", err)
				}
			}
		case 2:
			switch ct {
			case "text/rfc822-headers", "message/global-headers":
				out.Headers = string(body)
			case "message/rfc822", "message/global":
			default:
				return nil, fmt.Errorf("part 2 is %s", ct)
			}
			// A returned message/global may carry other 8-bit
			// charsets in its body; its headers are UTF-8.
			if ct == "message/global-headers" {
				if !utf8.Valid(body) {
					return nil, fmt.Errorf("%s is not UTF-8", ct)
				}
			}
			out.ReturnedType, out.Returned = ct, body
		}
	}
}

func TestDSNBuild(t *testing.T) {
	t.Parallel()
	arr := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	d := &dsn{
		ReportingMTA: "mta.example",
		QueueID:      "01JQUEUEID",
		Sender:       "alice@example.org",
		Arrival:      arr,
		Now:          arr.Add(time.Hour),
		Rcpts: []report{
			{Addr: "bob@example.net", Code: 550, Enhanced: "5.1.1", Text: "no such user\r\nX-Injected: yes", MX: "mx1.example.net", At: arr.Add(time.Minute)},
			{Addr: "carol@example.com", Expired: true, Code: 451, Enhanced: "4.7.1", Text: "try later"},
			{Addr: "dave@nx.example", Enhanced: "5.1.2", Text: "domain does not exist"},
		},
		Headers: headerBlock([]byte("Subject: hello\nFrom: alice@example.org\n\nbody\n")),
	}
	p, err := parseDSN(d.build())
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Header.Get("To"); got != "<alice@example.org>" {
		t.Errorf("To = %q", got)
	}
	if got := p.Report.Get("Reporting-MTA"); got != "dns; mta.example" {
		t.Errorf("Reporting-MTA = %q", got)
	}
	if got := p.Report.Get("Arrival-Date"); got != arr.Format(time.RFC1123Z) {
		t.Errorf("Arrival-Date = %q", got)
	}
	if len(p.Recipients) != 3 {
		t.Fatalf("%d recipients, want 3: %v", len(p.Recipients), p.Recipients)
	}
	want := []map[string]string{
		{"Final-Recipient": "rfc822; bob@example.net", "Action": "failed", "Status": "5.1.1",
			"Remote-Mta": "dns; mx1.example.net", "Diagnostic-Code": "smtp; 550 5.1.1 no such user X-Injected: yes"},
		{"Final-Recipient": "rfc822; carol@example.com", "Action": "failed", "Status": "4.7.1",
			"Diagnostic-Code": "smtp; 451 4.7.1 try later"},
		{"Final-Recipient": "rfc822; dave@nx.example", "Action": "failed", "Status": "5.1.2",
			"Diagnostic-Code": "X-mtad; domain does not exist"},
	}
	for i, w := range want {
		for k, v := range w {
			if got := p.Recipients[i].Get(k); got != v {
				t.Errorf("recipient %d %s = %q, want %q", i, k, got, v)
			}
		}
		if got := p.Recipients[i].Get("Will-Retry-Until"); got != "" {
			t.Errorf("recipient %d: Action failed with Will-Retry-Until %q", i, got)
		}
	}
	if p.Header.Get("X-Injected") != "" || p.Recipients[0].Get("X-Injected") != "" {
		t.Error("reply text injected a header field")
	}
	if p.Headers != "Subject: hello\r\nFrom: alice@example.org\r\n" {
		t.Errorf("headers part = %q", p.Headers)
	}
	if !strings.Contains(p.Human, "<bob@example.net>") {
		t.Errorf("human part does not name bob: %q", p.Human)
	}
}

// TestDSNBuildCases: each kind of report, RET, ENVID/ORCPT and UTF-8
// combination gives the types and fields RFC 3461/3464/6533 ask for.
func TestDSNBuildCases(t *testing.T) {
	t.Parallel()
	arr := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	orig := "From: alice@example.org\r\nSubject: the subject\r\n\r\nthe body line\r\n"
	tests := []struct {
		name     string
		d        dsn
		subject  string
		report   string            // the delivery-status part's type
		returned string            // the third part's type
		fields   map[string]string // per-recipient fields of the first recipient ("" = absent)
		perMsg   map[string]string
		body     string // the returned part, when it is the whole message
		human    string // a phrase of the human-readable part
		global   bool
		eight    bool
	}{
		{
			name: "failed hdrs envid orcpt",
			d: dsn{Sender: "alice@example.org", EnvID: "env-42", Rcpts: []report{{Addr: "bob@example.net",
				ORcpt: "rfc822;Bob@Example.NET", Code: 550, Enhanced: "5.1.1", Text: "no such user"}}},
			subject: "Undelivered Mail Returned to Sender", report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Action": "failed", "Status": "5.1.1", "Original-Recipient": "rfc822; Bob@Example.NET",
				"Final-Recipient": "rfc822; bob@example.net", "Will-Retry-Until": ""},
			perMsg: map[string]string{"Original-Envelope-Id": "env-42"},
			human:  "could not be delivered",
		},
		{
			name: "expired has no retry date",
			d: dsn{Sender: "alice@example.org", RetryUntil: arr.Add(time.Hour), Rcpts: []report{{Addr: "bob@example.net",
				Expired: true, Code: 452, Enhanced: "4.2.2", Text: "mailbox full"}}},
			subject: "Undelivered Mail Returned to Sender", report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Action": "failed", "Status": "4.2.2", "Will-Retry-Until": "", "Original-Recipient": ""},
			perMsg: map[string]string{"Original-Envelope-Id": ""},
		},
		{
			name: "delayed",
			d: dsn{Sender: "alice@example.org", RetryUntil: arr.Add(120 * time.Hour), Rcpts: []report{{Addr: "bob@example.net",
				Action: actDelayed, Code: 451, Enhanced: "4.7.1", Text: "greylisted"}}},
			subject: "Delayed Mail (still being retried)", report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Action": "delayed", "Status": "4.7.1",
				"Will-Retry-Until": arr.Add(120 * time.Hour).Format(time.RFC1123Z)},
			human: "keeps trying",
		},
		{
			name: "relayed",
			d: dsn{Sender: "alice@example.org", Rcpts: []report{{Addr: "bob@example.net", Action: actRelayed,
				Code: 250, Text: "ok queued as 123", MX: "mx.example.net"}}},
			subject: "Successful Mail Delivery Report", report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Action": "relayed", "Status": "2.0.0", "Remote-Mta": "dns; mx.example.net",
				"Will-Retry-Until": "", "Diagnostic-Code": "smtp; 250 ok queued as 123"},
			human: "does not send delivery notifications",
		},
		{
			name: "ret full",
			d: dsn{Sender: "alice@example.org", Full: strings.NewReader(orig), Rcpts: []report{{Addr: "bob@example.net",
				Code: 550, Enhanced: "5.7.1", Text: "refused"}}},
			subject: "Undelivered Mail Returned to Sender", report: "message/delivery-status", returned: "message/rfc822",
			fields: map[string]string{"Status": "5.7.1"},
			body:   orig,
		},
		{
			name: "ret full bare LF normalised",
			d: dsn{Sender: "alice@example.org", Full: strings.NewReader("Subject: x\n\nline"), Rcpts: []report{{Addr: "bob@example.net",
				Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "message/rfc822",
			fields: map[string]string{"Status": "5.0.0"},
			body:   "Subject: x\r\n\r\nline\r\n",
		},
		{
			name: "ret full with a long line returns headers",
			d: dsn{Sender: "alice@example.org", Full: strings.NewReader("Subject: long\r\n\r\n" + strings.Repeat("x", 2100) + "\r\n"),
				Headers: []byte("Subject: long\r\n"), Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			human: "could not be returned whole",
		},
		{
			name: "ret full 8-bit undeclared returns headers",
			d: dsn{Sender: "alice@example.org", Full: strings.NewReader("Subject: x\r\n\r\nd\xe9j\xe0\r\n"),
				Headers: []byte("Subject: x\r\n"), Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			human: "8-bit octet",
		},
		{
			name: "ret full 8bitmime",
			d: dsn{Sender: "alice@example.org", Full: strings.NewReader("Subject: x\r\n\r\nd\xe9j\xe0\r\n"), FullEightBit: true,
				Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "message/rfc822",
			body:  "Subject: x\r\n\r\nd\xe9j\xe0\r\n",
			eight: true,
		},
		{
			// To an ASCII sender the DSN stays ASCII, so that it reaches a
			// server without SMTPUTF8: the address as utf-8-addr-xtext
			// (RFC 6533 3), the human part in UTF-8 quoted-printable.
			name: "utf-8 recipient, ascii sender",
			d: dsn{Sender: "alice@example.org", SMTPUTF8: true, Headers: []byte("Subject: f\u00fcr dich\r\n"),
				Rcpts: []report{{Addr: "jösé@bücher.example", Code: 550, Enhanced: "5.1.1", Text: "unknown user jösé"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Final-Recipient": `utf-8; j\x{F6}s\x{E9}@b\x{FC}cher.example`,
				"Diagnostic-Code": "smtp; 550 5.1.1 unknown user j?s?"},
			human: "jösé@bücher.example",
		},
		{
			name: "utf-8 orcpt, ascii sender",
			d: dsn{Sender: "alice@example.org", Rcpts: []report{{Addr: "bob@example.net", ORcpt: "utf-8;bøb@example.net",
				Code: 550, Text: "unknown"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Original-Recipient": `utf-8; b\x{F8}b@example.net`, "Final-Recipient": "rfc822; bob@example.net"},
		},
		{
			name: "utf-8 recipient, utf-8 sender is global",
			d: dsn{Sender: "ålice@example.org", Rcpts: []report{{Addr: "jösé@bücher.example", Code: 550, Enhanced: "5.1.1",
				Text: "unknown user jösé"}}},
			report: "message/global-delivery-status", returned: "message/global-headers",
			fields: map[string]string{"Final-Recipient": "utf-8; jösé@bücher.example",
				"Diagnostic-Code": "smtp; 550 5.1.1 unknown user jösé"},
			human: "jösé@bücher.example", global: true,
		},
		{
			name: "smtputf8 message to an ascii sender returns ascii headers",
			d: dsn{Sender: "alice@example.org", SMTPUTF8: true, Full: strings.NewReader("Subject: café\r\n\r\nbody\r\n"),
				Headers: []byte("Subject: café\r\n"), Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			human: "internationalised",
		},
		{
			name: "smtputf8 message returned as message/global",
			d: dsn{Sender: "ålice@example.org", SMTPUTF8: true, Full: strings.NewReader("Subject: café\r\n\r\nbody\r\n"),
				Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/global-delivery-status", returned: "message/global",
			body: "Subject: café\r\n\r\nbody\r\n", global: true, eight: true,
		},
		{
			name: "ascii report with utf-8 reply text stays ascii",
			d: dsn{Sender: "alice@example.org", Rcpts: []report{{Addr: "bob@example.net", Code: 550, Enhanced: "5.1.1",
				Text: "Benutzer unbekannt: Müller"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
			fields: map[string]string{"Diagnostic-Code": "smtp; 550 5.1.1 Benutzer unbekannt: M?ller"},
		},
		{
			name: "8-bit original headers in an ascii report",
			d: dsn{Sender: "alice@example.org", Headers: []byte("Subject: caf\xc3\xa9\r\n"),
				Rcpts: []report{{Addr: "bob@example.net", Code: 550, Text: "refused"}}},
			report: "message/delivery-status", returned: "text/rfc822-headers",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := tc.d
			d.ReportingMTA, d.QueueID, d.Arrival, d.Now = "mta.example", "01JQ", arr, arr.Add(time.Hour)
			if d.Headers == nil && d.Full == nil {
				d.Headers = headerBlock([]byte(orig))
			}
			if g := d.global(); g != tc.global {
				t.Errorf("global = %v, want %v", g, tc.global)
			}
			raw := d.build()
			if e := d.eightBit(); e != tc.eight {
				t.Errorf("eightBit = %v, want %v", e, tc.eight)
			}
			p, err := parseDSN(raw)
			if err != nil {
				t.Fatalf("%v\n%s", err, raw)
			}
			if tc.subject != "" && p.Header.Get("Subject") != tc.subject {
				t.Errorf("Subject %q, want %q", p.Header.Get("Subject"), tc.subject)
			}
			if p.ReportType != tc.report || p.ReturnedType != tc.returned {
				t.Errorf("types %s, %s; want %s, %s", p.ReportType, p.ReturnedType, tc.report, tc.returned)
			}
			if len(p.Recipients) != len(d.Rcpts) {
				t.Fatalf("%d recipient blocks, want %d", len(p.Recipients), len(d.Rcpts))
			}
			for k, v := range tc.fields {
				if got := p.Recipients[0].Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			for k, v := range tc.perMsg {
				if got := p.Report.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if tc.body != "" && string(p.Returned) != tc.body {
				t.Errorf("returned %q, want %q", p.Returned, tc.body)
			}
			if tc.human != "" && !strings.Contains(strings.Join(strings.Fields(p.Human), " "), tc.human) {
				t.Errorf("human part lacks %q: %q", tc.human, p.Human)
			}
			if strings.Contains(p.Human, "\u00e9") || !isASCIIString(p.Human) {
				if !strings.Contains(p.HumanType, "utf-8") {
					t.Errorf("human part with UTF-8 text labelled %q", p.HumanType)
				}
			}
		})
	}
}

// TestDSNFoldsLongReplies: a 29 KB one-line reply and a 2,000-octet
// address make no line over 998 octets; the reply is capped.
func TestDSNFoldsLongReplies(t *testing.T) {
	t.Parallel()
	words := strings.Repeat("word ", 29<<10/5)
	d := &dsn{ReportingMTA: "mta.example", QueueID: "Q", Sender: "a@example.org", Now: time.Unix(1e9, 0),
		Rcpts: []report{
			{Addr: "b@example.net", Code: 550, Enhanced: "5.7.1", Text: words},
			{Addr: "c@example.net", Code: 550, Text: strings.Repeat("x", 29<<10)},
			{Addr: strings.Repeat("y", 2000) + "@example.net", Code: 550, Text: "no"},
		},
		Headers: []byte("X-Long: " + strings.Repeat("z", 3000) + "\r\n")}
	raw := d.build()
	p, err := parseDSN(raw)
	if err != nil {
		t.Fatal(err)
	}
	diag := p.Recipients[0].Get("Diagnostic-Code") // textproto unfolds
	if !strings.HasPrefix(diag, "smtp; 550 5.7.1 word word") || len(diag) > 600 {
		t.Errorf("folded diagnostic: %d octets, %.60q...", len(diag), diag)
	}
	if n := bytes.Count(raw, []byte("\r\n")); n < 8 {
		t.Errorf("only %d lines", n)
	}
	if got := strings.ReplaceAll(p.Headers, "\r\n ", ""); got != "X-Long: "+strings.Repeat("z", 3000)+"\r\n" {
		t.Errorf("long original header not folded losslessly: %.80q", got)
	}
}

// TestDSNStreamsFullMessage: a RET=FULL DSN of a 3 MiB message is written
// in small writes (never the message in one buffer) and returns it intact.
func TestDSNStreamsFullMessage(t *testing.T) {
	t.Parallel()
	orig := bigMessage(3 << 20)
	var w maxWriter
	d := &dsn{ReportingMTA: "mta.example", QueueID: "Q", Sender: "a@example.org", Now: time.Unix(1e9, 0),
		Rcpts: []report{{Addr: "b@example.net", Code: 550, Text: "no"}}, Full: bytes.NewReader(orig)}
	if err := d.write(&w); err != nil {
		t.Fatal(err)
	}
	if w.max > 64<<10 {
		t.Errorf("largest write %d octets: the DSN was not streamed", w.max)
	}
	p, err := parseDSN(w.buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if p.ReturnedType != "message/rfc822" || sha256.Sum256(p.Returned) != sha256.Sum256(orig) {
		t.Errorf("returned %s of %d octets, want the %d-octet original", p.ReturnedType, len(p.Returned), len(orig))
	}
}

type maxWriter struct {
	buf bytes.Buffer
	max int
}

func (w *maxWriter) Write(p []byte) (int, error) {
	w.max = max(w.max, len(p))
	return w.buf.Write(p)
}

// bigMessage is a CRLF message of about size octets with varied lines.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: alice@origin.test\r\nSubject: big\r\n\r\n")
	r := rand.New(rand.NewPCG(1, 2))
	for b.Len() < size {
		n := r.IntN(900)
		for range n {
			b.WriteByte(byte('a' + r.IntN(26)))
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func TestDSNAction(t *testing.T) {
	t.Parallel()
	const (
		never   = spool.NotifyNever
		success = spool.NotifySuccess
		fail    = spool.NotifyFailure
		delay   = spool.NotifyDelay
	)
	tests := []struct {
		v        verdict
		n        spool.Notify
		passedOn bool
		delayDue bool
		want     action
		ok       bool
	}{
		{vBounced, 0, false, false, actFailed, true},
		{vExpired, 0, false, false, actFailed, true},
		{vBounced, fail, false, false, actFailed, true},
		{vBounced, never, false, false, 0, false},
		{vBounced, success | delay, false, false, 0, false},
		{vExpired, delay, false, true, 0, false},
		{vDelivered, 0, false, false, 0, false},
		{vDelivered, fail, false, false, 0, false},
		{vDelivered, success, false, false, actRelayed, true},
		{vDelivered, success | fail, true, false, 0, false}, // passed on: the receiver reports
		{vDelivered, never, false, false, 0, false},
		{vDeferred, 0, false, true, 0, false}, // DELAY only when asked explicitly
		{vDeferred, fail, false, true, 0, false},
		{vDeferred, delay, false, false, 0, false},
		{vDeferred, delay | fail, false, true, actDelayed, true},
		{vDeferred, delay, true, true, actDelayed, true}, // we are the one delaying it
		{vDeferred, never, false, true, 0, false},
	}
	for _, tc := range tests {
		a, ok := dsnAction(tc.v, tc.n, tc.passedOn, tc.delayDue)
		if ok != tc.ok || (ok && a != tc.want) {
			t.Errorf("dsnAction(%v, %04b, %v, %v) = %v %v, want %v %v", tc.v, tc.n, tc.passedOn, tc.delayDue, a, ok, tc.want, tc.ok)
		}
	}
}

func TestFailureStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		f    report
		want string
	}{
		{report{Code: 550, Enhanced: "5.7.1"}, "5.7.1"},
		{report{Code: 550}, "5.0.0"},
		{report{Code: 550, Enhanced: "junk"}, "5.0.0"},
		{report{Expired: true}, "4.4.7"},
		{report{Expired: true, Code: 421}, "4.4.7"},
		{report{Code: 452}, "4.0.0"},
		{report{}, "5.0.0"},
		{report{Action: actDelayed, Code: 451, Enhanced: "4.7.1"}, "4.7.1"},
		{report{Action: actDelayed, Code: 421}, "4.0.0"},
		{report{Action: actDelayed, Enhanced: "5.1.1"}, "4.0.0"},
		{report{Action: actRelayed, Code: 250, Enhanced: "2.6.0"}, "2.6.0"},
		{report{Action: actRelayed, Code: 250}, "2.0.0"},
	}
	for _, tc := range tests {
		if got := tc.f.status(); got != tc.want {
			t.Errorf("%+v: status %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestHeaderBlock(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody", "A: 1\r\nB: 2\r\n"},
		{"A: 1\nB: 2\n\nbody\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\r\n folded\r\n\r\n", "A: 1\r\n folded\r\n"},
		{"A: 1", "A: 1\r\n"},
		{"\r\nbody", ""},
		{"", ""},
		{"A: " + strings.Repeat("b", 1000) + "\r\n\r\n", "A: " + strings.Repeat("b", 995) + "\r\n " + strings.Repeat("b", 5) + "\r\n"},
	}
	for _, tc := range tests {
		if got := string(headerBlock([]byte(tc.in))); got != tc.want {
			t.Errorf("headerBlock(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	big := strings.Repeat("X-Long: "+strings.Repeat("a", 990)+"\r\n", 200)
	if got := headerBlock([]byte(big)); len(got) > maxDSNHeaders || !bytes.HasSuffix(got, []byte("\r\n")) {
		t.Errorf("big header block: %d bytes, ends %q", len(got), got[len(got)-2:])
	}
}

// FuzzDSN builds a DSN from outside text (addresses, reply text, ORCPT,
// ENVID, the original message) and checks that it always parses back as a
// well-formed report with no line over 998 octets, never a part labelled
// us-ascii that is not, and no Will-Retry-Until on a failed recipient.
func FuzzDSN(f *testing.F) {
	f.Add("bob@example.net", "no such user", "Subject: hi\r\n\r\nbody", 550, "5.1.1", "", "", uint8(0))
	f.Add("ü@例え.jp", "bad\r\n\r\n--x--", "no blank line", 0, "", "utf-8;ü@例え.jp", "env", uint8(1))
	f.Add("", "\x00\x7f", "\n\n", 421, "4.4.2", ";", "\r\n", uint8(2))
	f.Fuzz(func(t *testing.T, addr, text, msg string, code int, enh, orcpt, envid string, kind uint8) {
		d := &dsn{
			ReportingMTA: "mta.example", QueueID: "Q1", Sender: "a@example.org", EnvID: envid,
			Now: time.Unix(1e9, 0).UTC(), RetryUntil: time.Unix(2e9, 0).UTC(),
			Rcpts: []report{{Addr: addr, ORcpt: orcpt, Action: action(kind % 3), Code: code % 1000,
				Enhanced: enh, Text: text}},
			Headers: headerBlock([]byte(msg)),
		}
		if kind&4 != 0 {
			d.Full, d.FullEightBit = strings.NewReader(msg), kind&8 != 0
		}
		raw := d.build()
		p, err := parseDSN(raw)
		if err != nil {
			t.Fatalf("DSN does not parse: %v\n%q", err, raw)
		}
		if len(p.Recipients) != 1 {
			t.Fatalf("%d recipient blocks", len(p.Recipients))
		}
		r := p.Recipients[0]
		if got, want := r.Get("Action"), action(kind%3).String(); got != want {
			t.Fatalf("Action = %q, want %q", got, want)
		}
		if !validStatus(r.Get("Status")) {
			t.Fatalf("Status = %q", r.Get("Status"))
		}
		if (r.Get("Will-Retry-Until") != "") != (action(kind%3) == actDelayed) {
			t.Fatalf("Action %s with Will-Retry-Until %q", r.Get("Action"), r.Get("Will-Retry-Until"))
		}
		if d.global() != (p.ReportType == "message/global-delivery-status") {
			t.Fatalf("global %v but report type %s", d.global(), p.ReportType)
		}
	})
}

// restart closes the scheduler and the spool, opens the spool again and
// recovers its messages into a new scheduler, as a restarted daemon does.
func (h *harness) restart() {
	h.t.Helper()
	h.close()
	if err := h.sp.Close(); err != nil {
		h.t.Fatal(err)
	}
	sp, err := spool.Open(h.dir, spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		h.t.Fatal(err)
	}
	h.sp, h.q = sp, queue.New()
	opts := h.opts
	opts.Spool, opts.Queues = sp, h.q
	s, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.s, h.closed = s, false
	if _, err := sp.Recover(s.Submit); err != nil {
		h.t.Fatal(err)
	}
}

// injectMsg spools m (Received set to now) with body and submits it.
func (h *harness) injectMsg(m *spool.Message, body string) *spool.Message {
	h.t.Helper()
	m.Received = h.clock.Now()
	if err := h.sp.Put(m, []byte(body)); err != nil {
		h.t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil {
		h.t.Fatal(err)
	}
	return m
}

// refuseNobody makes sink 0 refuse nobody@ with 550 5.1.1 and accept the rest.
func refuseNobody(i int) loopbacktest.Config {
	if i != 0 {
		return loopbacktest.Config{}
	}
	return loopbacktest.Config{Rcpt: func(to string) error {
		if strings.HasPrefix(to, "nobody@") {
			return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user here")
		}
		return nil
	}}
}

// TestNotifyNeverNoBounce: a bounce of a NOTIFY=NEVER recipient makes no
// DSN (none is spooled before its bounced record); the same bounce
// without NOTIFY makes one.
func TestNotifyNeverNoBounce(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(40, 10), ip(40, 11)}, refuseNobody)
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(40, 10))
	h.mxFor("origin.test", ip(40, 11))
	m1 := h.injectMsg(&spool.Message{Sender: "alice@origin.test",
		Recipients: []spool.Recipient{{Addr: "nobody@dest.test", Notify: spool.NotifyNever}}}, "Subject: one\r\n\r\nx\r\n")
	if e := h.next("dsn", "bounced"); e.name != "bounced" || e.str("queue_id") != m1.ID {
		t.Fatalf("NOTIFY=NEVER: %s %v before its bounce", e.name, e.fields)
	}
	h.gone(m1.ID)
	m2 := h.injectMsg(&spool.Message{Sender: "alice@origin.test",
		Recipients: []spool.Recipient{{Addr: "nobody@dest.test"}}}, "Subject: two\r\n\r\nx\r\n")
	if e := h.next("dsn", "bounced"); e.name != "dsn" || e.str("dsn_for") != m2.ID {
		t.Fatalf("no NOTIFY: %s %v, want a DSN first", e.name, e.fields)
	}
	msgs := sinks[1].WaitMessages(t, 1)
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Headers, "Subject: two") {
		t.Errorf("the DSN is not about the second message: %q", p.Headers)
	}
}

// TestRetHdrsEnvIDOrcpt: a RET=HDRS bounce returns the headers only, and
// carries the ENVID and the ORCPT.
func TestRetHdrsEnvIDOrcpt(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(41, 10), ip(41, 11)}, refuseNobody)
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(41, 10))
	h.mxFor("origin.test", ip(41, 11))
	h.injectMsg(&spool.Message{Sender: "alice@origin.test", Ret: spool.RetHdrs, EnvID: "QQ314159",
		Recipients: []spool.Recipient{{Addr: "nobody@dest.test", Notify: spool.NotifyFailure, ORcpt: "rfc822;Nobody@Dest.Test"}}},
		"Subject: headers only\r\nFrom: alice@origin.test\r\n\r\nsecret body text\r\n")
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if p.ReturnedType != "text/rfc822-headers" || p.Headers != "Subject: headers only\r\nFrom: alice@origin.test\r\n" {
		t.Errorf("returned %s %q, want the headers only", p.ReturnedType, p.Returned)
	}
	if got := p.Report.Get("Original-Envelope-Id"); got != "QQ314159" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if got := p.Recipients[0].Get("Original-Recipient"); got != "rfc822; Nobody@Dest.Test" {
		t.Errorf("Original-Recipient = %q", got)
	}
}

// TestRetFullLargeStreams: a RET=FULL bounce of a 3 MiB message returns
// it whole: the DSN is stored in chunk records (bigger than one) and its
// message/rfc822 part is the original, octet for octet.
func TestRetFullLargeStreams(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(42, 10), ip(42, 11)}, refuseNobody)
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(42, 10))
	h.mxFor("origin.test", ip(42, 11))
	orig := bigMessage(3 << 20)
	m := h.injectMsg(&spool.Message{Sender: "alice@origin.test", Ret: spool.RetFull,
		Recipients: []spool.Recipient{{Addr: "nobody@dest.test"}}}, string(orig))
	e := h.next("dsn")
	if e.str("dsn_for") != m.ID || e.fields["size"].(int64) <= spool.ChunkSize {
		t.Fatalf("dsn record %v: want a chunked DSN body for %s", e.fields, m.ID)
	}
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if p.ReturnedType != "message/rfc822" || sha256.Sum256(p.Returned) != sha256.Sum256(orig) {
		t.Errorf("returned %s of %d octets, want the %d-octet original", p.ReturnedType, len(p.Returned), len(orig))
	}
}

// TestDelayDSNOnce: with NOTIFY=DELAY, the first deferral past
// delay_warning sends one "delayed" DSN; later deferrals, also after a
// restart, send none; the flag is in the spool.
func TestDelayDSNOnce(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(43, 10), ip(43, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(string) error { return loopbacktest.Reply(451, [3]int{4, 7, 1}, "greylisted") }}
	})
	h := newHarness(t, port, func(o *Options) { o.DelayWarning = 30 * time.Minute })
	h.mxFor("slow.test", ip(43, 10))
	h.mxFor("origin.test", ip(43, 11))
	m := h.injectMsg(&spool.Message{Sender: "alice@origin.test",
		Recipients: []spool.Recipient{{Addr: "s@slow.test", Notify: spool.NotifyDelay | spool.NotifyFailure}}}, "Subject: slow\r\n\r\nx\r\n")
	// deferral at age 0: before delay_warning, no DSN.
	if e := h.next("dsn", "deferred"); e.name != "deferred" {
		t.Fatalf("first attempt: %s %v", e.name, e.fields)
	}
	// The retry delay is at most MaxRetryInterval (1h): each step is one attempt.
	h.s.Tick(h.clock.Advance(61 * time.Minute))
	if e := h.next("dsn", "deferred"); e.name != "dsn" || e.str("dsn_for") != m.ID {
		t.Fatalf("deferral past delay_warning: %s %v, want a DSN", e.name, e.fields)
	}
	if e := h.next("deferred"); e.str("recipient") != "s@slow.test" {
		t.Fatalf("deferral %v", e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("delay DSN delivery: %s %v", e.name, e.fields)
	}
	got, err := h.sp.Get(m.ID)
	if err != nil || !got.Recipients[0].DelayNotified || got.Recipients[0].Notify != spool.NotifyDelay|spool.NotifyFailure {
		t.Fatalf("spooled recipient %+v, %v: want DelayNotified with its NOTIFY kept", got.Recipients, err)
	}
	h.s.Tick(h.clock.Advance(61 * time.Minute))
	if e := h.next("dsn", "deferred"); e.name != "deferred" {
		t.Fatalf("second deferral past delay_warning: %s %v, want no DSN", e.name, e.fields)
	}

	h.restart()
	h.s.Tick(h.clock.Advance(61 * time.Minute))
	if e := h.next("dsn", "deferred"); e.name != "deferred" || e.str("recipient") != "s@slow.test" {
		t.Fatalf("deferral after a restart: %s %v, want no DSN", e.name, e.fields)
	}
	msgs := sinks[1].Messages()
	if len(msgs) != 1 {
		t.Fatalf("origin got %d messages, want the one delay DSN", len(msgs))
	}
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Recipients[0]
	want := map[string]string{"Action": "delayed", "Status": "4.7.1", "Final-Recipient": "rfc822; s@slow.test",
		"Will-Retry-Until": m.Received.Add(24 * time.Hour).Format(time.RFC1123Z),
		"Diagnostic-Code":  "smtp; 451 4.7.1 greylisted"}
	for k, v := range want {
		if got := r.Get(k); got != v {
			t.Errorf("delay DSN %s = %q, want %q", k, got, v)
		}
	}
	if p.Header.Get("Subject") != "Delayed Mail (still being retried)" {
		t.Errorf("Subject %q", p.Header.Get("Subject"))
	}
}

// TestSuccessDSN: NOTIFY=SUCCESS delivered to a receiver that does not
// offer DSN gets a "relayed" DSN; one delivered where the receiver offered
// DSN (the parameters were passed on) gets none.
func TestSuccessDSN(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(44, 10), ip(44, 11)}, nil)
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(44, 10))
	h.mxFor("origin.test", ip(44, 11))

	// The sinks do not offer DSN: relayed.
	m := h.injectMsg(&spool.Message{Sender: "alice@origin.test", EnvID: "E1",
		Recipients: []spool.Recipient{{Addr: "bob@dest.test", Notify: spool.NotifySuccess | spool.NotifyFailure}}}, "Subject: ok\r\n\r\nx\r\n")
	if e := h.next("dsn", "delivered"); e.name != "dsn" || e.str("dsn_for") != m.ID {
		t.Fatalf("NOTIFY=SUCCESS without DSN at the receiver: %s %v, want a DSN", e.name, e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "bob@dest.test" {
		t.Fatalf("outcome %s %v", e.name, e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "alice@origin.test" {
		t.Fatalf("relayed DSN delivery: %s %v", e.name, e.fields)
	}
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Recipients[0]; r.Get("Action") != "relayed" || r.Get("Status") != "2.0.0" || r.Get("Remote-Mta") != "dns; mx.dest.test" {
		t.Errorf("relayed DSN recipient %v", r)
	}
	if p.Report.Get("Original-Envelope-Id") != "E1" || p.Header.Get("Subject") != "Successful Mail Delivery Report" {
		t.Errorf("relayed DSN %v %v", p.Header, p.Report)
	}

	// A receiver that offered DSN: the outcome as the pool reports it.
	// The message waits in the delayed queue, so this is its only outcome.
	m2 := h.injectMsg(&spool.Message{Sender: "alice@origin.test", Recipients: []spool.Recipient{{Addr: "carol@dest.test",
		Notify: spool.NotifySuccess, NextAttempt: h.clock.Now().Add(time.Hour)}}}, "Subject: passed on\r\n\r\nx\r\n")
	d := &queue.Delivery{MsgID: m2.ID, Domain: "dest.test", Sender: m2.Sender, Arrival: m2.Received.UnixNano(),
		Expires: m2.Received.Add(24 * time.Hour).UnixNano(),
		Rcpts:   []queue.Rcpt{{Idx: 0, Addr: "carol@dest.test", Notify: uint8(spool.NotifySuccess)}}}
	h.s.Result(d, connpool.Attempt{MX: "mx.dest.test", DSN: true}, &smtpclient.Result{Rcpt: []*outcome.Error{nil}, DotReply: "ok"}, nil)
	if e := h.next("dsn", "delivered"); e.name != "delivered" || e.str("queue_id") != m2.ID {
		t.Fatalf("NOTIFY=SUCCESS passed on: %s %v, want no DSN", e.name, e.fields)
	}
	h.gone(m2.ID)
}

// TestDSNSpoolFullRelayedWaits: a relayed report whose DSN cannot be
// spooled is not lost: it goes with the message's final DSN.
func TestDSNSpoolFullRelayedWaits(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(45, 10), ip(45, 11)}, refuseNobody)
	fs := &fullSpool{}
	h := newHarness(t, port, func(o *Options) {
		fs.Spool = o.Spool.(*spool.Spool)
		o.Spool = fs
	})
	h.mxFor("dest.test", ip(45, 10))
	h.mxFor("origin.test", ip(45, 11))
	fs.full.Store(true)
	// Two domains' worth of outcomes: the success first (its own
	// delivery), then the bounce that ends the message.
	m := h.injectMsg(&spool.Message{Sender: "alice@origin.test", Recipients: []spool.Recipient{
		{Addr: "bob@dest.test", Notify: spool.NotifySuccess},
		{Addr: "nobody@other.test", NextAttempt: h.clock.Now().Add(time.Hour)},
	}}, "Subject: both\r\n\r\nx\r\n")
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "bob@dest.test" {
		t.Fatalf("outcome %s %v", e.name, e.fields)
	}
	fs.full.Store(false)
	h.mxFor("other.test", ip(45, 10))
	h.s.Tick(h.clock.Advance(61 * time.Minute))
	if e := h.next("dsn", "bounced"); e.name != "dsn" || e.str("dsn_for") != m.ID {
		t.Fatalf("final outcome: %s %v, want the DSN", e.name, e.fields)
	}
	p, err := parseDSN(sinks[1].WaitMessages(t, 1)[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	acts := map[string]string{}
	for _, r := range p.Recipients {
		acts[r.Get("Final-Recipient")] = r.Get("Action")
	}
	if acts["rfc822; bob@dest.test"] != "relayed" || acts["rfc822; nobody@other.test"] != "failed" || len(acts) != 2 {
		t.Errorf("final DSN reports %v", acts)
	}
}
