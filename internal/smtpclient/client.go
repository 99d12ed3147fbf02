// Package smtpclient is mtad's outbound SMTP client: one session on one
// already-dialed connection to a mail exchanger. It owns the protocol from
// the greeting to QUIT: EHLO with the binding's name (HELO when EHLO is
// refused), opportunistic STARTTLS, pipelined MAIL/RCPT/DATA (RFC 2920) or
// MAIL/RCPT/BDAT (RFC 3030), dot-stuffed bodies streamed in bounded
// pieces, RFC 3461 DSN parameters passed on, the downgrade of an SMTPUTF8
// envelope for a server without it, per-phase deadlines (RFC 5321
// §4.5.3.2) and a reply per recipient, all expressed in internal/outcome's
// vocabulary.
//
// It must never dial, resolve names, retry, queue or decide what a reply
// means for a message's future: connpool dials and hands it a net.Conn,
// the scheduler turns the per-recipient outcomes into delivered, delayed or
// bounced. A Client runs one transaction at a time and is reused for many;
// it is not safe for concurrent use.
//
// go-smtp's client is not used: it cannot pipeline, cannot start TLS
// opportunistically on one connection, and says "EHLO localhost" before
// STARTTLS. go-smtp's SMTPError and EnhancedCode remain the reply types.
package smtpclient

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"

	"github.com/mtad/mtad/internal/outcome"
)

// writeBufSize is the bufio.Writer size: one pipelined command group or one
// chunk of body per write system call.
const writeBufSize = 16 << 10

// maxWriteChunk bounds one write under one deadline, so a large body is
// written in chunks that each get Timeouts.DataBlock (RFC 5321 §4.5.3.2.5).
const maxWriteChunk = 64 << 10

// maxChunkedBody is the largest body sent with BDAT in the same pipelined
// group as MAIL and RCPT. Such a body goes out before the server has said
// whether it takes any recipient, so a refused transaction costs the whole
// body on the wire; above this size the client first waits for the
// envelope's replies (DATA's 354, or the RCPT replies before BDAT chunks).
const maxChunkedBody = 1 << 20

// maxPath is the longest reverse- or forward-path we put on the wire;
// RFC 5321 §4.5.3.1.3 allows 256 octets, we allow some slack.
const maxPath = 512

// Enhanced codes for results we produce ourselves (RFC 3463).
var (
	enhBadConnection = smtp.EnhancedCode{4, 4, 2}
	enhTLS           = smtp.EnhancedCode{4, 7, 0}
	enhNoTLS         = smtp.EnhancedCode{4, 7, 4} // RFC 3463 X.7.4: security features not supported
	enhProtocol      = smtp.EnhancedCode{4, 5, 0}
	enhNoUTF8        = smtp.EnhancedCode{5, 6, 7}
	enhLocalRead     = smtp.EnhancedCode{4, 3, 0}
	enhTooBig        = smtp.EnhancedCode{5, 3, 4}
	enhBadSender     = smtp.EnhancedCode{5, 1, 7}
	enhBadRcpt       = smtp.EnhancedCode{5, 1, 3}
)

// Timeouts are the per-phase limits on waiting for the remote side. Each
// applies to one read or one write (a pipelined command group, a reply, a
// chunk of body), not to the whole phase's sum.
type Timeouts struct {
	Greeting  time.Duration // waiting for the 220 banner
	EHLO      time.Duration // EHLO/HELO reply
	StartTLS  time.Duration // STARTTLS reply and the TLS handshake
	Mail      time.Duration // MAIL reply (and writing a pipelined group)
	Rcpt      time.Duration // each RCPT reply
	DataInit  time.Duration // DATA reply (354)
	DataBlock time.Duration // each chunk of body written
	DataTerm  time.Duration // the reply after the final "."
	Rset      time.Duration // RSET reply
	Quit      time.Duration // QUIT reply
	// Transaction bounds one whole transaction, from the RSET or MAIL
	// that opens it to the reply after the final "." (or the last BDAT),
	// on top of the per-command limits above: a server that answers each
	// command just inside its own limit, or drips a reply a byte at a
	// time, cannot hold a session for the sum of them (hours). Past it the
	// read or write in progress fails, the connection is unusable and
	// every recipient of the transaction is a temporary failure wrapping
	// ErrDeadline.
	Transaction time.Duration
}

// DefaultTimeouts returns the RFC 5321 §4.5.3.2 values, and sensible ones
// for the commands it does not name.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Greeting:  5 * time.Minute,
		EHLO:      5 * time.Minute,
		StartTLS:  5 * time.Minute,
		Mail:      5 * time.Minute,
		Rcpt:      5 * time.Minute,
		DataInit:  2 * time.Minute,
		DataBlock: 3 * time.Minute,
		DataTerm:  10 * time.Minute,
		Rset:      2 * time.Minute,
		Quit:      time.Minute,
		// RFC 5321 names no such limit; the end-of-data one (10m) is the
		// longest single wait a healthy server needs.
		Transaction: 10 * time.Minute,
	}
}

// withDefaults fills every zero field from DefaultTimeouts, so a caller
// (or a test) can set only the limits it cares about.
func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Greeting, &d.Greeting}, {&t.EHLO, &d.EHLO}, {&t.StartTLS, &d.StartTLS},
		{&t.Mail, &d.Mail}, {&t.Rcpt, &d.Rcpt}, {&t.DataInit, &d.DataInit},
		{&t.DataBlock, &d.DataBlock}, {&t.DataTerm, &d.DataTerm},
		{&t.Rset, &d.Rset}, {&t.Quit, &d.Quit}, {&t.Transaction, &d.Transaction},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Options configure one session.
