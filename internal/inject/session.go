package inject

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/conform"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/spool"
)

func rep(code int, a, b, c int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{a, b, c}, Message: msg}
}

// Replies to ESMTP usage after HELO, where no extension was offered.
var (
	errParamsAfterHelo = rep(555, 5, 5, 4, "Parameters not recognized: no extensions after HELO")
	errBdatAfterHelo   = rep(503, 5, 5, 1, "BDAT not offered after HELO")
)

// The replies this package gives. Each one of 400 or more is also a
// "rejected" record.
var (
	errRelayDenied   = rep(550, 5, 7, 1, "Relaying denied")
	errTooManyRcpt   = rep(452, 4, 5, 3, "Too many recipients")
	errTooBig        = rep(552, 5, 3, 4, "Message size exceeds fixed maximum message size")
	errNestedMail    = rep(503, 5, 5, 1, "Error: nested MAIL command")
	errNoSpace       = rep(452, 4, 3, 1, "Insufficient system storage")
	errLocal         = rep(451, 4, 3, 0, "Temporary local problem, try again later")
	errAuthFailed    = rep(535, 5, 7, 8, "Authentication credentials invalid")
	errAuthTLS       = rep(538, 5, 7, 11, "Encryption required for requested authentication mechanism")
	errAuthNone      = rep(502, 5, 7, 0, "Authentication not available")
	errAuthMech      = rep(504, 5, 7, 4, "Unrecognized authentication type")
	errAuthSyntax    = rep(501, 5, 5, 4, "Syntax: AUTH mechanism [initial-response]")
	errAuthInTxn     = rep(503, 5, 5, 1, "AUTH not permitted during a mail transaction")
	errAuthBusy      = rep(454, 4, 7, 0, "Too many authentications in progress, try again later")
	errAuthCancel    = rep(501, 5, 0, 0, "Authentication cancelled")
	errAuthBase64    = rep(501, 5, 5, 2, "Invalid base64 data")
	errAuthAgain     = rep(503, 5, 5, 1, "Already authenticated")
	errLineTooLong   = rep(500, 5, 5, 2, "Line too long")
	errBareLF        = rep(500, 5, 5, 2, "Command line must end with CRLF, not a bare LF")
	errCmdCtl        = rep(500, 5, 5, 2, "Command line contains a bare CR or a NUL")
	errUnknownCmd    = rep(500, 5, 5, 2, "Command not recognized")
	errNoHelo        = rep(503, 5, 5, 1, "Send EHLO or HELO first")
	errNoMail        = rep(503, 5, 5, 1, "Missing MAIL FROM command")
	errNoRcpt        = rep(503, 5, 5, 1, "Missing RCPT TO command")
	errBdatOrder     = rep(503, 5, 5, 1, "DATA not permitted after BDAT")
	errMailSyntax    = rep(501, 5, 5, 2, "Was expecting MAIL arg syntax of FROM:<address>")
	errRcptSyntax    = rep(501, 5, 5, 2, "Was expecting RCPT arg syntax of TO:<address>")
	errNoArgs        = rep(501, 5, 5, 4, "Syntax error: no parameters allowed")
	errHeloSyntax    = rep(501, 5, 5, 4, "Domain/address argument required")
	errBdatSyntax    = rep(501, 5, 5, 4, "Syntax: BDAT size [LAST]")
	errNoTLS         = rep(502, 5, 5, 1, "STARTTLS not available")
	errTLSAgain      = rep(503, 5, 5, 1, "Already running TLS")
	errTLSInTxn      = rep(503, 5, 5, 1, "STARTTLS not permitted during a mail transaction")
	errLiteral       = rep(553, 5, 1, 3, "Address literals not accepted")
	errBusy          = rep(451, 4, 3, 2, "System busy, try again later")
	errQueueFull     = rep(421, 4, 3, 2, "Queue above its high watermark, try again later")
	errQueueFullMail = rep(452, 4, 3, 2, "Queue above its high watermark, try again later")
	errNUL           = rep(554, 5, 6, 0, "Message contains NUL characters")
	errLongLines     = rep(554, 5, 6, 0, "Message contains lines longer than 998 characters")
	errHops          = rep(554, 5, 4, 6, "Too many hops (mail loop?)")
	errMalformedHdr  = rep(550, 5, 7, 0, "Malformed header section")
	errIdle          = rep(421, 4, 4, 2, "Idle timeout, bye bye")
	errDataTimeout   = rep(421, 4, 4, 2, "Timeout reading message data, closing connection")
	errSessionTime   = rep(421, 4, 7, 0, "Session too long, closing connection")
	errSessionCmds   = rep(421, 4, 7, 0, "Too many commands, closing connection")
	errSizeParamBig  = rep(552, 5, 3, 4, "Message size exceeds fixed maximum message size")
	errRcptNoAddress = rep(501, 5, 1, 3, "Bad recipient address syntax")
)

