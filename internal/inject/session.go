package inject

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/spool"
)

// The replies this package gives. Each refusal is also a "rejected" record.
var (
	errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
	errTooManyRcpt = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	errTooBig      = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum message size"}
	errNestedMail  = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Error: nested MAIL command"}
	errDataRead    = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Error reading message data"}
	errNoSpace     = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}
	errLocal       = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary local problem, try again later"}
	errAuthFailed  = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthTLS     = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errAuthNone    = &smtp.SMTPError{Code: 502, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication not available"}
	errAuthMech    = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}
	errAuthInTxn   = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "AUTH not permitted during a mail transaction"}
)

// session is one go-smtp Session: from EHLO/HELO to QUIT, or to STARTTLS,
// after which go-smtp starts a new one. Its methods run on the connection's
// goroutine, except Data during BDAT, which go-smtp runs on another while
// the connection goroutine may call Reset; mu guards the transaction.
type session struct {
	srv  *Server
	conn *smtp.Conn
	tc   *trackedConn
	ip   netip.Addr
	// tls is fixed for the session's life: go-smtp starts a new session
	// after STARTTLS. Data reads it here, not from conn, because during
	// BDAT it runs beside the connection goroutine.
	tls bool

	mu       sync.Mutex
	authUser string
	hasFrom  bool
	from     string
	helo     string // as of MAIL; read here, not in Data, which may run beside the connection goroutine
	utf8     bool
	eightBit bool
	rcpts    []string
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	tc, ok := connOf(c.Conn())
	if !ok {
		return nil, errors.New("inject: connection not accepted by this server")
	}
	_, isTLS := c.TLSConnectionState()
	return &session{srv: s, conn: c, tc: tc, ip: tc.ip, tls: isTLS}, nil
}

// reject logs the refusal and returns it for go-smtp to write.
func (ss *session) reject(command string, e *smtp.SMTPError) error {
	ss.srv.rejected(ss.ip, command, e)
	return e
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

// Mail starts a transaction. go-smtp has parsed the path already; the
// address is checked here for what go-smtp's lenient parser lets through.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.hasFrom {
		return ss.reject("MAIL", errNestedMail)
	}
	utf8 := opts != nil && opts.UTF8
	if from != "" {
		canon, e := checkAddress(from, utf8, senderAddr)
		if e != nil {
			return ss.reject("MAIL", e)
		}
		from = canon
	}
	ss.hasFrom = true
	ss.from = from
	ss.helo = ss.conn.Hostname()
	ss.utf8 = utf8
	ss.eightBit = opts != nil && opts.Body == smtp.Body8BitMIME
	ss.rcpts = ss.rcpts[:0]
	ss.tc.inTxn.Store(true)
	return nil
}

// Rcpt adds a recipient: address syntax first, then relay permission, then
// the recipient limit.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	canon, e := checkAddress(to, ss.utf8, recipientAddr)
	if e != nil {
		return ss.reject("RCPT", e)
	}
	if ss.authUser == "" && !ss.srv.mayRelay(ss.ip) {
		return ss.reject("RCPT", errRelayDenied)
	}
	if m := ss.srv.opts.MaxRecipients; m > 0 && len(ss.rcpts) >= m {
		return ss.reject("RCPT", errTooManyRcpt)
	}
	ss.rcpts = append(ss.rcpts, canon)
	return nil
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

// Reset ends the transaction (RSET, a new EHLO, the end of DATA).
func (ss *session) Reset() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.resetLocked()
}

func (ss *session) resetLocked() {
	ss.hasFrom = false
	ss.from = ""
	ss.helo = ""
	ss.utf8 = false
	ss.eightBit = false
	ss.rcpts = nil
	ss.tc.inTxn.Store(false)
}

// Logout is called when the connection closes or STARTTLS replaces the
// session.
func (ss *session) Logout() error {
	ss.Reset()
	return nil
}