type Options struct {
	// LocalName is the name said in EHLO/HELO: the binding's EHLO name.
	// Required; it is said again after STARTTLS (never "localhost").
	LocalName string
	// TLSConfig is used for STARTTLS. nil means opportunistic TLS: the
	// certificate is not verified (RFC 7435: any encryption beats none) and
	// ServerName is sent as SNI. When set without a ServerName, a copy with
	// ServerName filled in is used. TLS 1.2 is the least version either way.
	TLSConfig *tls.Config
	// ServerName is the MX host name, for SNI and error messages.
	ServerName string
	// DisableTLS skips STARTTLS even when offered; used after a handshake
	// with this host failed (see TLSMemory).
	DisableTLS bool
	// RequireTLS makes a server that does not offer STARTTLS, or refuses
	// it, an error (phase tls, 4.7.4, NotOffered) instead of a session in
	// clear text: a TLS policy that requires TLS (internal/tlspolicy).
	// Nothing but EHLO and QUIT is then said in clear text.
	RequireTLS bool
	// DisableChunking keeps to DATA when the server offers CHUNKING, for a
	// server whose BDAT is broken.
	DisableChunking bool
	// Timeouts limit each phase; zero fields take DefaultTimeouts' values.
	Timeouts Timeouts
	// Deadline, when not zero, bounds New as a whole (greeting, EHLO,
	// STARTTLS and its handshake): no read or write waits past it,
	// whatever the per-phase limits say. connpool sets it so that one
	// connection attempt over many MX addresses ends in bounded time.
	Deadline time.Time
}

// ErrDeadline is wrapped by the error of a session start that ran past
// Options.Deadline, or a transaction that ran past Timeouts.Transaction.
var ErrDeadline = errors.New("smtpclient: overall deadline exceeded")

// Envelope is one transaction's envelope.
type Envelope struct {
	From     string   // reverse-path without brackets; "" is the null sender <>
	To       []string // forward-paths without brackets
	Size     int64    // body size in bytes, sent as SIZE= when advertised; 0 = unknown
	UTF8     bool     // needs SMTPUTF8 (RFC 6531)
	EightBit bool     // body is 8-bit MIME: BODY=8BITMIME when advertised

	// RFC 3461 parameters, passed on only when the server offers DSN.
	Ret   string    // RET: "FULL" or "HDRS"; "" = not given
	EnvID string    // ENVID, decoded; sent as xtext; "" = not given
	DSN   []RcptDSN // per To index; nil, or a zero entry, = not given
}

// RcptDSN is one recipient's RFC 3461 parameters.
type RcptDSN struct {
	Notify string // NOTIFY as on the wire: "NEVER", or some of "SUCCESS,FAILURE,DELAY"
	ORcpt  string // ORCPT as "addr-type;address", decoded (e.g. "rfc822;a@b.example")
}

// Result is the remote side's answer to one transaction.
//
// For recipient i the outcome is Rcpt[i] when it is not nil, else Data:
// nil Data means delivered. Rcpt errors carry the RCPT (or MAIL) reply;
// Data carries the DATA or end-of-data reply, or "no valid recipients"
// when no recipient was accepted.
type Result struct {
	Rcpt []*outcome.Error // per Envelope.To index: nil = accepted by RCPT
	Data *outcome.Error   // nil = message accepted (2xx after the dot) for the accepted recipients
	// DotReply is the text of the 2xx reply to the end of data (usually
	// with the remote queue id), for the delivery log. Empty on failure.
	DotReply string
	// DotEnhanced is that reply's enhanced status code, as the server
	// gave it (zero when it gave none).
	DotEnhanced smtp.EnhancedCode
}

// Client is one SMTP session on one connection. It is not safe for
// concurrent use.
type Client struct {
	conn net.Conn // the current transport: the raw conn, or the TLS conn after STARTTLS
	br   *bufio.Reader
	bw   *bufio.Writer
	dw   deadlineWriter // between bw and conn: a write deadline per write
	opts Options
	t    Timeouts

	greeting string
	ext      map[string]string
	tls      bool

	pipelining bool
	chunking   bool
	size       bool
	sizeMax    int64
	eightBit   bool
	utf8       bool
	dsn        bool

	// dirty means a transaction may be open on the server (MAIL accepted,
	// no end of data sent): the next transaction starts with RSET, which
	// with PIPELINING costs no extra round trip.
	dirty  bool
	broken *outcome.Error // set once the connection is unusable
	// limit, when not zero, is the overall deadline in force (the
	// session start's or the transaction's): no read or write deadline is
	// set past it. limitWhat names it in errors.
	limit     time.Time
	limitWhat string
	closed    bool
	cmd       []byte // scratch for building commands without fmt
}