// Command line bounds. RFC 5321 4.5.3.1.4 gives 512 octets with CRLF;
// each offered extension may add to it. MAIL and RCPT carry parameters
// (SIZE, BODY, RET, ENVID up to 100 xtext octets, NOTIFY, ORCPT up to 500,
// AUTH=, SMTPUTF8) on top of a 256-octet path: 4096 covers them with room.
// AUTH lines carry base64 SASL responses; RFC 4954 4 raises their limit to
// 12288.
const (
	maxCmdLine  = 512 - 2
	maxMailLine = 4096 - 2
	maxAuthLine = 12288 - 2
	// maxHeaderSection bounds the header section read ahead of the body:
	// X-Binding* and Message-ID are looked for, and Received fields
	// counted, only in this much of the message's head.
	maxHeaderSection = 64 << 10
	// maxBdatChunk bounds one BDAT's size argument's digits (18 fit int64).
	maxBdatDigits = 18
)

// rcpt is one accepted recipient.
type rcpt struct {
	addr   string
	notify spool.Notify
	orcpt  string
}

// session is the SMTP state of one connection; it lives in conn and is
// used only by the connection's goroutine.
type session struct {
	helo     string // the EHLO/HELO argument, "" before one
	esmtp    bool   // EHLO rather than HELO
	tls      bool
	authUser string
	cmds     int

	// The transaction, from MAIL to the end of DATA, BDAT LAST or RSET.
	hasFrom bool
	from    string
	mp      mailParams
	rcpts   []rcpt
	seen    map[string]struct{}
	bdat    *msgWriter // a BDAT transfer under way
}

