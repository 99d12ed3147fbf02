package scheduler

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/spool"
)

// damagedStatus is the status reported for each recipient of a message the
// spool lost part of (spool.Salvage). RFC 3463 class 5 ("permanent
// failure"), not 4: the failure is permanent as far as this message goes:
// mtad will never try it again, and a 4.x.x with Action: failed would tell
// the sender's software that a retry is still under way. Subject 3 ("mail
// system status"), detail 0: none of 3.1–3.6 (disk full, system not
// accepting, capacity, conversion…) describes a damaged store.
const damagedStatus = "5.3.0"

// damagedText is the reason given for each recipient.
const damagedText = "message damaged in the spool"

// BounceDamaged spools a DSN to m's sender reporting every recipient of m
// not yet delivered (Pending) as failed with status 5.3.0, "message damaged
// in the spool", and submits the DSN. m is a message that spool.Salvage
// could only read in part (spool.SalvageOwed) and that is not queued. The
// original is not returned (its body is what was damaged). It returns the
// DSN, or nil when none is due (a null sender, NOTIFY not asking for
// failures, every readable recipient final and none unreadable). Call it
// before Start or while running.
//
// A message none of whose readable recipients is pending (spool.Salvage
// owes it only when some recipient records could not be read) gets a
// damage notice instead of a DSN (see damageNotice): its sender was told
// 250, and mtad's promise is delivered or bounced, never lost in silence.
func (s *Scheduler) BounceDamaged(m *spool.Message) (*spool.Message, error) {
	now := s.clock.Now()
	d := damagedDSN(m, s.opts.Hostname, now)
	if d == nil {
		if m.Sender == "" || hasPending(m) {
			return nil, nil
		}
		return s.noticeDamaged(m, now)
	}
	w := s.opts.Spool.NewBody()
	if err := d.write(w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("DSN for damaged message %s: %w", m.ID, err)
	}
	dm := &spool.Message{
		Recipients: []spool.Recipient{{Addr: m.Sender}},
		Received:   now,
		Group:      m.Group,
		Binding:    m.Binding,
		DSNFor:     m.ID,
		SMTPUTF8:   d.global(),
		EightBit:   d.eightBit(),
	}
	if err := s.opts.Spool.PutBody(dm, w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("DSN for damaged message %s: %w", m.ID, err)
	}
	actions := make([]string, len(d.Rcpts))
	for i, r := range d.Rcpts {
		actions[i] = r.Action.String()
	}
	logging.DSN{QueueID: dm.ID, DSNFor: m.ID, Recipient: m.Sender, Actions: actions, Size: dm.Size}.Log(s.log)
	if err := s.Submit(dm); err != nil {
		return dm, fmt.Errorf("DSN for damaged message %s: submit %s: %w", m.ID, dm.ID, err)
	}
	return dm, nil
}

// damagedDSN is the DSN BounceDamaged sends, nil when none is due.
func damagedDSN(m *spool.Message, host string, now time.Time) *dsn {
	if m.Sender == "" {
		return nil
	}
	var reports []report
	for _, r := range m.Recipients {
		switch r.State {
		case spool.Pending:
			reports = append(reports, report{Addr: r.Addr, Action: actFailed, Enhanced: damagedStatus, Text: damagedText, At: now})
		case spool.Bounced, spool.Expired:
			// Bounced (or expired) before the damage, its DSN not yet
			// sent: the message was kept for it. Reported with its own
			// reply, as the DSN it was owed would have.
			reports = append(reports, report{Addr: r.Addr, ORcpt: r.ORcpt, Notify: r.Notify, Action: actFailed,
				Expired: r.State == spool.Expired, Code: r.LastCode, Enhanced: r.LastEnh, Text: r.LastText,
				MX: r.LastMX, At: r.UpdatedAt})
		}
	}
	reports = wanted(reports, m)
	if len(reports) == 0 {
		return nil
	}
	return &dsn{
		ReportingMTA: host, QueueID: m.ID, Sender: m.Sender, EnvID: m.EnvID, SMTPUTF8: m.SMTPUTF8,
		Arrival: m.Received, Now: now, Rcpts: reports,
		Note: "The message was damaged in the spool of this mail system and cannot be delivered; please send it again.",
	}
}

func hasPending(m *spool.Message) bool {
	for _, r := range m.Recipients {
		if r.State == spool.Pending {
			return true
		}
	}
	return false
}

// headSource is the optional ability of a Spool to read the start of a
// quarantined body (*spool.Spool has it), for the header block a damage
// notice quotes; a Spool without it sends notices without headers.
type headSource interface {
	SalvageHead(id string, max int) ([]byte, error)
}

// noticeDamaged spools and submits the damage notice for m.
func (s *Scheduler) noticeDamaged(m *spool.Message, now time.Time) (*spool.Message, error) {
	n := &damageNotice{ReportingMTA: s.opts.Hostname, QueueID: m.ID, Sender: m.Sender, MessageID: m.MessageID,
		EnvID: m.EnvID, Arrival: m.Received, Size: m.Size, Now: now}
	if hs, ok := s.opts.Spool.(headSource); ok {
		head, err := hs.SalvageHead(m.ID, maxDSNHeaders)
		if err != nil {
			return nil, fmt.Errorf("damage notice for %s: %w", m.ID, err)
		}
		n.Headers = headerBlock(head)
	}
	w := s.opts.Spool.NewBody()
	if err := n.write(w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("damage notice for %s: %w", m.ID, err)
	}
	dm := &spool.Message{
		Recipients: []spool.Recipient{{Addr: m.Sender}},
		Received:   now,
		Group:      m.Group,
		Binding:    m.Binding,
		DSNFor:     m.ID,
		SMTPUTF8:   n.global(),
		EightBit:   n.global(),
	}
	if err := s.opts.Spool.PutBody(dm, w); err != nil {
		w.Abort()
		return nil, fmt.Errorf("damage notice for %s: %w", m.ID, err)
	}
	logging.DSN{QueueID: dm.ID, DSNFor: m.ID, Recipient: m.Sender, Actions: []string{noticeAction}, Size: dm.Size}.Log(s.log)
	if err := s.Submit(dm); err != nil {
		return dm, fmt.Errorf("damage notice for %s: submit %s: %w", m.ID, dm.ID, err)
	}
	return dm, nil
}