// deadlineWriter sets a fresh write deadline before every write to the
// connection, so each chunk of a long body gets its own limit.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
	limit   time.Time // the Client's overall deadline, when not zero
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	var n int
	for n < len(p) {
		chunk := p[n:]
		if len(chunk) > maxWriteChunk {
			chunk = chunk[:maxWriteChunk]
		}
		if err := w.conn.SetWriteDeadline(earliest(time.Now().Add(w.timeout), w.limit)); err != nil {
			return n, err
		}
		m, err := w.conn.Write(chunk)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// earliest is t, or limit when limit is set and comes first.
func earliest(t, limit time.Time) time.Time {
	if !limit.IsZero() && limit.Before(t) {
		return limit
	}
	return t
}

// setLimit puts an overall deadline in force (zero: none).
func (c *Client) setLimit(t time.Time, what string) {
	c.limit, c.limitWhat = t, what
	c.dw.limit = t
}

// New runs the start of a session on conn: it reads the greeting, says
// EHLO (HELO when EHLO gets a 5xx), and when the server offers STARTTLS and
// opts.DisableTLS is not set, starts TLS and says EHLO again. The returned
// Client is ready for Send.
//
// New owns conn from the call on: on any error conn is closed. Errors from
// the remote side are *outcome.Error: a 4xx/5xx greeting has Phase
// greeting; a failed TLS handshake has Phase tls and is Temporary, and the
// caller should redial and retry with DisableTLS (remembering the host in
// a TLSMemory). A STARTTLS command refused with 4xx/5xx is not an error:
// the session goes on in clear text.
func New(conn net.Conn, opts Options) (*Client, error) {
	if opts.LocalName == "" || strings.ContainsAny(opts.LocalName, " \t\r\n") {
		conn.Close()
		return nil, fmt.Errorf("smtpclient: Options.LocalName %q must be a non-empty name without spaces", opts.LocalName)
	}
	c := &Client{conn: conn, opts: opts, t: opts.Timeouts.withDefaults()}
	c.dw.conn = conn
	c.br = bufio.NewReaderSize(conn, readBufSize)
	c.bw = bufio.NewWriterSize(&c.dw, writeBufSize)
	c.setLimit(opts.Deadline, "session start deadline")
	err := c.start()
	c.setLimit(time.Time{}, "")
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) start() error {
	r, err := c.readReply(outcome.PhaseGreeting, c.t.Greeting, true)
	if err != nil {
		return err
	}
	c.greeting = r.text
	if r.code != 220 {
		if r.class() == 4 || r.class() == 5 {
			// RFC 5321 §3.1: after a refusing greeting the client should
			// still say QUIT; we don't care about its answer.
			c.quietQuit()
			return outcome.FromReply(outcome.PhaseGreeting, r.smtpError())
		}
		return c.protocolError(outcome.PhaseGreeting, r)
	}
	if err := c.hello(); err != nil {
		return err
	}
	if _, ok := c.ext["STARTTLS"]; ok && !c.opts.DisableTLS {
		return c.startTLS()
	}
	if c.opts.RequireTLS {
		c.quietQuit()
		return c.markBroken(&outcome.Error{Phase: outcome.PhaseTLS, Enhanced: enhNoTLS, Temporary: true,
			Message: c.peer() + " does not offer STARTTLS", Err: ErrTLSNotOffered})
	}
	return nil
}

// ErrTLSNotOffered is wrapped by New's error when Options.RequireTLS is
// set and the server did not offer STARTTLS or refused it.
var ErrTLSNotOffered = errors.New("smtpclient: STARTTLS not offered")

// hello says EHLO, or HELO when EHLO is refused permanently, and records
// the extensions.
func (c *Client) hello() error {
	c.ext = map[string]string{}
	c.pipelining, c.size, c.sizeMax, c.eightBit, c.utf8, c.dsn = false, false, 0, false, false, false
	c.chunking = false
	c.writeCmd(c.t.EHLO, "EHLO ", c.opts.LocalName, "")
	if err := c.flush(outcome.PhaseEHLO, "EHLO"); err != nil {
		return err
	}
	lines := make([]string, 0, 16)
	r, err := c.readReplyLines(outcome.PhaseEHLO, c.t.EHLO, &lines)
	if err != nil {
		return err
	}
	switch r.class() {
	case 2:
		c.parseExtensions(lines[1:])
		return nil
	case 5:
		// An old server: RFC 5321 §3.2 says fall back to HELO.
		c.writeCmd(c.t.EHLO, "HELO ", c.opts.LocalName, "")
		if err := c.flush(outcome.PhaseEHLO, "HELO"); err != nil {
			return err
		}
		r, err = c.readReply(outcome.PhaseEHLO, c.t.EHLO, false)
		if err != nil {
			return err
		}
		if r.class() == 2 {
			return nil
		}
	}
	if r.class() == 4 || r.class() == 5 {
		return outcome.FromReply(outcome.PhaseEHLO, r.smtpError())
	}
	return c.protocolError(outcome.PhaseEHLO, r)
}

func (c *Client) parseExtensions(lines []string) {
	for _, l := range lines {
		kw, params, _ := strings.Cut(l, " ")
		kw = strings.ToUpper(kw)
		c.ext[kw] = params
		switch kw {
		case "PIPELINING":
			c.pipelining = true
		case "CHUNKING":
			c.chunking = !c.opts.DisableChunking
		case "8BITMIME":
			c.eightBit = true
		case "SMTPUTF8":
			c.utf8 = true
		case "DSN":
			c.dsn = true
		case "SIZE":
			c.size = true
			// RFC 1870: "SIZE 0" or no number means no fixed limit.
			if n, err := strconv.ParseInt(strings.TrimSpace(params), 10, 64); err == nil && n > 0 {
				c.sizeMax = n
			}
		}
	}
}

func (c *Client) startTLS() error {
	c.writeCmd(c.t.StartTLS, "STARTTLS", "", "")
	if err := c.flush(outcome.PhaseTLS, "STARTTLS"); err != nil {
		return err
	}
	r, err := c.readReply(outcome.PhaseTLS, c.t.StartTLS, false)
	if err != nil {
		return err
	}
	if r.code != 220 {
		if r.class() == 4 || r.class() == 5 {
			if c.opts.RequireTLS {
				c.quietQuit()
				return c.markBroken(&outcome.Error{Phase: outcome.PhaseTLS, Enhanced: enhNoTLS, Temporary: true,
					Message: c.peer() + " refused STARTTLS: " + strconv.Itoa(r.code) + " " + r.text, Err: ErrTLSNotOffered})
			}
			// Refused (typically 454): opportunistic TLS goes on in clear
			// text; the server's state is unchanged, no new EHLO needed.
			return nil
		}
		return c.protocolError(outcome.PhaseTLS, r)
	}
	if c.br.Buffered() > 0 {
		// Anything sent before the handshake would be taken as if it came
		// through TLS: the STARTTLS command injection attack (CVE-2011-0411).
		return c.markBroken(&outcome.Error{Phase: outcome.PhaseTLS, Enhanced: enhTLS, Temporary: true,
			Message: "server sent data after the STARTTLS reply"})
	}
	tc := tls.Client(c.conn, c.tlsConfig())
	if err := c.conn.SetDeadline(earliest(time.Now().Add(c.t.StartTLS), c.limit)); err != nil {
		return c.ioError(outcome.PhaseTLS, "setting the TLS handshake deadline", err)
	}
	if err := tc.Handshake(); err != nil {
		if c.pastLimit(err) {
			// Not the TLS's fault: no reason to retry without it.
			return c.ioError(outcome.PhaseTLS, "TLS handshake with "+c.peer(), err)
		}
		return c.markBroken(&outcome.Error{Phase: outcome.PhaseTLS, Enhanced: enhTLS, Temporary: true,
			Message: "TLS handshake with " + c.peer(), Err: err})
	}
	c.conn = tc
	c.dw.conn = tc
	c.br.Reset(tc)
	c.bw.Reset(&c.dw)
	c.tls = true
	// RFC 3207 §4.2: the server forgets everything; say EHLO again, with
	// the same name.
	return c.hello()
}

func (c *Client) tlsConfig() *tls.Config {
	if c.opts.TLSConfig == nil {
		return &tls.Config{
			// Opportunistic TLS (RFC 7435): most MX certificates don't
			// verify, and an unverified session still beats clear text.
			InsecureSkipVerify: true, //nolint:gosec // see above
			ServerName:         c.opts.ServerName,
			MinVersion:         tls.VersionTLS12,
		}
	}
	cfg := c.opts.TLSConfig
	if cfg.ServerName == "" && c.opts.ServerName != "" || cfg.MinVersion < tls.VersionTLS12 {
		// TLS 1.2 at least, whatever the caller gave (issue 10).
		cfg = cfg.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = c.opts.ServerName
		}
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	}
	return cfg
}

