package scheduler

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// parsedDSN is a DSN read back with the standard library only.
type parsedDSN struct {
	Header     mail.Header
	Human      string
	Report     textproto.MIMEHeader   // per-message fields
	Recipients []textproto.MIMEHeader // per-recipient fields
	Headers    string                 // the text/rfc822-headers part
}

// parseDSN parses an RFC 3464 report, failing on anything malformed.
func parseDSN(raw []byte) (*parsedDSN, error) {
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
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch i {
		case 0:
			if ct != "text/plain" {
				return nil, fmt.Errorf("part 0 is %s", ct)
			}
			out.Human = string(body)
		case 1:
			if ct != "message/delivery-status" {
				return nil, fmt.Errorf("part 1 is %s", ct)
			}
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
			if ct != "text/rfc822-headers" {
				return nil, fmt.Errorf("part 2 is %s", ct)
			}
			out.Headers = string(body)
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
		Failed: []failure{
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
			"Remote-Mta": "dns; mx1.example.net", "Diagnostic-Code": "smtp; 550 5.1.1 no such user  X-Injected: yes"},
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

func TestFailureStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		f    failure
		want string
	}{
		{failure{Code: 550, Enhanced: "5.7.1"}, "5.7.1"},
		{failure{Code: 550}, "5.0.0"},
		{failure{Code: 550, Enhanced: "junk"}, "5.0.0"},
		{failure{Expired: true}, "4.4.7"},
		{failure{Expired: true, Code: 421}, "4.4.7"},
		{failure{Code: 452}, "4.0.0"},
		{failure{}, "5.0.0"},
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

// FuzzDSN builds a DSN from outside text (addresses, reply text, original
// headers) and checks that it always parses back as a well-formed report
// with the fields it was given, whatever the input.
func FuzzDSN(f *testing.F) {
	f.Add("bob@example.net", "no such user", "Subject: hi\r\n\r\nbody", 550, "5.1.1")
	f.Add("ü@例え.jp", "bad\r\n\r\n--x--", "no blank line", 0, "")
	f.Add("", "\x00\x7f", "\n\n", 421, "4.4.2")
	f.Fuzz(func(t *testing.T, addr, text, msg string, code int, enh string) {
		d := &dsn{
			ReportingMTA: "mta.example", QueueID: "Q1", Sender: "a@example.org",
			Now:     time.Unix(1e9, 0).UTC(),
			Failed:  []failure{{Addr: addr, Code: code % 1000, Enhanced: enh, Text: text}},
			Headers: headerBlock([]byte(msg)),
		}
		p, err := parseDSN(d.build())
		if err != nil {
			t.Fatalf("DSN does not parse: %v", err)
		}
		if len(p.Recipients) != 1 {
			t.Fatalf("%d recipient blocks", len(p.Recipients))
		}
		if got := p.Recipients[0].Get("Action"); got != "failed" {
			t.Fatalf("Action = %q", got)
		}
		if !validStatus(p.Recipients[0].Get("Status")) {
			t.Fatalf("Status = %q", p.Recipients[0].Get("Status"))
		}
	})
}
