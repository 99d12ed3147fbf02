package scheduler

// Delivery status notifications (RFC 3464), as RFC 3461 asks for them and
// RFC 6533 extends them to internationalised mail.
//
// A DSN here is written as a stream into an io.Writer (the spool's
// BodyWriter), so a RET=FULL report on a large message never holds that
// message in memory: the original body is copied from the spool's reader
// one chunk at a time. Everything that comes from outside (addresses,
// remote reply texts, ENVID, ORCPT, the original headers) is cleaned of
// control characters, capped, and folded, so that no line of a DSN is
// over RFC 5322's 998 octets whatever a remote server said.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mtad/mtad/internal/conform"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

const (
	// maxDSNHeaders bounds the original header block quoted in a DSN: a
	// message with megabytes of headers must not make a bounce of the same
	// size.
	maxDSNHeaders = 64 << 10
	// maxLineOctets is RFC 5322's limit on a line, without its CRLF.
	maxLineOctets = 998
	// foldWidth is where our own fields are folded when they can be
	// (RFC 5322 2.1.1's "SHOULD be no more than 78").
	foldWidth = 78
	// maxReplyText caps a remote reply text kept for a DSN (and in the
	// spool): a server that answers with 29 KB on one line must not make
	// a DSN line, or a spool record, of that size. 512 is RFC 5321's
	// reply line limit.
	maxReplyText = 512
	// maxAddrOctets caps an address or ORCPT quoted in a DSN; RFC 5321's
	// path limit is 256.
	maxAddrOctets = 512
)

// action is what a DSN says happened to one recipient (RFC 3464 2.3.3).
// The zero value is failed, so a report built without one is a bounce.
type action uint8

const (
	actFailed  action = iota // bounced or expired
	actDelayed               // still being retried past delivery.delay_warning
	actRelayed               // delivered to a receiver that does not offer DSN
)

func (a action) String() string {
	switch a {
	case actDelayed:
		return "delayed"
	case actRelayed:
		return "relayed"
	}
	return "failed"
}

// notifyBit is the NOTIFY keyword that asks for a report of this action.
func (a action) notifyBit() spool.Notify {
	switch a {
	case actDelayed:
		return spool.NotifyDelay
	case actRelayed:
		return spool.NotifySuccess
	}
	return spool.NotifyFailure
}

// report is one recipient a DSN reports on.
type report struct {
	Addr     string
	ORcpt    string       // RFC 3461 ORCPT, "addr-type;address"; "" = not given
	Notify   spool.Notify // the recipient's NOTIFY; 0 = not given
	Action   action
	Expired  bool   // failed because max_age passed
	Code     int    // last remote (or local) reply code; 0 = none
	Enhanced string // "x.y.z" or ""
	Text     string // last reply text or local reason
	MX       string // remote MTA of the last attempt, "" when none answered
	At       time.Time
	Class    policy.BounceClass // the failure's bounce class; 0 = none (relayed)
}

// failure is a report of a failed recipient; the name predates delay and
// success reports.
type failure = report