// Send runs one mail transaction. With PIPELINING it writes MAIL, every
// RCPT and DATA in one flush (RFC 2920) and then reads the replies in order;
// without it, one command at a time.
//
// MAIL carries SIZE= when the server advertises SIZE, BODY=8BITMIME when
// env.EightBit and 8BITMIME is advertised (8-bit bodies go out unmarked to
// servers without it, as other MTAs do: converting them is the caller's,
// who sees Offers("8BITMIME")), and SMTPUTF8 when env.UTF8. When the server
// offers DSN, MAIL carries RET and ENVID and each RCPT its NOTIFY and ORCPT
// (RFC 3461); otherwise they are left out.
//
// When env.UTF8 and the server lacks SMTPUTF8, the envelope is downgraded
// (RFC 6531 §3.2): domains go out as A-labels (IDNA Lookup profile) without
// SMTPUTF8, a recipient whose local part is not ASCII fails alone,
// permanently (553 5.6.7, phase rcpt), and a sender whose local part is not
// ASCII fails the whole transaction (5.6.7). When env.Size is over the
// server's advertised SIZE nothing is sent and every recipient fails
// permanently (5.3.4). Addresses with control characters fail permanently
// the same way, without reaching the wire.
//
// The body goes with BDAT when the server offers CHUNKING and PIPELINING,
// else with DATA. A body in memory (Bytes) is written from the caller's
// slice; with BDAT only when its lines all end in CRLF and it is at most
// 1 MiB, as one BDAT LAST in the envelope's write. A streamed body is read
// a piece at a time: by DATA through the dot-stuffing writer, by BDAT in
// chunks of 128 to 256 KiB, line ends repaired to CRLF in both (see
// dotWriter and crlfAppender); at most 1 MiB of it goes in the envelope's
// pipelined group, a larger one after the RCPT replies. A Produce body
// always goes by DATA. The body is sent only if some recipient was
// accepted; otherwise the transaction is reset and Result.Data says "no
// valid recipients".
//
// A non-nil error means the connection is unusable (I/O error, timeout,
// malformed reply, a 421 anywhere, or a body that failed to read midway,
// 4.3.0 in phase data): the Result is nil, every recipient counts as a
// temporary failure, and the caller must Close the Client. The error is an
// *outcome.Error whose Phase says where it happened; a 421 keeps its code
// and text.
func (c *Client) Send(env Envelope, body Body) (*Result, error) {
	if err := c.usable(); err != nil {
		return nil, err
	}
	c.setLimit(time.Now().Add(c.t.Transaction), "transaction deadline ("+c.t.Transaction.String()+")")
	defer c.setLimit(time.Time{}, "")
	res := &Result{Rcpt: make([]*outcome.Error, len(env.To))}
	if len(env.To) == 0 {
		res.Data = outcome.Perm(outcome.PhaseRcpt, enhBadRcpt, "no recipients")
		return res, nil
	}
	switch {
	case c.sizeMax > 0 && env.Size > c.sizeMax:
		return failAll(res, outcome.Perm(outcome.PhaseMail, enhTooBig,
			"message size "+strconv.FormatInt(env.Size, 10)+" exceeds the remote limit of "+strconv.FormatInt(c.sizeMax, 10))), nil
	case !validPath(env.From):
		return failAll(res, outcome.Perm(outcome.PhaseMail, enhBadSender, "invalid sender address")), nil
	}
	if env.UTF8 && !c.utf8 {
		var fail *outcome.Error
		if env, fail = c.downgrade(env, res); fail != nil {
			return failAll(res, fail), nil
		}
	}
	valid := 0
	for i, to := range env.To {
		if res.Rcpt[i] != nil {
			continue // refused by the downgrade
		}
		if to == "" || !validPath(to) {
			res.Rcpt[i] = outcome.Perm(outcome.PhaseRcpt, enhBadRcpt, "invalid recipient address")
			continue
		}
		valid++
	}
	if valid == 0 {
		res.Data = noValidRecipients(res)
		return res, nil
	}
	if body.r == nil && body.produce == nil {
		b := body.b
		if c.pipelining && c.chunking && len(b) <= maxChunkedBody && isCRLFText(b) {
			return c.sendChunked(env, b, res)
		}
	} else if body.r != nil && c.pipelining && c.chunking {
		return c.sendChunkedStream(env, body, res)
	}
	if c.pipelining {
		return c.sendPipelined(env, body, res)
	}
	return c.sendSerial(env, body, res)
}