// noticeAction stands in the dsn record's actions for a damage notice,
// which reports on no recipient.
const noticeAction = "damaged-notice"

// noticeSubject is the damage notice's Subject.
const noticeSubject = "Undelivered Mail: damaged in the spool"

// damageNotice tells the sender of a message that a salvage quarantined
// with a readable envelope but no readable recipient still pending that
// the message was damaged and should be sent again.
//
// It is not a DSN: an RFC 3464 message/delivery-status part must hold at
// least one per-recipient group, each with a Final-Recipient, Action and
// Status (RFC 3464 2.1, 2.3), and here no recipient can be named; and RFC
// 6522's multipart/report is for such machine-readable reports. So it is
// a plain multipart/mixed from the null sender (RFC 5321 4.5.5: a
// notification must not be answered by another), marked Auto-Submitted
// (RFC 3834), with the explanation and, when the body's first record
// reads, the original header block as text/rfc822-headers (RFC 6522 4,
// which any mail reader shows).
type damageNotice struct {
	ReportingMTA string
	QueueID      string // the damaged message's queue id
	Sender       string // its envelope sender: the notice's recipient
	MessageID    string // its Message-ID, as the spool recorded it; "" = not known
	EnvID        string // RFC 3461 ENVID; "" = not given
	Arrival      time.Time
	Size         int64
	Now          time.Time
	Headers      []byte // the original header block (see readHeaders); nil = unreadable
}

// global reports whether the notice must go with SMTPUTF8: only when its
// recipient's address is not ASCII. Everything else in it is made ASCII.
func (n *damageNotice) global() bool {
	return !isASCIIString(capString(clean(n.Sender), maxAddrOctets))
}

// write renders the notice with CRLF line endings into dst; no line is
// over 998 octets.
func (n *damageNotice) write(dst io.Writer) error {
	b := bufio.NewWriterSize(dst, 8<<10)
	boundary := newBoundary(n.QueueID)
	host := capString(clean(n.ReportingMTA), 255)
	line := func(s string) {
		b.WriteString(s)
		b.WriteString("\r\n")
	}
	field := func(name, value string) { writeField(b, name, value) }
	field("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	field("To", "<"+capString(clean(n.Sender), maxAddrOctets)+">")
	field("Subject", noticeSubject)
	field("Date", n.Now.Format(time.RFC1123Z))
	field("Message-ID", "<"+safeToken(n.QueueID)+".notice."+boundary[:8]+"@"+host+">")
	field("Auto-Submitted", "auto-replied")
	field("X-Mtad-Queue-ID", safeToken(n.QueueID))
	field("MIME-Version", "1.0")
	field("Content-Type", `multipart/mixed; boundary="`+boundary+`"`)
	line("")
	line("This is a MIME-encapsulated message.")
	line("")
	line("--" + boundary)
	field("Content-Type", "text/plain; charset=us-ascii")
	field("Content-Description", "Notification")
	line("")
	b.WriteString(n.text(host))
	line("")
	if len(n.Headers) > 0 {
		h := n.Headers
		if !isASCII(h) {
			h = asciiHeaders(h)
		}
		line("--" + boundary)
		field("Content-Type", "text/rfc822-headers")
		field("Content-Description", "Original message headers")
		line("")
		b.Write(h)
		if !strings.HasSuffix(string(h), "\r\n") {
			line("")
		}
		line("")
	}
	line("--" + boundary + "--")
	return b.Flush()
}

// text is the text/plain part: ASCII (outside text made so by dsnText),
// lines wrapped to 76 octets where they have spaces, CRLF endings.
func (n *damageNotice) text(host string) string {
	txt := func(s string) string { return dsnText(s, false) }
	var s strings.Builder
	para := func(p string) {
		wrapText(&s, p, "")
		s.WriteString("\r\n")
	}
	para("This is the mail system at host " + host + ".")
	para("A message you sent was damaged in this mail system's storage and could not be delivered to some or all of its recipients. " +
		"The records of some or all of its recipients could not be read, so this notice cannot say which of them received it. " +
		"Please send the message again.")
	item := func(name, value string) { wrapText(&s, name+": "+value, "    ") }
	item("Queue ID", safeToken(n.QueueID))
	if id := capString(txt(n.MessageID), maxReplyText); id != "" {
		item("Message-ID", id)
	}
	if id := capString(txt(n.EnvID), maxReplyText); id != "" {
		item("Envelope ID", id)
	}
	if !n.Arrival.IsZero() {
		item("Received", n.Arrival.Format(time.RFC1123Z))
	}
	item("Size", strconv.FormatInt(n.Size, 10)+" bytes")
	s.WriteString("\r\n")
	if len(n.Headers) > 0 {
		para("The headers of the message follow.")
	} else {
		para("Its headers could not be read either.")
	}
	return s.String()
}