// serve runs the session until QUIT, an error, or shutdown.
func (c *conn) serve() {
	s := c.srv
	c.rw = c.nc
	c.buf = s.getBlock()
	defer s.blocks.Put(c.buf)
	defer c.abortBdat()
	if c.implicitTLS {
		if err := c.startTLS(s.tlsConfig(), s.handshakeTimeout()); err != nil {
			s.log.Debug("inject: implicit TLS handshake", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
			return
		}
		c.sess.tls = true
	}
	c.reply(220, smtp.NoEnhancedCode, s.opts.Hostname+" ESMTP mtad")
	if c.flush() != nil {
		return
	}
	for {
		if s.draining.Load() && !c.inTxn.Load() {
			// Replies still queued (the 250 of a transaction that ended
			// in the same read as a following command) go out first:
			// the message is stored, and a client that missed its 250
			// would send it again.
			c.flush()
			return
		}
		line, tooLong, err := c.readLine(maxAuthLine, s.opts.ReadTimeout)
		if err != nil {
			if isTimeout(err) {
				c.fail("", errIdle)
				c.flush()
			} else if !errors.Is(err, errQuietClose) && !errors.Is(err, io.EOF) {
				s.log.Debug("inject: reading command", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
			}
			return
		}
		if !c.command(line, tooLong) {
			c.flush()
			return
		}
		if c.flushIfDrained() != nil {
			return
		}
	}
}

// txnGrace is how far past max_session_time a transaction in progress may
// go on, so that a message is not cut off at the limit, while a client
// cannot hold a session open by never ending one.
const txnGrace = 5 * time.Minute

// withinLimits checks the per-session limits before the command verb
// (an over-long or unknown one included, so junk cannot keep a session
// alive). Between transactions they apply as set; inside one, the time
// limit gets txnGrace more and the command limit twice the count. Past a
// limit the session is answered 421 4.7.0 and ends.
func (c *conn) withinLimits(verb string) bool {
	o := &c.srv.opts
	inTxn := c.inTxn.Load()
	if lim := o.MaxSessionTime; lim > 0 {
		if inTxn {
			lim += txnGrace
		}
		if time.Since(time.Unix(0, c.start.Load())) > lim {
			c.fail(verb, errSessionTime)
			return false
		}
	}
	if lim := o.MaxCommands; lim > 0 {
		if inTxn {
			lim *= 2
		}
		if c.sess.cmds > lim {
			c.fail(verb, errSessionCmds)
			return false
		}
	}
	return true
}

// commandVerb is the upper-cased verb of a command line, cut to a
// length fit for a log record.
func commandVerb(line []byte) string {
	v := line
	if i := bytes.IndexByte(v, ' '); i >= 0 {
		v = v[:i]
	}
	if len(v) > 16 {
		v = v[:16]
	}
	return strings.ToUpper(string(v))
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.opts.ReadTimeout > 0 {
		return s.opts.ReadTimeout
	}
	return time.Minute
}

func (s *Server) getBlock() *[readBlock]byte {
	if b, ok := s.blocks.Get().(*[readBlock]byte); ok {
		return b
	}
	return new([readBlock]byte)
}

// fail queues a refusal and logs it as a "rejected" record.
func (c *conn) fail(command string, e *smtp.SMTPError) {
	c.srv.rejected(c.ip, command, e)
	c.reply(e.Code, e.EnhancedCode, e.Message)
}

func (s *Server) rejected(ip netip.Addr, command string, e *smtp.SMTPError) {
	logging.Rejected{
		ClientIP: ipString(ip),
		Command:  command,
		Code:     e.Code,
		Enhanced: enhancedString(e.EnhancedCode),
		Reply:    e.Message,
	}.Log(s.log)
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

func enhancedString(c smtp.EnhancedCode) string {
	if c == smtp.NoEnhancedCode || c == smtp.EnhancedCodeNotSet {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// command runs one command line; false ends the session.
func (c *conn) command(line []byte, tooLong bool) bool {
	ss := &c.sess
	ss.cmds++
	// Cut as in the log records: no verb is longer, and a junk line must
	// not become a 500-octet "command" field.
	verb := commandVerb(line)
	if !c.withinLimits(verb) {
		return false
	}
	if tooLong {
		c.fail("", errLineTooLong)
		return true
	}
	// RFC 5321 2.3.8: a line ends with CRLF and nothing else. A command
	// ended by a bare LF, or holding a bare CR or NUL, is refused, not
	// repaired: what ends a command must be what every hop in front of us
	// thinks ends it (the SMTP smuggling lesson, applied to commands), and
	// a CR kept in a HELO name or an address would reach a header.
	// Postfix 3.9 does the same by default (smtpd_forbid_bare_newline).
	if c.bareLF {
		c.fail(verb, errBareLF)
		return true
	}
	if bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0 {
		c.fail(verb, errCmdCtl)
		return true
	}
	verbEnd := bytes.IndexByte(line, ' ')
	if verbEnd < 0 {
		verbEnd = len(line)
	}
	arg := ""
	if verbEnd < len(line) {
		arg = string(line[verbEnd+1:])
	}
	switch limit := len(line); {
	case verb == "AUTH":
	case verb == "MAIL" || verb == "RCPT":
		if limit > maxMailLine {
			c.fail(verb, errLineTooLong)
			return true
		}
	case limit > maxCmdLine:
		c.fail(verb, errLineTooLong)
		return true
	}
	switch verb {
	case "EHLO", "HELO":
		return c.hello(verb, arg)
	case "STARTTLS":
		return c.cmdStartTLS(arg)
	case "AUTH":
		return c.auth(arg)
	case "MAIL":
		c.mail(arg)
	case "RCPT":
		c.rcpt(arg)
	case "DATA":
		return c.data(arg)
	case "BDAT":
		return c.bdatCmd(arg)
	case "RSET":
		if arg != "" {
			c.fail(verb, errNoArgs)
			return true
		}
		c.resetTxn()
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Session reset")
	case "NOOP":
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Ok")
	case "QUIT":
		c.reply(221, smtp.EnhancedCode{2, 0, 0}, "Bye")
		return false
	case "VRFY":
		c.reply(252, smtp.EnhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery")
	case "HELP":
		c.reply(214, smtp.EnhancedCode{2, 0, 0}, "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
	default:
		c.fail(verb, errUnknownCmd)
	}
	return true
}

func (c *conn) hello(verb, arg string) bool {
	ss := &c.sess
	name, _, _ := strings.Cut(strings.TrimLeft(arg, " "), " ")
	if name == "" {
		c.fail(verb, errHeloSyntax)
		return true
	}
	c.resetTxn()
	ss.helo, ss.esmtp = name, verb == "EHLO"
	host := c.srv.opts.Hostname
	if !ss.esmtp {
		c.reply(250, smtp.NoEnhancedCode, host+" Hello "+traceToken(name))
		return true
	}
	exts := []string{
		host + " Hello " + traceToken(name),
		"PIPELINING",
		"8BITMIME",
		"SMTPUTF8",
		"SIZE " + strconv.FormatInt(c.srv.opts.MaxMessageSize, 10),
		"CHUNKING",
		"ENHANCEDSTATUSCODES",
		"DSN",
	}
	if c.srv.tlsConfig() != nil && !ss.tls {
		exts = append(exts, "STARTTLS")
	}
	if c.srv.authOffered(ss.tls, c.ip) {
		exts = append(exts, "AUTH PLAIN LOGIN")
	}
	for i, e := range exts {
		sep := byte('-')
		if i == len(exts)-1 {
			sep = ' '
		}
		c.out = append(c.out, "250"...)
		c.out = append(c.out, sep)
		c.out = append(c.out, e...)
		c.out = append(c.out, '\r', '\n')
	}
	return true
}

func (c *conn) cmdStartTLS(arg string) bool {
	ss := &c.sess
	conf := c.srv.tlsConfig() // once: a reload may swap it
	switch {
	case arg != "":
		c.fail("STARTTLS", errNoArgs)
		return true
	case ss.tls:
		c.fail("STARTTLS", errTLSAgain)
		return true
	case conf == nil:
		c.fail("STARTTLS", errNoTLS)
		return true
	case c.inTxn.Load():
		c.fail("STARTTLS", errTLSInTxn)
		return true
	}
	c.reply(220, smtp.EnhancedCode{2, 0, 0}, "Ready to start TLS")
	if c.flush() != nil {
		return false
	}
	if err := c.startTLS(conf, c.srv.handshakeTimeout()); err != nil {
		c.srv.log.Debug("inject: STARTTLS handshake", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
		return false
	}
	// RFC 3207 4.2: forget everything learnt before TLS.
	c.sess = session{tls: true, cmds: ss.cmds}
	return true
}

// resetTxn ends the transaction (RSET, EHLO, the end of DATA).
func (c *conn) resetTxn() {
	c.abortBdat()
	ss := &c.sess
	ss.hasFrom = false
	ss.from = ""
	ss.mp = mailParams{}
	ss.rcpts = ss.rcpts[:0]
	clear(ss.seen)
	c.inTxn.Store(false)
}

func (c *conn) abortBdat() {
	if c.sess.bdat != nil {
		c.sess.bdat.abort()
		c.sess.bdat = nil
	}
}

// cutPrefixFold is strings.CutPrefix, case-insensitive.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

func (c *conn) mail(arg string) {
	s := c.srv
	ss := &c.sess
	switch {
	case ss.helo == "":
		c.fail("MAIL", errNoHelo)
		return
	case ss.hasFrom:
		c.fail("MAIL", errNestedMail)
		return
	}
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		c.fail("MAIL", errMailSyntax)
		return
	}
	from, params, err := parsePath(rest)
	if err != nil {
		c.fail("MAIL", errMailSyntax)
		return
	}
	if !ss.esmtp && strings.TrimSpace(params) != "" {
		c.fail("MAIL", errParamsAfterHelo)
		return
	}
	mp, e := parseMailParams(params)
	if e != nil {
		c.fail("MAIL", e)
		return
	}
	if mp.size > s.opts.MaxMessageSize {
		c.fail("MAIL", errSizeParamBig)
		return
	}
	if from != "" {
		canon, e := checkAddress(from, mp.utf8, senderAddr)
		if e != nil {
			c.fail("MAIL", e)
			return
		}
		from = canon
	}
	if s.busy != nil && s.busy.Busy() {
		c.fail("MAIL", errBusy)
		return
	}
	if s.opts.Watermark.Over() {
		c.fail("MAIL", errQueueFullMail)
		return
	}
	if lowSpace(s.space) {
		// Refused now rather than after the body: the store would refuse
		// the message anyway (spool.min_free), and the client keeps it.
		c.fail("MAIL", errNoSpace)
		return
	}
	ss.hasFrom, ss.from, ss.mp = true, from, mp
	ss.rcpts = ss.rcpts[:0]
	c.inTxn.Store(true)
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Roger, accepting mail from <"+from+">")
}

// rcpt checks in order: path syntax, relay permission, address syntax,
// parameters, literal policy, the recipient limit. A duplicate is
// acknowledged and stored once.
func (c *conn) rcpt(arg string) {
	s := c.srv
	ss := &c.sess
	if !ss.hasFrom {
		c.fail("RCPT", errNoMail)
		return
	}
	if ss.bdat != nil {
		c.fail("RCPT", errBdatOrder)
		return
	}
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		c.fail("RCPT", errRcptSyntax)
		return
	}
	to, params, err := parsePath(rest)
	if err != nil {
		c.fail("RCPT", errRcptSyntax)
		return
	}
	if to == "" {
		c.fail("RCPT", errRcptNoAddress)
		return
	}
	// Relay permission first: a client that may not relay gets the same
	// 550 5.7.1 for every address form (quoted, source route, percent
	// hack, bang path, literal, IDN), and learns nothing about which forms
	// the later checks would have let through.
	if ss.authUser == "" && !s.mayRelay(c.ip) {
		c.fail("RCPT", errRelayDenied)
		return
	}
	canon, e := checkAddress(to, ss.mp.utf8, recipientAddr)
	if e != nil {
		c.fail("RCPT", e)
		return
	}
	if !ss.esmtp && strings.TrimSpace(params) != "" {
		c.fail("RCPT", errParamsAfterHelo)
		return
	}
	rp, e := parseRcptParams(params, ss.mp.utf8)
	if e != nil {
		c.fail("RCPT", e)
		return
	}
	if !s.opts.AllowAddressLiterals && isAddressLiteral(canon) {
		c.fail("RCPT", errLiteral)
		return
	}
	key := dedupKey(canon)
	if _, dup := ss.seen[key]; !dup {
		if m := s.opts.MaxRecipients; m > 0 && len(ss.rcpts) >= m {
			c.fail("RCPT", errTooManyRcpt)
			return
		}
		if ss.seen == nil {
			ss.seen = make(map[string]struct{})
		}
		ss.seen[key] = struct{}{}
		ss.rcpts = append(ss.rcpts, rcpt{addr: canon, notify: rp.notify, orcpt: rp.orcpt})
	}
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, "I'll make sure <"+canon+"> gets this")
}

func (s *Server) mayRelay(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, p := range s.opts.RelayNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// data runs DATA: 354, the body through the scanner into a msgWriter, and
// the verdict.
func (c *conn) data(arg string) bool {
	ss := &c.sess
	switch {
	case arg != "":
		c.fail("DATA", errNoArgs)
		return true
	case !ss.hasFrom:
		c.fail("DATA", errNoMail)
		return true
	case ss.bdat != nil:
		c.fail("DATA", errBdatOrder)
		return true
	case len(ss.rcpts) == 0:
		c.fail("DATA", errNoRcpt)
		return true
	}
	c.reply(354, smtp.NoEnhancedCode, "Go ahead. End your data with <CR><LF>.<CR><LF>")
	mw := c.newMsgWriter()
	sc := newDataScanner(true)
	for {
		if c.buffered() == 0 {
			if err := c.fill(c.srv.opts.DataTimeout); err != nil {
				mw.abort()
				if isTimeout(err) {
					c.fail("DATA", errDataTimeout)
				}
				return false
			}
		}
		n, done := sc.scan(c.buf[c.r:c.w], mw)
		c.r += n
		mw.noteScan(&sc)
		if done {
			break
		}
	}
	c.finishMessage("DATA", mw, &sc)
	return true
}

// bdatCmd runs one BDAT chunk (RFC 3030). Its octets are read whatever
// the verdict, so the session stays in step with the client.
func (c *conn) bdatCmd(arg string) bool {
	ss := &c.sess
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || len(f[0]) > maxBdatDigits || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		// The chunk's length is unknown, so the session cannot find the
		// next command: refuse and close.
		c.fail("BDAT", errBdatSyntax)
		return false
	}
	size, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || size < 0 {
		c.fail("BDAT", errBdatSyntax)
		return false
	}
	last := len(f) == 2
	if over := c.srv.opts.MaxMessageSize; size > 2*over {
		// Discarding a chunk this far past the limit would let a client
		// hold the session as long as it likes; its octets cannot be
		// skipped without reading them, so the session ends.
		c.fail("BDAT", errTooBig)
		return false
	}
	var refusal *smtp.SMTPError
	switch {
	case !ss.esmtp:
		refusal = errBdatAfterHelo
	case !ss.hasFrom:
		refusal = errNoMail
	case len(ss.rcpts) == 0:
		refusal = errNoRcpt
	}
	mw := ss.bdat
	if refusal == nil && mw == nil {
		mw = c.newMsgWriter()
		mw.sc = newDataScanner(false)
		ss.bdat = mw
	}
	var sink bodySink = discard{}
	if refusal == nil {
		sink = mw
	}
	for size > 0 {
		if c.buffered() == 0 {
			if err := c.fill(c.srv.opts.DataTimeout); err != nil {
				if isTimeout(err) {
					c.fail("BDAT", errDataTimeout)
				}
				return false
			}
		}
		k := int(min(int64(c.buffered()), size))
		if refusal == nil {
			mw.sc.scan(c.buf[c.r:c.r+k], sink)
			mw.noteScan(&mw.sc)
		}
		c.r += k
		size -= int64(k)
	}
	if refusal != nil {
		c.fail("BDAT", refusal)
		return true
	}
	if mw.tooBig {
		// Postfix does the same: the transaction ends at the chunk that
		// passes the limit; the client's further BDATs get 503.
		c.fail("BDAT", errTooBig)
		c.resetTxn()
		return true
	}
	if !last {
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Continue")
		return true
	}
	ss.bdat = nil
	mw.sc.finish(mw)
	c.finishMessage("BDAT", mw, &mw.sc)
	return true
}

type discard struct{}

func (discard) emit([]byte) {}

// finishMessage decides on a complete body and, when it is accepted,
// stores it, logs it, hands it off and queues the 250. It ends the
// transaction either way.
func (c *conn) finishMessage(command string, mw *msgWriter, sc *dataScanner) {
	s := c.srv
	ss := &c.sess
	defer c.resetTxn()
	mw.endHeaders()
	var refusal *smtp.SMTPError
	switch {
	case mw.tooBig:
		refusal = errTooBig
	case sc.nul:
		refusal = errNUL
	case mw.herr != nil:
		refusal = mw.herr
	case sc.long && s.opts.LongLines == LongLinesReject:
		refusal = errLongLines
	case mw.werr != nil:
		refusal = storeRefusal(mw.werr)
		s.log.Error("inject: writing message body", zap.String("client_ip", ipString(c.ip)), zap.Error(mw.werr))
	}
	if refusal != nil {
		mw.abort()
		c.fail(command, refusal)
		return
	}
	body := mw.body
	if sc.long {
		var err error
		if body, err = conformBody(s.store, body, conform.Options{}); err != nil {
			mw.abort()
			var ce *conform.Error
			if errors.As(err, &ce) {
				c.fail(command, ce.SMTPError())
				return
			}
			s.log.Error("inject: making a message conformant", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
			c.fail(command, storeRefusal(err))
			return
		}
		mw.body = body
	}
	eightBit := ss.mp.eightBit
	if eightBit && s.opts.DKIM.Active() {
		// A signature over 8-bit content would break at the first
		// receiver without 8BITMIME, where delivery converts the body to
		// 7 bits: so a declared 8-bit message is made 7-bit (its 8-bit
		// parts re-encoded quoted-printable or base64) before it is
		// signed, and goes out unchanged everywhere.
		var err error
		if body, err = conformBody(s.store, body, conform.Options{To7Bit: true}); err != nil {
			mw.abort()
			var ce *conform.Error
			if errors.As(err, &ce) {
				c.fail(command, ce.SMTPError())
				return
			}
			s.log.Error("inject: converting a message to 7 bits for signing", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
			c.fail(command, storeRefusal(err))
			return
		}
		mw.body, eightBit = body, false
	}
	// Signed after the conformance rewrites (which change the body) and
	// before the store: the stored message carries its signatures.
	body, sig, err := s.opts.DKIM.SignBody(s.store, body)
	if err != nil {
		mw.abort()
		s.log.Error("inject: DKIM signing", zap.String("client_ip", ipString(c.ip)), zap.Error(err))
		c.fail(command, storeRefusal(err))
		return
	}
	mw.body = body
	m := &spool.Message{
		ID:         mw.id,
		Sender:     ss.from,
		Recipients: make([]spool.Recipient, len(ss.rcpts)),
		Received:   mw.date,
		ClientIP:   ipString(c.ip),
		Helo:       ss.helo,
		AuthUser:   ss.authUser,
		MessageID:  mw.h.messageID,
		Group:      mw.h.group,
		Binding:    mw.h.binding,
		SMTPUTF8:   ss.mp.utf8,
		EightBit:   eightBit,
		EnvID:      ss.mp.envID,
		Ret:        ss.mp.ret,
	}
	addrs := make([]string, len(ss.rcpts))
	for i, r := range ss.rcpts {
		m.Recipients[i] = spool.Recipient{Addr: r.addr, State: spool.Pending, Notify: r.notify, ORcpt: r.orcpt}
		addrs[i] = r.addr
	}
	// The spool write may take milliseconds (fsync): replies queued so far
	// go out first.
	if err := c.flush(); err != nil {
		body.Abort()
		return
	}
	if err := s.store.PutBody(m, body); err != nil {
		body.Abort()
		if !errors.Is(err, spool.ErrNoSpace) {
			// A refusal for space is the spool's state, logged by it
			// once as it changes; the rejected record says the rest.
			s.log.Error("inject: storing message", zap.String("client_ip", ipString(c.ip)),
				zap.String("sender", ss.from), zap.Int("recipients", len(ss.rcpts)), zap.Error(err))
		}
		c.fail(command, storeRefusal(err))
		return
	}
	logging.Received{
		QueueID:      m.ID,
		MessageID:    m.MessageID,
		Sender:       m.Sender,
		Recipients:   addrs,
		Size:         m.Size,
		ClientIP:     m.ClientIP,
		AuthUser:     m.AuthUser,
		DKIM:         sig.Signatures,
		DKIMUnsigned: sig.Unsigned,
	}.Log(s.log)
	if s.handoff != nil {
		s.handoff.Submit(m)
	}
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Ok: queued as "+m.ID)
}

// storeRefusal is the reply for a local storage failure: always 4xx.
func storeRefusal(err error) *smtp.SMTPError {
	if errors.Is(err, spool.ErrNoSpace) {
		return errNoSpace
	}
	return errLocal
}

// conformBody makes a body with lines over 998 octets conformant before it
// is stored: it rewrites it into a new body with internal/conform (the
// MIME parts with long lines re-encoded as quoted-printable, base64 for
// what is not text; long header lines folded), reading the original back
// from the spool, and drops the original. On error the original is left
// for the caller to abort; an error wrapping a *conform.Error is the
// content's fault (a permanent refusal), any other the spool's.
func conformBody(store Store, orig *spool.BodyWriter, opts conform.Options) (*spool.BodyWriter, error) {
	out := store.NewBody()
	if _, err := conform.Rewrite(orig.Reader, out, opts); err != nil {
		out.Abort()
		return nil, err
	}
	orig.Abort()
	return out, nil
}

// checkBinding asks Bindings whether the requested group and binding
// exist, one at a time so the refusal names the one at fault.
func (s *Server) checkBinding(group, binding string) *smtp.SMTPError {
	b := s.bindings
	if b == nil {
		return nil
	}
	if group != "" {
		if err := b.Check(group, ""); err != nil {
			return rep(550, 5, 7, 0, "Unknown binding group "+quote(group))
		}
	}
	if binding != "" {
		if err := b.Check("", binding); err != nil {
			return rep(550, 5, 7, 0, "Unknown binding "+quote(binding))
		}
	}
	return nil
}

// quote makes a client-supplied value safe for a one-line reply.
func quote(v string) string {
	const max = 100
	if len(v) > max {
		v = v[:max]
	}
	return strconv.QuoteToASCII(v)
}

// auth runs AUTH (RFC 4954): the policy check, then the SASL exchange.
func (c *conn) auth(arg string) bool {
	s := c.srv
	ss := &c.sess
	mech, initial, hasInitial := strings.Cut(arg, " ")
	switch {
	case ss.helo == "" || !ss.esmtp:
		c.fail("AUTH", errNoHelo)
		return true
	case ss.authUser != "":
		c.fail("AUTH", errAuthAgain)
		return true
	}
	if e := s.authRefusal(ss.tls, c.ip, c.inTxn.Load()); e != nil {
		c.fail("AUTH", e)
		return true
	}
	var srv interface {
		Next([]byte) ([]byte, bool, error)
	}
	switch strings.ToUpper(mech) {
	case "":
		c.fail("AUTH", errAuthSyntax)
		return true
	case "PLAIN":
		srv = &plainServer{auth: c.authenticate}
	case "LOGIN":
		srv = &loginServer{auth: c.authenticate}
	default:
		c.fail("AUTH", errAuthMech)
		return true
	}
	var resp []byte
	if hasInitial {
		if initial == "=" {
			resp = []byte{}
		} else {
			var err error
			if resp, err = base64.StdEncoding.DecodeString(initial); err != nil {
				c.fail("AUTH", errAuthBase64)
				return true
			}
		}
	}
	for range 4 { // PLAIN needs 2 rounds at most, LOGIN 3
		challenge, done, err := srv.Next(resp)
		if err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				se = errAuthFailed
			}
			c.fail("AUTH", se)
			return true
		}
		if done {
			c.reply(235, smtp.EnhancedCode{2, 7, 0}, "Authentication succeeded")
			return true
		}
		c.reply(334, smtp.NoEnhancedCode, base64.StdEncoding.EncodeToString(challenge))
		line, tooLong, err := c.readLine(maxAuthLine, s.opts.ReadTimeout)
		if err != nil {
			if isTimeout(err) {
				c.fail("AUTH", errIdle)
			}
			return false
		}
		if tooLong {
			c.fail("AUTH", errLineTooLong)
			return true
		}
		if c.bareLF {
			c.fail("AUTH", errBareLF)
			return true
		}
		if string(line) == "*" {
			c.fail("AUTH", errAuthCancel)
			return true
		}
		if resp, err = base64.StdEncoding.DecodeString(string(line)); err != nil {
			c.fail("AUTH", errAuthBase64)
			return true
		}
	}
	c.fail("AUTH", errAuthFailed)
	return true
}

// authOffered is the AUTH policy: users configured, and TLS or loopback.
func (s *Server) authOffered(isTLS bool, ip netip.Addr) bool {
	return len(s.authState().users) > 0 && (isTLS || ip.IsLoopback())
}

// authRefusal is why AUTH is refused on this connection, or nil:
// no users at all (502 5.7.0), a plain connection from a non-loopback
// client (538 5.7.11 when STARTTLS is on offer: RFC 4954 6, "encryption
// required for requested authentication mechanism", since PLAIN and LOGIN
// send the password in the clear; else 502 5.7.0), or a mail
// transaction in progress (503 5.5.1, RFC 4954 4).
func (s *Server) authRefusal(isTLS bool, ip netip.Addr, inTxn bool) *smtp.SMTPError {
	switch {
	case len(s.authState().users) == 0:
		return errAuthNone
	case !s.authOffered(isTLS, ip):
		if s.tlsConfig() != nil {
			return errAuthTLS
		}
		return errAuthNone
	case inTxn:
		return errAuthInTxn
	}
	return nil
}

// authenticate checks a user's password. It waits for a check slot first
// (MaxAuthChecks): past authWait, 454 4.7.0, a temporary AUTH failure
// (RFC 4954 6) after which the session goes on and the client may retry;
// 421 would drop the connection for what is only load. On failure it waits
// out the client's growing delay (cut short by Shutdown) and returns 535
// 5.7.8.
func (c *conn) authenticate(identity, user, password string) error {
	s := c.srv
	t := time.NewTimer(s.authWait)
	select {
	case s.authSlots <- struct{}{}:
		t.Stop()
	case <-t.C:
		return errAuthBusy
	case <-s.closing:
		t.Stop()
		return errAuthBusy
	}
	ok := s.checkPassword(identity, user, password)
	<-s.authSlots
	// Failures are counted per client as the session limits count them
	// (an IPv6 /64), so rotating addresses does not reset the delay.
	if ok {
		s.fails.success(c.key.Addr())
		c.sess.authUser = user
		return nil
	}
	if d := s.fails.fail(c.key.Addr()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.closing:
			t.Stop()
		}
	}
	return errAuthFailed
}

// checkPassword compares against a dummy hash for an unknown user, so the
// reply time does not tell which users exist.
func (s *Server) checkPassword(identity, user, password string) bool {
	a := s.authState()
	hash, known := a.users[user]
	known = known && user != ""
	if !known {
		hash = a.dummyHash
	}
	match := compareHash(hash, password)
	// PLAIN's authorization identity may only name the user itself: mtad
	// has no notion of acting on behalf of another user.
	return known && match && (identity == "" || identity == user)
}