// downgrade returns env as it can go to a server without SMTPUTF8: the
// same addresses with their domains as A-labels, UTF8 off. A recipient that
// cannot be converted gets its failure in res; a sender that cannot fails
// the transaction (the returned error).
func (c *Client) downgrade(env Envelope, res *Result) (Envelope, *outcome.Error) {
	from, ok := asciiAddress(env.From)
	switch {
	case !ok:
		return env, outcome.Perm(outcome.PhaseMail, enhBadSender, "invalid sender domain name")
	case from == "" && env.From != "":
		return env, &outcome.Error{Phase: outcome.PhaseMail, Code: 553, Enhanced: enhNoUTF8, Local: true,
			Message: "sender requires SMTPUTF8, not offered by " + c.peer()}
	}
	out := env
	out.From, out.UTF8 = from, false
	out.To = make([]string, len(env.To))
	for i, to := range env.To {
		a, ok := asciiAddress(to)
		switch {
		case !ok:
			res.Rcpt[i] = outcome.Perm(outcome.PhaseRcpt, enhBadRcpt, "invalid recipient domain name")
		case a == "" && to != "":
			res.Rcpt[i] = &outcome.Error{Phase: outcome.PhaseRcpt, Code: 553, Enhanced: enhNoUTF8, Local: true,
				Message: "recipient requires SMTPUTF8, not offered by " + c.peer()}
		}
		out.To[i] = a
	}
	return out, nil
}