// Data reads the body, checks the binding headers, stores the message with
// a Received field at its head and answers with its queue id. Nothing is
// stored on any refusal.
func (ss *session) Data(r io.Reader) error {
	ss.mu.Lock()
	from, helo, rcpts := ss.from, ss.helo, append([]string(nil), ss.rcpts...)
	utf8, eightBit, authUser := ss.utf8, ss.eightBit, ss.authUser
	ss.mu.Unlock()
	s := ss.srv

	// Everything the Received field records is known before the body
	// arrives (its date is when DATA began), so it is written into the
	// buffer first and the body read in after it: the field is prepended
	// without copying the body.
	now := time.Now()
	id := s.store.NewID()
	buf := s.getBuf()
	defer s.putBuf(buf)
	buf.Write(appendReceived(buf.AvailableBuffer(), traceInfo{
		helo:  helo,
		ip:    ss.ip,
		host:  s.traceHost,
		tls:   ss.tls,
		auth:  authUser != "",
		utf8:  utf8,
		id:    id,
		from:  from,
		rcpts: rcpts,
		date:  now,
	}))
	traceLen := buf.Len()
	chunk := s.getChunk()
	err := readBody(buf, &deadlineReader{r: r, conn: ss.conn.Conn(), d: s.opts.DataTimeout}, s.opts.MaxMessageSize, chunk[:])
	s.chunks.Put(chunk)
	if err != nil {
		if errors.Is(err, errBodyTooBig) {
			return ss.reject("DATA", errTooBig)
		}
		s.log.Debug("inject: reading message data", zap.String("client_ip", ipString(ss.ip)), zap.Error(err))
		return ss.reject("DATA", errDataRead)
	}
	if s.opts.DataTimeout > 0 && s.opts.ReadTimeout == 0 {
		// go-smtp renews the deadline before each command only when it has
		// a ReadTimeout; otherwise the body's deadline must not outlive it.
		ss.conn.Conn().SetReadDeadline(time.Time{})
	}
	all := buf.Bytes()
	body := all[traceLen:] // the client's message

	h, err := parseHeaders(body)
	if err != nil {
		msg := "Malformed header section"
		var ce conflictError
		if errors.As(err, &ce) {
			msg = ce.Reply()
		}
		return ss.reject("DATA", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: msg})
	}
	if e := ss.checkBinding(h.group, h.binding); e != nil {
		return ss.reject("DATA", e)
	}
	// strip works in place, so the stripped body still follows the
	// Received field in all.
	body = all[:traceLen+len(h.strip(body))]

	m := &spool.Message{
		ID:         id,
		Sender:     from,
		Recipients: make([]spool.Recipient, len(rcpts)),
		Received:   now,
		ClientIP:   ipString(ss.ip),
		Helo:       helo,
		AuthUser:   authUser,
		MessageID:  h.messageID,
		Group:      h.group,
		Binding:    h.binding,
		Size:       int64(len(body)),
		SMTPUTF8:   utf8,
		EightBit:   eightBit,
	}
	for i, a := range rcpts {
		m.Recipients[i] = spool.Recipient{Addr: a, State: spool.Pending}
	}
	if err := s.store.Put(m, body); err != nil {
		e := errLocal
		if errors.Is(err, spool.ErrNoSpace) {
			e = errNoSpace
		}
		s.log.Error("inject: storing message", zap.String("client_ip", ipString(ss.ip)),
			zap.String("sender", from), zap.Int("recipients", len(rcpts)), zap.Error(err))
		return ss.reject("DATA", e)
	}
	logging.Received{
		QueueID:    m.ID,
		MessageID:  m.MessageID,
		Sender:     m.Sender,
		Recipients: rcpts,
		Size:       m.Size,
		ClientIP:   m.ClientIP,
		AuthUser:   m.AuthUser,
	}.Log(s.log)
	if s.handoff != nil {
		s.handoff.Submit(m)
	}
	// go-smtp writes an *SMTPError returned by Data as the reply whatever
	// its code; this is how the 250 carries the queue id.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + m.ID}
}