// status returns the RFC 3463 status for the report: its enhanced code
// when it has one of the action's class, else one derived from the reply
// class or the kind of failure.
func (f report) status() string {
	switch f.Action {
	case actRelayed:
		if validStatus(f.Enhanced) && f.Enhanced[0] == '2' {
			return f.Enhanced
		}
		return "2.0.0"
	case actDelayed:
		if validStatus(f.Enhanced) && f.Enhanced[0] == '4' {
			return f.Enhanced
		}
		return "4.0.0"
	}
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

// dsnAction decides what one recipient's outcome owes the sender, from its
// verdict and its NOTIFY (RFC 3461 4.1): a bounce or expiry when NOTIFY has
// FAILURE (or was not given); a "relayed" report when it has SUCCESS and
// the receiver did not offer DSN — when it did, the parameters were passed
// on and the receiver reports (RFC 3461 6.2.1); a "delayed" report when
// DELAY was asked for explicitly and delayDue (the message is older than
// delivery.delay_warning and no delay report went out yet). ok is false
// when nothing is owed. NOTIFY=NEVER owes nothing.
func dsnAction(v verdict, n spool.Notify, passedOn, delayDue bool) (a action, ok bool) {
	switch v {
	case vBounced, vExpired:
		return actFailed, n.Has(spool.NotifyFailure)
	case vDelivered:
		return actRelayed, n != 0 && n.Has(spool.NotifySuccess) && !passedOn
	case vDeferred:
		return actDelayed, n != 0 && n.Has(spool.NotifyDelay) && delayDue
	}
	return 0, false
}

// dsn is one delivery status notification.
type dsn struct {
	ReportingMTA string // our host name
	QueueID      string // the original message's queue id
	Sender       string // the original envelope sender: the DSN's recipient
	EnvID        string // RFC 3461 ENVID, decoded; "" = not given
	Arrival      time.Time
	Now          time.Time
	RetryUntil   time.Time // when the message expires: Will-Retry-Until of delayed recipients
	Rcpts        []report
	SMTPUTF8     bool // the original message was sent with SMTPUTF8

	// What is returned of the message: Full, when set (RET=FULL), is the
	// whole original message, streamed; else Headers, its header block
	// (CRLF lines, see readHeaders). FullEightBit says Full may carry
	// 8-bit octets (the original was 8BITMIME or SMTPUTF8); a Full that
	// breaks what its part may carry (a line over 998 octets, an 8-bit
	// octet where none was declared) makes write fail with
	// errUnreturnable, and the caller returns the headers instead.
	Headers      []byte
	Full         io.Reader
	FullEightBit bool
	Note         string // an extra paragraph for the human-readable part
}

// errUnreturnable is what write returns when the original message cannot
// be returned as it is (see dsn.Full).
var errUnreturnable = errors.New("original message cannot be returned whole")

// global reports whether the DSN uses RFC 6533's types and is sent with
// SMTPUTF8: only when its own recipient, the original sender, has a
// non-ASCII address, which no server without SMTPUTF8 could take anyway.
// Otherwise a DSN about internationalised mail is made ASCII (RFC 6533 3:
// UTF-8 addresses as utf-8-addr-xtext, the returned headers with RFC 2047
// encoded words), so that it reaches a sender whose server does not offer
// SMTPUTF8: a global DSN sent there would carry raw UTF-8 unlabelled.
//
// It judges the address as the DSN will quote it (cleaned and capped).
func (d *dsn) global() bool {
	return !isASCIIString(capString(clean(d.Sender), maxAddrOctets))
}

// eightBit reports whether the DSN carries 8-bit octets outside the
// delivery-status part (which only a global DSN does), so that it is sent
// with BODY=8BITMIME.
func (d *dsn) eightBit() bool {
	if d.Full != nil {
		return d.FullEightBit || d.global()
	}
	// An ASCII DSN makes the returned headers ASCII.
	return d.global() && !isASCII(d.Headers)
}

// headersOnly turns a RET=FULL DSN whose message could not be returned
// into one returning the headers, saying why.
func (d *dsn) headersOnly(why error) {
	d.Full, d.FullEightBit = nil, false
	d.Note = "The original message could not be returned whole (" + strings.TrimPrefix(why.Error(), errUnreturnable.Error()+": ") +
		"); only its headers are returned."
}

// build renders the DSN in memory, returning the headers when the full
// message cannot be returned. For tests and small reports; the scheduler
// streams with write.
func (d *dsn) build() []byte {
	var b bytes.Buffer
	if err := d.write(&b); err != nil {
		b.Reset()
		d.headersOnly(err)
		_ = d.write(&b) // a bytes.Buffer does not fail, and headers always fit
	}
	return b.Bytes()
}

// subject is the DSN's Subject, by the gravest action it reports.
func (d *dsn) subject() string {
	has := d.actions()
	switch {
	case has[actFailed]:
		return "Undelivered Mail Returned to Sender"
	case has[actDelayed]:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

func (d *dsn) actions() [3]bool {
	var has [3]bool
	for _, r := range d.Rcpts {
		has[r.Action] = true
	}
	return has
}

// write renders the DSN as an RFC 3464 multipart/report message with CRLF
// line endings into w: a human-readable part, the delivery-status part and
// the returned message or its headers. No line is over 998 octets.
func (d *dsn) write(dst io.Writer) error {
	b := bufio.NewWriterSize(dst, 8<<10)
	global := d.global()
	txt := func(s string) string { return dsnText(s, global) }
	boundary := newBoundary(d.QueueID)
	host := capString(clean(d.ReportingMTA), 255)
	line := func(s string) {
		b.WriteString(s)
		b.WriteString("\r\n")
	}
	field := func(name, value string) { writeField(b, name, value) }

	field("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	field("To", "<"+capString(clean(d.Sender), maxAddrOctets)+">")
	field("Subject", d.subject())
	field("Date", d.Now.Format(time.RFC1123Z))
	field("Message-ID", "<"+safeToken(d.QueueID)+".dsn."+boundary[:8]+"@"+host+">")
	field("Auto-Submitted", "auto-replied")
	field("MIME-Version", "1.0")
	field("Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`)
	line("")
	line("This is a MIME-encapsulated message.")
	line("")

	// The human-readable part: us-ascii when it is, else UTF-8 in
	// quoted-printable, so it is never mislabelled and its lines stay
	// short whatever it quotes.
	// The human-readable part keeps UTF-8 whatever the DSN: when it is
	// not ASCII it goes as quoted-printable, which any server takes.
	human := d.humanText(func(s string) string { return dsnText(s, true) }, host)
	line("--" + boundary)
	if isASCIIString(human) {
		field("Content-Type", "text/plain; charset=us-ascii")
		field("Content-Description", "Notification")
		line("")
		b.WriteString(human)
	} else {
		field("Content-Type", "text/plain; charset=utf-8")
		field("Content-Transfer-Encoding", "quoted-printable")
		field("Content-Description", "Notification")
		line("")
		qp := quotedprintable.NewWriter(b)
		_, _ = qp.Write([]byte(human))
		_ = qp.Close()
		line("")
	}
	line("")

	line("--" + boundary)
	if global {
		field("Content-Type", "message/global-delivery-status")
	} else {
		field("Content-Type", "message/delivery-status")
	}
	field("Content-Description", "Delivery report")
	line("")
	if d.EnvID != "" {
		field("Original-Envelope-Id", capString(txt(d.EnvID), maxReplyText))
	}
	field("Reporting-MTA", "dns; "+host)
	field("X-Mtad-Queue-ID", safeToken(d.QueueID))
	if !d.Arrival.IsZero() {
		field("Arrival-Date", d.Arrival.Format(time.RFC1123Z))
	}
	for _, r := range d.Rcpts {
		line("")
		if o := origRecipient(r.ORcpt, global); o != "" {
			field("Original-Recipient", o)
		}
		field("Final-Recipient", addrType(r.Addr, global))
		field("Action", r.Action.String())
		field("Status", r.status())
		if r.MX != "" {
			field("Remote-MTA", "dns; "+capString(clean(r.MX), 255))
		}
		if r.Code != 0 {
			field("Diagnostic-Code", "smtp; "+r.diagnostic(global))
		} else if r.Text != "" {
			field("Diagnostic-Code", "X-mtad; "+capString(txt(r.Text), maxReplyText))
		}
		// An extension field (RFC 3464 2.4: X- names are free for local
		// use), so that a sender's bounce processing can read the class
		// mtad gave without parsing the diagnostic itself.
		if r.Class != 0 && r.Action != actRelayed {
			field("X-Mtad-Bounce-Class", strconv.Itoa(int(r.Class))+" ("+r.Class.String()+")")
		}
		if !r.At.IsZero() {
			field("Last-Attempt-Date", r.At.Format(time.RFC1123Z))
		}
		// Only a recipient still being tried has a retry deadline; a
		// failed one never does (RFC 3464 2.3.9).
		if r.Action == actDelayed && !d.RetryUntil.IsZero() {
			field("Will-Retry-Until", d.RetryUntil.Format(time.RFC1123Z))
		}
	}
	line("")

	line("--" + boundary)
	if d.Full != nil && d.SMTPUTF8 && !global {
		// Its header section may hold UTF-8, which only message/global
		// carries; the headers go back instead, made ASCII.
		return fmt.Errorf("%w: it is internationalised (SMTPUTF8)", errUnreturnable)
	}
	if d.Full != nil {
		ct := "message/rfc822"
		if global {
			ct = "message/global"
		}
		field("Content-Type", ct)
		eight := d.FullEightBit || global
		if eight {
			field("Content-Transfer-Encoding", "8bit")
		}
		field("Content-Description", "Original message")
		line("")
		if err := copyLines(b, d.Full, eight); err != nil {
			return err
		}
	} else {
		// readHeaders made them fit already; this keeps the line limit
		// whatever a caller put there.
		h := headerBlock(d.Headers)
		ct := "text/rfc822-headers"
		if !global && !isASCII(h) {
			h = asciiHeaders(h)
		}
		if global {
			ct = "message/global-headers"
			if !utf8.Valid(h) {
				h = bytes.ToValidUTF8(h, []byte("?"))
			}
		}
		field("Content-Type", ct)
		if !isASCII(h) {
			field("Content-Transfer-Encoding", "8bit")
		}
		field("Content-Description", "Original message headers")
		line("")
		b.Write(h)
		if len(h) > 0 && !bytes.HasSuffix(h, []byte("\r\n")) {
			line("")
		}
	}
	line("")
	line("--" + boundary + "--")
	return b.Flush()
}

// humanText is the text/plain part, its lines wrapped to 76 octets where
// they have spaces (and never over 998 octets), CRLF line endings.
func (d *dsn) humanText(txt func(string) string, host string) string {
	var s strings.Builder
	para := func(p string) {
		wrapText(&s, p, "")
		s.WriteString("\r\n")
	}
	para("This is the mail system at host " + host + ".")
	has := d.actions()
	intro := [3]string{
		actFailed:  "Your message could not be delivered to the recipients below. This is a permanent error; the mail system gave up on them.",
		actDelayed: "Your message could not be delivered yet to the recipients below. The mail system keeps trying; you do not need to send it again.",
		actRelayed: "Your message was delivered to the recipients below, to a mail system that does not send delivery notifications; no further notification about them will follow.",
	}
	for _, a := range []action{actFailed, actDelayed, actRelayed} {
		if !has[a] {
			continue
		}
		para(intro[a])
		if a == actDelayed && !d.RetryUntil.IsZero() {
			para("It will be retried until " + d.RetryUntil.Format(time.RFC1123Z) + ".")
		}
		for _, r := range d.Rcpts {
			if r.Action != a {
				continue
			}
			wrapText(&s, "<"+capString(txt(r.Addr), maxAddrOctets)+">", "")
			if diag := r.diagnostic(true); diag != "" {
				wrapText(&s, txt(diag), "    ")
			}
		}
		s.WriteString("\r\n")
	}
	if d.Note != "" {
		para(d.Note)
	}
	return s.String()
}

// diagnostic is the reply as "550 5.1.1 text", or the local reason, the
// text capped at maxReplyText and ASCII unless global.
func (f report) diagnostic(global bool) string {
	var parts []string
	if f.Code != 0 {
		parts = append(parts, fmt.Sprint(f.Code))
	}
	if f.Enhanced != "" && validStatus(f.Enhanced) {
		parts = append(parts, f.Enhanced)
	}
	if t := dsnText(f.Text, global); t != "" {
		parts = append(parts, capString(t, maxReplyText))
	}
	return strings.Join(parts, " ")
}

// dsnText cleans outside text for a DSN field: controls removed, runs of
// spaces collapsed (folding needs single spaces between words), and for
// a DSN that is not global every non-ASCII character replaced by '?', as
// message/delivery-status is US-ASCII.
func dsnText(s string, global bool) string {
	s = strings.Join(strings.Fields(clean(s)), " ")
	if global || isASCIIString(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r >= utf8.RuneSelf {
			return '?'
		}
		return r
	}, s)
}

// addrType is the Final-Recipient value: rfc822 for an ASCII address, utf-8
// (RFC 6533) for an internationalised one, as it is in a global DSN and as
// utf-8-addr-xtext in an ASCII one.
func addrType(addr string, global bool) string {
	addr = capString(clean(addr), maxAddrOctets)
	switch {
	case isASCIIString(addr):
		return "rfc822; " + addr
	case global:
		return "utf-8; " + addr
	}
	return "utf-8; " + string(smtpclient.AppendUTF8AddrXtext(nil, addr))
}

// origRecipient is the Original-Recipient value for a decoded ORCPT
// ("addr-type;address"): "" when there is none or it is not usable in this
// DSN. In an ASCII DSN a utf-8 one is written as utf-8-addr-xtext; another
// type with a non-ASCII address cannot be said.
func origRecipient(orcpt string, global bool) string {
	o := capString(clean(orcpt), maxAddrOctets)
	typ, addr, ok := strings.Cut(o, ";")
	typ, addr = strings.TrimSpace(typ), strings.TrimSpace(addr)
	if !ok || typ == "" || addr == "" || strings.ContainsAny(typ, " \t") {
		return ""
	}
	if !global && !isASCIIString(addr) {
		if !strings.EqualFold(typ, "utf-8") {
			return ""
		}
		addr = string(smtpclient.AppendUTF8AddrXtext(nil, addr))
	}
	return typ + "; " + addr
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
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029':
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}

// capString cuts s to at most n octets on a character boundary.
func capString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:cutPoint(s, n)]
}

// cutPoint returns where to cut s (at most n octets, n >= 4) on a
// character boundary, looking back no further than a character's length:
// invalid UTF-8 (a run of continuation bytes) is cut at n, so a cut
// always makes progress.
func cutPoint(s string, n int) int {
	if len(s) <= n {
		return len(s)
	}
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}

// writeField writes "name: value" folded (RFC 5322 2.2.3) before a space
// so that lines are at most foldWidth octets where the value allows; a
// run without spaces longer than a line allows is broken at 998 octets
// (only outside text past every cap above can have one).
func writeField(b *bufio.Writer, name, value string) {
	s := name + ": " + value
	min := len(name) + 2 // never fold between the name and its value
	for len(s) > foldWidth {
		i := strings.LastIndexByte(s[:foldWidth+1], ' ')
		if i < min {
			i = -1
			if j := strings.IndexByte(s[min:], ' '); j >= 0 && min+j <= maxLineOctets {
				i = min + j
			}
		}
		if i <= 0 {
			i = cutPoint(s, maxLineOctets)
			b.WriteString(s[:i])
			b.WriteString("\r\n")
			if i == len(s) {
				return
			}
			s = " " + s[i:]
		} else {
			b.WriteString(s[:i])
			b.WriteString("\r\n")
			s = s[i:] // the continuation starts with the space
		}
		min = 1
	}
	b.WriteString(s)
	b.WriteString("\r\n")
}

// wrapText writes text as lines of at most 76 octets, each starting with
// indent, broken at spaces where it has them and at 998 octets where not.
func wrapText(b *strings.Builder, text, indent string) {
	const width = 76
	words := strings.Fields(text)
	n := 0
	for _, w := range words {
		for len(indent)+len(w) > maxLineOctets {
			i := cutPoint(w, maxLineOctets-len(indent))
			if n > 0 {
				b.WriteString("\r\n")
			}
			b.WriteString(indent + w[:i])
			n = len(indent) + i
			w = w[i:]
		}
		switch {
		case n == 0:
			b.WriteString(indent + w)
			n = len(indent) + len(w)
		case n+1+len(w) > width:
			b.WriteString("\r\n" + indent + w)
			n = len(indent) + len(w)
		default:
			b.WriteString(" " + w)
			n += 1 + len(w)
		}
	}
	if n > 0 {
		b.WriteString("\r\n")
	}
}

// copyLines copies a message from r to w with CRLF line endings (a bare LF
// becomes CRLF), ending with a line ending. A line over 998 octets, or an
// 8-bit octet when eightBit is false, stops it with errUnreturnable: the
// part must not carry them. It holds one buffer of the reader's data.
func copyLines(w *bufio.Writer, r io.Reader, eightBit bool) error {
	br := bufio.NewReaderSize(r, 32<<10)
	n := 0 // octets in the current line so far, without CR
	var prevCR bool
	for {
		chunk, err := br.ReadSlice('\n')
		for _, c := range chunk {
			switch {
			case c == '\n':
				if !prevCR {
					// A bare LF: give it its CR.
					if e := w.WriteByte('\r'); e != nil {
						return e
					}
				}
				n = 0
			case c == '\r':
			default:
				if c >= 0x80 && !eightBit {
					return fmt.Errorf("%w: 8-bit octet in a 7-bit message", errUnreturnable)
				}
				n++
				if n > maxLineOctets {
					return fmt.Errorf("%w: a line over %d octets", errUnreturnable, maxLineOctets)
				}
			}
			prevCR = c == '\r'
			if e := w.WriteByte(c); e != nil {
				return e
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			// A body that can't be read (corrupt) is no reason to keep
			// the report from going out: the headers go instead.
			return fmt.Errorf("%w: it could not be read: %v", errUnreturnable, err)
		}
	}
	if n > 0 || prevCR {
		if prevCR {
			_, err := w.WriteString("\n")
			return err
		}
		_, err := w.WriteString("\r\n")
		return err
	}
	return nil
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

// headerBlock returns the header section of a message held in memory; see
// readHeaders.
func headerBlock(msg []byte) []byte {
	h, _ := readHeaders(bytes.NewReader(msg))
	return h
}

// readHeaders reads the header section of a message (up to and including
// the line ending of the last header line) from r, reading no more than
// maxDSNHeaders+1 octets: bare LF line endings become CRLF, the block is
// cut at maxDSNHeaders on a line boundary, and a line over 998 octets is
// folded so the block can be quoted as it is. A message without a blank
// line is all header.
func readHeaders(r io.Reader) ([]byte, error) {
	buf, err := io.ReadAll(io.LimitReader(r, maxDSNHeaders+1))
	if err != nil {
		return nil, err
	}
	truncated := len(buf) > maxDSNHeaders
	var out []byte
	for len(buf) > 0 {
		i := bytes.IndexByte(buf, '\n')
		var line []byte
		if i < 0 {
			if truncated {
				break // the rest of this line was not read
			}
			line, buf = buf, nil
		} else {
			line, buf = buf[:i], buf[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(bytes.TrimRight(line, " \t")) == 0 {
			break // the blank line that ends the header section
		}
		folded := foldLong(line)
		if len(out)+len(folded) > maxDSNHeaders {
			break
		}
		out = append(out, folded...)
	}
	return out, nil
}

// foldLong returns line with CRLF, broken into continuation lines of at
// most 998 octets when it is longer.
func foldLong(line []byte) []byte {
	out := make([]byte, 0, len(line)+2)
	s := string(line)
	for len(s) > maxLineOctets {
		i := cutPoint(s, maxLineOctets)
		out = append(out, s[:i]...)
		out = append(out, "\r\n"...)
		s = " " + s[i:]
	}
	out = append(out, s...)
	return append(out, "\r\n"...)
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func isASCIIString(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// asciiHeaders makes a returned header block ASCII for a DSN that is not
// global: RFC 2047 encoded words and A-label domains (conform's downgrade),
// or, for what cannot be downgraded (a UTF-8 local part), '?' for each
// non-ASCII octet. The result is still folded within 998 octets.
func asciiHeaders(h []byte) []byte {
	if d, err := conform.DowngradeHeader(h); err == nil && isASCII(d) {
		return headerBlock(d)
	}
	return bytes.Map(func(r rune) rune {
		if r >= utf8.RuneSelf {
			return '?' // one per character, invalid octets included
		}
		return r
	}, h)
}