// asciiAddress converts addr's domain to A-labels. It returns "" when the
// local part is not ASCII (no conversion exists for it), and ok false when
// the domain is not a valid IDN.
func asciiAddress(addr string) (ascii string, ok bool) {
	if isASCII(addr) {
		return addr, true
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !isASCII(addr[:at]) {
		return "", true
	}
	d, err := idna.Lookup.ToASCII(addr[at+1:])
	if err != nil {
		return "", false
	}
	return addr[:at+1] + d, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func (c *Client) sendPipelined(env Envelope, body Body, res *Result) (*Result, error) {
	// RFC 2920 §3.1: RSET, MAIL, RCPT and DATA may all go in one group;
	// DATA is the last command of a group.
	rset := c.writeEnvelope(env, res)
	c.writeCmd(c.t.Mail, "DATA", "", "")
	if err := c.flush(outcome.PhaseMail, "MAIL/RCPT/DATA"); err != nil {
		return nil, err
	}
	mailErr, accepted, err := c.readEnvelope(env, res, rset)
	if err != nil {
		return nil, err
	}
	dr, err := c.readReply(outcome.PhaseData, c.t.DataInit, false)
	if err != nil {
		return nil, err
	}
	if mailErr != nil && dr.code != 354 {
		// No transaction was opened: nothing to reset.
		res.Data = mailErr
		return res, nil
	}
	res, err = c.finishData(res, body, accepted, dr)
	if res != nil && mailErr != nil {
		res.Data = mailErr
	}
	return res, err
}

// sendChunked sends the whole transaction in one write, the body as a
// single BDAT LAST chunk (RFC 3030 with RFC 2920 pipelining), and reads its
// replies in one go: one round trip per message instead of DATA's two (one
// for the 354, one for the end of data). The BDAT reply plays the part of
// the reply after the end of data.
func (c *Client) sendChunked(env Envelope, body []byte, res *Result) (*Result, error) {
	rset := c.writeEnvelope(env, res)
	c.writeCmd(c.t.Mail, "BDAT ", strconv.Itoa(len(body)), " LAST")
	c.dw.timeout = c.t.DataBlock
	c.bw.Write(body)
	if err := c.flush(outcome.PhaseData, "MAIL/RCPT/BDAT and the message"); err != nil {
		return nil, err
	}
	// The server consumes the chunk whatever its replies, but the
	// transaction is over only once BDAT succeeded: until then the session
	// stays dirty (a pipelined RSET before the next one costs nothing).
	mailErr, accepted, err := c.readEnvelope(env, res, rset)
	c.dirty = true
	if err != nil {
		return nil, err
	}
	r, err := c.readReply(outcome.PhaseDot, c.t.DataTerm, true)
	if err != nil {
		return nil, err
	}
	switch {
	case mailErr != nil:
		res.Data = mailErr
		return res, nil
	case accepted == 0:
		// The server refuses BDAT without a valid recipient.
		res.Data = noValidRecipients(res)
		return res, nil
	}
	if r.class() == 2 {
		c.dirty = false
	}
	return c.endOfData(res, r)
}

// writeEnvelope buffers the pipelined group's start: RSET when a
// transaction may be open (rset reports it), MAIL, and RCPT for each
// recipient not refused already.
func (c *Client) writeEnvelope(env Envelope, res *Result) (rset bool) {
	rset = c.dirty
	if rset {
		c.writeCmd(c.t.Mail, "RSET", "", "")
	}
	c.writeMail(env)
	for i := range env.To {
		if res.Rcpt[i] == nil {
			c.writeRcpt(env, i)
		}
	}
	return rset
}

// readEnvelope reads the replies to what writeEnvelope sent, recording
// each refused recipient in res, and returns the MAIL refusal (nil when
// accepted) and how many recipients were accepted.
func (c *Client) readEnvelope(env Envelope, res *Result, rset bool) (mailErr *outcome.Error, accepted int, err error) {
	if rset {
		if err := c.readRset(); err != nil {
			return nil, 0, err
		}
	}
	mailErr, err = c.readMail()
	if err != nil {
		return nil, 0, err
	}
	for i := range env.To {
		if res.Rcpt[i] != nil {
			continue // never sent
		}
		rerr, err := c.readRcpt()
		if err != nil {
			return nil, 0, err
		}
		switch {
		case mailErr != nil:
			// Whatever a server says to RCPT after refusing MAIL, the
			// MAIL reply is the reason.
			res.Rcpt[i] = mailErr
		case rerr != nil:
			res.Rcpt[i] = rerr
		default:
			accepted++
		}
	}
	return mailErr, accepted, nil
}

// isCRLFText reports whether b can go out as a BDAT chunk unchanged: every
// line ends in CRLF, including the last, and there is no bare CR or LF.
// DATA's writer repairs such bodies on the way; BDAT sends bytes as they
// are. Bodies from the spool always pass (injection normalizes them).
func isCRLFText(b []byte) bool {
	if len(b) < 2 || b[len(b)-2] != '\r' || b[len(b)-1] != '\n' {
		return false
	}
	for len(b) > 0 {
		cr := bytes.IndexByte(b, '\r')
		if cr < 0 || cr+1 == len(b) || b[cr+1] != '\n' || bytes.IndexByte(b[:cr], '\n') >= 0 {
			return false
		}
		b = b[cr+2:]
	}
	return true
}

func (c *Client) sendSerial(env Envelope, body Body, res *Result) (*Result, error) {
	if c.dirty {
		if err := c.Reset(); err != nil {
			return nil, err
		}
	}
	c.writeMail(env)
	if err := c.flush(outcome.PhaseMail, "MAIL"); err != nil {
		return nil, err
	}
	mailErr, err := c.readMail()
	if err != nil {
		return nil, err
	}
	if mailErr != nil {
		failAll(res, mailErr)
		return res, nil
	}
	c.dirty = true
	accepted := 0
	for i := range env.To {
		if res.Rcpt[i] != nil {
			continue
		}
		c.writeRcpt(env, i)
		c.dw.timeout = c.t.Rcpt
		if err := c.flush(outcome.PhaseRcpt, "RCPT"); err != nil {
			return nil, err
		}
		rerr, err := c.readRcpt()
		if err != nil {
			return nil, err
		}
		if rerr != nil {
			res.Rcpt[i] = rerr
			continue
		}
		accepted++
	}
	if accepted == 0 {
		// Never send DATA without a recipient; RSET comes with the next
		// transaction (or not at all, before QUIT).
		res.Data = noValidRecipients(res)
		return res, nil
	}
	c.writeCmd(c.t.DataInit, "DATA", "", "")
	if err := c.flush(outcome.PhaseData, "DATA"); err != nil {
		return nil, err
	}
	dr, err := c.readReply(outcome.PhaseData, c.t.DataInit, false)
	if err != nil {
		return nil, err
	}
	return c.finishData(res, body, accepted, dr)
}

// finishData acts on the reply to DATA: sends the body after a 354 when
// some recipient was accepted, and reads the final reply.
func (c *Client) finishData(res *Result, body Body, accepted int, dr reply) (*Result, error) {
	if dr.code != 354 {
		// MAIL was accepted (else the caller returned): the transaction
		// stays open on the server until the next RSET.
		c.dirty = true
		if accepted == 0 {
			// The usual answer to a pipelined DATA after every RCPT failed.
			res.Data = noValidRecipients(res)
			return res, nil
		}
		if dr.class() == 4 || dr.class() == 5 {
			res.Data = outcome.FromReply(outcome.PhaseData, dr.smtpError())
			return res, nil
		}
		return nil, c.protocolError(outcome.PhaseData, dr)
	}
	if accepted == 0 {
		// RFC 2920 §3.1: a server that says 354 with no valid recipient
		// must get no message data; the client sends the end of data
		// alone, and the server fails the empty transaction. Its reply
		// doesn't matter, except a 421 or a broken connection.
		c.dw.timeout = c.t.DataTerm
		c.bw.WriteString(".\r\n")
		if err := c.flush(outcome.PhaseDot, "end of data"); err != nil {
			return nil, err
		}
		if _, err := c.readReply(outcome.PhaseDot, c.t.DataTerm, false); err != nil {
			return nil, err
		}
		c.dirty = true // in case the server kept any state: RSET costs nothing when pipelined
		res.Data = noValidRecipients(res)
		return res, nil
	}
	c.dw.timeout = c.t.DataBlock
	if err := c.writeData(body); err != nil {
		return nil, err
	}
	if err := c.flush(outcome.PhaseData, "message body"); err != nil {
		return nil, err
	}
	c.dirty = false // the end of data ends the transaction, whatever the reply
	r, err := c.readReply(outcome.PhaseDot, c.t.DataTerm, true)
	if err != nil {
		return nil, err
	}
	return c.endOfData(res, r)
}

// endOfData records the reply that ends a transaction (after the end of
// data, or to BDAT LAST): 2xx delivered, 4xx/5xx refused.
func (c *Client) endOfData(res *Result, r reply) (*Result, error) {
	switch r.class() {
	case 2:
		res.DotReply, res.DotEnhanced = r.text, r.enh
		return res, nil
	case 4, 5:
		res.Data = outcome.FromReply(outcome.PhaseDot, r.smtpError())
		return res, nil
	}
	return nil, c.protocolError(outcome.PhaseDot, r)
}

// readMail reads the MAIL reply: (nil, nil) accepted, (rejection, nil)
// refused, (nil, err) connection unusable.
func (c *Client) readMail() (*outcome.Error, error) {
	return c.readAccept(outcome.PhaseMail, c.t.Mail)
}

// readRcpt is readMail for one RCPT.
func (c *Client) readRcpt() (*outcome.Error, error) {
	return c.readAccept(outcome.PhaseRcpt, c.t.Rcpt)
}

// readAccept reads a reply that accepts (2xx) or refuses (4xx/5xx) one
// envelope command of the given phase.
func (c *Client) readAccept(phase outcome.Phase, timeout time.Duration) (*outcome.Error, error) {
	r, err := c.readReply(phase, timeout, false)
	if err != nil {
		return nil, err
	}
	switch r.class() {
	case 2:
		return nil, nil
	case 4, 5:
		return outcome.FromReply(phase, r.smtpError()), nil
	}
	return nil, c.protocolError(phase, r)
}

// readRset reads an RSET reply; anything but 2xx leaves the session in an
// unknown state, so the connection is given up.
func (c *Client) readRset() error {
	r, err := c.readReply(outcome.PhaseMail, c.t.Rset, false)
	if err != nil {
		return err
	}
	if r.class() != 2 {
		r.text = "RSET refused: " + r.text
		return c.markBroken(outcome.FromReply(outcome.PhaseMail, r.smtpError()))
	}
	c.dirty = false
	return nil
}

// writeMail buffers the MAIL command with the parameters the server takes.
func (c *Client) writeMail(env Envelope) {
	c.dw.timeout = c.t.Mail
	b := append(c.cmd[:0], "MAIL FROM:<"...)
	b = append(b, env.From...)
	b = append(b, '>')
	if c.size && env.Size > 0 {
		b = append(b, " SIZE="...)
		b = strconv.AppendInt(b, env.Size, 10)
	}
	if env.EightBit && c.eightBit {
		b = append(b, " BODY=8BITMIME"...)
	}
	if env.UTF8 && c.utf8 {
		b = append(b, " SMTPUTF8"...)
	}
	if c.dsn {
		if env.Ret == "FULL" || env.Ret == "HDRS" {
			b = append(b, " RET="...)
			b = append(b, env.Ret...)
		}
		if env.EnvID != "" && printableASCII(env.EnvID) && len(env.EnvID) <= maxEnvID {
			b = append(b, " ENVID="...)
			b = appendXtext(b, env.EnvID)
		}
	}
	b = append(b, "\r\n"...)
	c.bw.Write(b)
	c.cmd = b
}

// writeRcpt buffers RCPT for env.To[i], with its DSN parameters when the
// server offers DSN.
func (c *Client) writeRcpt(env Envelope, i int) {
	b := append(c.cmd[:0], "RCPT TO:<"...)
	b = append(b, env.To[i]...)
	b = append(b, '>')
	if c.dsn && i < len(env.DSN) {
		b = appendRcptDSN(b, env.DSN[i])
	}
	b = append(b, "\r\n"...)
	c.bw.Write(b)
	c.cmd = b
}

// writeCmd buffers one command line a+b+c under the given write timeout.
// Three fixed parts cover every command we send, without fmt or a
// variadic slice on the hot path.
func (c *Client) writeCmd(timeout time.Duration, a, b, cc string) {
	c.dw.timeout = timeout
	c.bw.WriteString(a)
	c.bw.WriteString(b)
	c.bw.WriteString(cc)
	c.bw.WriteString("\r\n")
}

func (c *Client) flush(phase outcome.Phase, what string) error {
	if err := c.bw.Flush(); err != nil {
		return c.ioError(phase, "writing "+what, err)
	}
	return nil
}

func (c *Client) readReply(phase outcome.Phase, timeout time.Duration, wantText bool) (reply, error) {
	return c.readReplyInto(phase, timeout, nil, wantText)
}

func (c *Client) readReplyLines(phase outcome.Phase, timeout time.Duration, lines *[]string) (reply, error) {
	return c.readReplyInto(phase, timeout, lines, true)
}

// readReplyInto reads one reply under a read deadline. A 421 (service
// closing, RFC 5321 §3.8) is an error wherever it comes: the server is
// about to close the connection.
func (c *Client) readReplyInto(phase outcome.Phase, timeout time.Duration, lines *[]string, wantText bool) (reply, error) {
	if err := c.conn.SetReadDeadline(earliest(time.Now().Add(timeout), c.limit)); err != nil {
		return reply{}, c.ioError(phase, "setting a read deadline", err)
	}
	r, err := readReply(c.br, lines, wantText)
	if err != nil {
		if errors.Is(err, errMalformed) {
			return reply{}, c.markBroken(&outcome.Error{Phase: phase, Enhanced: enhProtocol, Temporary: true,
				Message: "reading reply from " + c.peer() + ": " + err.Error(), Err: err})
		}
		return reply{}, c.ioError(phase, "reading reply from "+c.peer(), err)
	}
	if r.code == 421 {
		return r, c.markBroken(outcome.FromReply(phase, r.smtpError()))
	}
	return r, nil
}

// Reset sends RSET, ending any open transaction. An error means the
// connection is unusable and must be closed. Send resets by itself when
// needed; Reset is for a caller that wants a clean state explicitly.
func (c *Client) Reset() error {
	if err := c.usable(); err != nil {
		return err
	}
	c.writeCmd(c.t.Rset, "RSET", "", "")
	if err := c.flush(outcome.PhaseMail, "RSET"); err != nil {
		return err
	}
	return c.readRset()
}

// Quit says QUIT, reads the reply and closes the connection. On a
// connection already unusable it only closes. The error is the first of
// the exchange's and the close's; the connection is closed either way.
func (c *Client) Quit() error {
	if c.closed {
		return net.ErrClosed
	}
	var err error
	if c.broken == nil {
		c.writeCmd(c.t.Quit, "QUIT", "", "")
		err = c.flush(outcome.PhaseQuit, "QUIT")
		if err == nil {
			_, err = c.readReply(outcome.PhaseQuit, c.t.Quit, false)
		}
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// quietQuit says QUIT without waiting for the answer, on a session that is
// being abandoned anyway.
func (c *Client) quietQuit() {
	c.writeCmd(c.t.Quit, "QUIT", "", "")
	c.bw.Flush()
}

// Close closes the connection without QUIT. Calling it again does nothing.
func (c *Client) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if c.broken == nil {
		c.broken = &outcome.Error{Phase: outcome.PhaseQuit, Enhanced: enhBadConnection, Temporary: true,
			Message: "connection closed"}
	}
	return c.conn.Close()
}

// TLS reports whether STARTTLS is in effect.
func (c *Client) TLS() bool { return c.tls }

// TLSConnectionState returns the TLS state when STARTTLS is in effect.
func (c *Client) TLSConnectionState() (tls.ConnectionState, bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return tls.ConnectionState{}, false
	}
	return tc.ConnectionState(), true
}

// Extensions returns a copy of the extensions of the last EHLO reply:
// upper-case keyword to its parameters ("SIZE" → "35882577"). Empty after
// a HELO fallback.
func (c *Client) Extensions() map[string]string { return maps.Clone(c.ext) }

// Offers reports whether the last EHLO reply named the extension keyword
// (upper case: "8BITMIME", "SMTPUTF8", "DSN"), without Extensions' copy.
func (c *Client) Offers(keyword string) bool {
	_, ok := c.ext[keyword]
	return ok
}

// Greeting returns the text of the server's greeting (after "220 ").
func (c *Client) Greeting() string { return c.greeting }

// peer names the remote side in messages: the MX name, else its address.
func (c *Client) peer() string {
	if c.opts.ServerName != "" {
		return c.opts.ServerName
	}
	return c.conn.RemoteAddr().String()
}

func (c *Client) usable() error {
	if c.broken != nil {
		return &outcome.Error{Phase: c.broken.Phase, Enhanced: enhBadConnection, Temporary: true,
			Message: "connection unusable", Err: c.broken}
	}
	return nil
}

// markBroken records that the connection cannot carry another command and
// returns e.
func (c *Client) markBroken(e *outcome.Error) *outcome.Error {
	c.broken = e
	return e
}

func (c *Client) ioError(phase outcome.Phase, doing string, err error) error {
	if c.pastLimit(err) {
		doing += ": " + c.limitWhat + " exceeded"
		err = fmt.Errorf("%w: %w", ErrDeadline, err)
	} else {
		doing += ": " + cause(err)
	}
	return c.markBroken(&outcome.Error{Phase: phase, Enhanced: enhBadConnection, Temporary: true,
		Message: doing, Err: err})
}

// cause says briefly why an I/O failed, for the delivery log's response
// (which shows Message, not the error chain): an operator reading a
// deferral needs to tell a timeout from a reset from a close.
func cause(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by the server"
	case errors.Is(err, syscall.EPIPE):
		return "connection closed by the server (broken pipe)"
	}
	return err.Error()
}

// pastLimit reports whether err is a timeout caused by the overall
// deadline rather than a per-phase one.
func (c *Client) pastLimit(err error) bool {
	var ne net.Error
	return !c.limit.IsZero() && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(c.limit)
}

// protocolError is a reply of a class the command cannot get (a 3xx to
// MAIL, a 2xx to DATA): the server and we disagree on the session's state.
func (c *Client) protocolError(phase outcome.Phase, r reply) error {
	return c.markBroken(&outcome.Error{Phase: phase, Code: r.code, Enhanced: enhProtocol, Temporary: true,
		Message: "unexpected reply " + strconv.Itoa(r.code) + " " + r.text})
}

// failAll gives every recipient (and the transaction) the same error.
func failAll(res *Result, e *outcome.Error) *Result {
	for i := range res.Rcpt {
		if res.Rcpt[i] == nil {
			res.Rcpt[i] = e
		}
	}
	res.Data = e
	return res
}

// noValidRecipients is Result.Data when every recipient failed; it is
// temporary when any recipient's failure is, so that a caller looking only
// at Data retries rather than bounces.
func noValidRecipients(res *Result) *outcome.Error {
	temp := false
	for _, e := range res.Rcpt {
		if e != nil && e.Temporary {
			temp = true
		}
	}
	return &outcome.Error{Phase: outcome.PhaseRcpt, Message: "no valid recipients", Temporary: temp}
}

// validPath reports whether an address can go between < and > on a command
// line: no control characters (CR/LF would inject commands), no brackets,
// and not absurdly long. Syntax beyond that is the remote side's to judge.
func validPath(s string) bool {
	if len(s) > maxPath {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < 0x20 || b == 0x7f || b == '<' || b == '>' {
			return false
		}
	}
	return true
}
