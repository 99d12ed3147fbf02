package scheduler

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// maxDSNHeaders bounds the original header block quoted in a DSN: a message
// with megabytes of headers must not make a bounce of the same size.
const maxDSNHeaders = 64 << 10

// failure is one recipient that ended bounced or expired, as a DSN reports it.
type failure struct {
	Addr     string
	Expired  bool
	Code     int    // last remote (or local) reply code; 0 = none
	Enhanced string // "x.y.z" or ""
	Text     string // last reply text or local reason
	MX       string // remote MTA of the last attempt, "" when none answered
	At       time.Time
}

// status returns the RFC 3463 status for the failure: its enhanced code when
// it has one, else one derived from the reply class or the kind of failure.
func (f failure) status() string {
	if validStatus(f.Enhanced) {
		return f.Enhanced
	}
	switch {
	case f.Code/100 == 5:
		return "5.0.0"
	case f.Expired:
		return "4.4.7"
	case f.Code/100 == 4:
		return "4.0.0"
	}
	return "5.0.0"
}

func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// dsn is what a delivery status notification reports on.
type dsn struct {
	ReportingMTA string // our host name
	QueueID      string // the original message's queue id
	Sender       string // the original envelope sender: the DSN's recipient
	Arrival      time.Time
	Now          time.Time
	Failed       []failure
	Headers      []byte // the original message's header block, CRLF lines
}

// build renders the DSN as an RFC 3464 multipart/report message with CRLF
// line endings: a human-readable part, the message/delivery-status part and
// the original headers as text/rfc822-headers.
func (d *dsn) build() []byte {
	var b bytes.Buffer
	boundary := newBoundary(d.QueueID)
	host := clean(d.ReportingMTA)
	w := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\r\n")
	}
	w("From: Mail Delivery System <MAILER-DAEMON@%s>", host)
	w("To: <%s>", clean(d.Sender))
	w("Subject: Undelivered Mail Returned to Sender")
	w("Date: %s", d.Now.Format(time.RFC1123Z))
	w("Message-ID: <%s.dsn.%s@%s>", clean(d.QueueID), boundary[:8], host)
	w("Auto-Submitted: auto-replied")
	w("MIME-Version: 1.0")
	w("Content-Type: multipart/report; report-type=delivery-status;")
	w("\tboundary=\"%s\"", boundary)
	w("")
	w("This is a MIME-encapsulated message.")
	w("")

	w("--%s", boundary)
	w("Content-Type: text/plain; charset=us-ascii")
	w("Content-Description: Notification")
	w("")
	w("This is the mail system at host %s.", host)
	w("")
	w("Your message could not be delivered to one or more recipients.")
	w("")
	for _, f := range d.Failed {
		why := "was refused"
		if f.Expired {
			why = "could not be delivered in time"
		}
		w("<%s>: %s", clean(f.Addr), why)
		if diag := f.diagnostic(); diag != "" {
			w("    %s", diag)
		}
	}
	w("")

	w("--%s", boundary)
	w("Content-Type: message/delivery-status")
	w("Content-Description: Delivery report")
	w("")
	w("Reporting-MTA: dns; %s", host)
	w("X-Mtad-Queue-ID: %s", clean(d.QueueID))
	if !d.Arrival.IsZero() {
		w("Arrival-Date: %s", d.Arrival.Format(time.RFC1123Z))
	}
	for _, f := range d.Failed {
		w("")
		w("Final-Recipient: %s", addrType(f.Addr))
		w("Action: failed")
		w("Status: %s", f.status())
		if f.MX != "" {
			w("Remote-MTA: dns; %s", clean(f.MX))
		}
		if f.Code != 0 {
			w("Diagnostic-Code: smtp; %s", f.diagnostic())
		} else if f.Text != "" {
			w("Diagnostic-Code: X-mtad; %s", clean(f.Text))
		}
		if !f.At.IsZero() {
			w("Last-Attempt-Date: %s", f.At.Format(time.RFC1123Z))
		}
		if f.Expired && !d.Now.IsZero() {
			w("Will-Retry-Until: %s", d.Now.Format(time.RFC1123Z))
		}
	}
	w("")

	w("--%s", boundary)
	w("Content-Type: text/rfc822-headers")
	w("Content-Description: Undelivered message headers")
	w("")
	b.Write(d.Headers)
	if len(d.Headers) > 0 && !bytes.HasSuffix(d.Headers, []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	w("")
	w("--%s--", boundary)
	return b.Bytes()
}

// diagnostic is the reply as "550 5.1.1 text", or the local reason.
func (f failure) diagnostic() string {
	var parts []string
	if f.Code != 0 {
		parts = append(parts, fmt.Sprint(f.Code))
	}
	if f.Enhanced != "" && validStatus(f.Enhanced) {
		parts = append(parts, f.Enhanced)
	}
	if f.Text != "" {
		parts = append(parts, clean(f.Text))
	}
	return strings.Join(parts, " ")
}

// addrType is the Final-Recipient value: rfc822 for an ASCII address, utf-8
// (RFC 6533) for an internationalised one.
func addrType(addr string) string {
	addr = clean(addr)
	for i := 0; i < len(addr); i++ {
		if addr[i] >= 0x80 {
			return "utf-8; " + addr
		}
	}
	return "rfc822; " + addr
}

// clean makes outside text (reply text, addresses) safe for one header
// line: no CR, LF or other controls (which would let a remote reply inject
// header fields), invalid UTF-8 replaced.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "?")
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n' || r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r == 0x7f:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}

// newBoundary returns a MIME boundary that cannot occur in the parts: random
// bytes, plus the queue id for readability.
func newBoundary(id string) string {
	var r [12]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(r[:]) + "/" + safeToken(id)
}

func safeToken(s string) string {
	var b strings.Builder
	for _, c := range s {
		if b.Len() >= 40 {
			break
		}
		if c < utf8.RuneSelf && (c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// headerBlock returns the header section of a message (up to and including
// the line ending of the last header line), with bare LF line endings turned
// into CRLF and cut at maxDSNHeaders on a line boundary. A message without a
// blank line is all header.
func headerBlock(msg []byte) []byte {
	var out []byte
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		var line []byte
		if i < 0 {
			line, msg = msg, nil
		} else {
			line, msg = msg[:i], msg[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if len(out)+len(line)+2 > maxDSNHeaders {
			break
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return out
}