// checkBinding asks Bindings whether the requested group and binding
// exist, one at a time so the refusal names the one at fault.
func (ss *session) checkBinding(group, binding string) *smtp.SMTPError {
	b := ss.srv.bindings
	if b == nil {
		return nil
	}
	if group != "" {
		if err := b.Check(group, ""); err != nil {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Unknown binding group " + quote(group)}
		}
	}
	if binding != "" {
		if err := b.Check("", binding); err != nil {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Unknown binding " + quote(binding)}
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

// deadlineReader renews the read deadline before each read of the body, so
// DataTimeout bounds inactivity, not the whole transfer.
type deadlineReader struct {
	r    io.Reader
	conn net.Conn
	d    time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.d > 0 {
		d.conn.SetReadDeadline(time.Now().Add(d.d))
	}
	return d.r.Read(p)
}

// AuthMechanisms lists AUTH mechanisms for EHLO: none unless users are
// configured and the connection is TLS or from loopback, so a password
// never crosses a network in the clear.
func (ss *session) AuthMechanisms() []string {
	if !ss.srv.authOffered(ss.isTLS(), ss.ip) {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// authOffered is the AUTH policy: users configured, and TLS or loopback.
func (s *Server) authOffered(isTLS bool, ip netip.Addr) bool {
	return len(s.opts.AuthUsers) > 0 && (isTLS || ip.IsLoopback())
}

func (ss *session) isTLS() bool {
	_, ok := ss.conn.TLSConnectionState()
	return ok
}

// Auth starts a SASL exchange, or refuses where AuthMechanisms offered none.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	s := ss.srv
	ss.mu.Lock()
	inTxn := ss.hasFrom
	ss.mu.Unlock()
	if e := s.authRefusal(ss.isTLS(), ss.ip, inTxn); e != nil {
		return nil, ss.reject("AUTH", e)
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{auth: ss.authenticate}, nil
	case sasl.Login:
		return &loginServer{auth: ss.authenticate}, nil
	}
	return nil, ss.reject("AUTH", errAuthMech)
}

// authRefusal is why AUTH is refused on this connection, or nil:
// no users at all (502 5.7.0), a plain connection from a non-loopback
// client (530 5.7.0 when STARTTLS is on offer, else 502 5.7.0), or a mail
// transaction in progress (503 5.5.1, RFC 4954 4).
func (s *Server) authRefusal(isTLS bool, ip netip.Addr, inTxn bool) *smtp.SMTPError {
	switch {
	case len(s.opts.AuthUsers) == 0:
		return errAuthNone
	case !s.authOffered(isTLS, ip):
		if s.opts.TLSConfig != nil {
			return errAuthTLS
		}
		return errAuthNone
	case inTxn:
		return errAuthInTxn
	}
	return nil
}

// authenticate checks a user's password. On failure it waits out the
// client's growing delay (cut short by Shutdown) and returns 535 5.7.8.
func (ss *session) authenticate(identity, user, password string) error {
	s := ss.srv
	if ok := s.checkPassword(identity, user, password); ok {
		s.fails.success(ss.ip)
		ss.mu.Lock()
		ss.authUser = user
		ss.mu.Unlock()
		return nil
	}
	if d := s.fails.fail(ss.ip); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.closing:
			t.Stop()
		}
	}
	return ss.reject("AUTH", errAuthFailed)
}

// checkPassword compares against a dummy hash for an unknown user, so the
// reply time does not tell which users exist.
func (s *Server) checkPassword(identity, user, password string) bool {
	hash, known := s.opts.AuthUsers[user]
	known = known && user != ""
	if !known {
		hash = s.dummyHash
	}
	match := compareHash(hash, password)
	// PLAIN's authorization identity may only name the user itself: mtad
	// has no notion of acting on behalf of another user.
	return known && match && (identity == "" || identity == user)
}

// Buffers for bodies come from a pool; ones grown past pooledBufMax are
// left to the collector so a burst of large messages does not pin memory.
const pooledBufMax = 1 << 20

func (s *Server) getBuf() *bytes.Buffer {
	if b, ok := s.bufs.Get().(*bytes.Buffer); ok {
		return b
	}
	return new(bytes.Buffer)
}

// getChunk returns scratch space for reading a body.
func (s *Server) getChunk() *[32 << 10]byte {
	if c, ok := s.chunks.Get().(*[32 << 10]byte); ok {
		return c
	}
	return new([32 << 10]byte)
}

func (s *Server) putBuf(b *bytes.Buffer) {
	if b.Cap() > pooledBufMax {
		return
	}
	b.Reset()
	s.bufs.Put(b)
}
