package loopbacktest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one message a sink accepted.
type Message struct {
	From       string
	Body       smtp.BodyType // MAIL FROM's BODY= parameter ("" if absent)
	To         []string
	Data       []byte
	RemoteIP   string // source address of the connection
	EHLO       string // the client's EHLO name
	TLS        bool   // the session had done STARTTLS
	SinkAddr   string // the sink that received it
	ReceivedAt time.Time
	Mail       smtp.MailOptions   // MAIL FROM's parameters
	Rcpt       []smtp.RcptOptions // each accepted RCPT TO's parameters, as To
	// Size and SHA256 are the body's length and digest; with
	// Config.DigestOnly, Data is nil and these are all that is kept.
	Size   int64
	SHA256 [sha256.Size]byte
}

// Config sets a sink's behaviour. Every func is called from the sink's
// session goroutines and may be nil (accept).
type Config struct {
	// TLS, when set, makes the sink offer STARTTLS with it.
	TLS *tls.Config
	// SMTPUTF8 makes the sink offer SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// Rcpt decides each RCPT TO; a non-nil error (an *smtp.SMTPError) refuses it.
	Rcpt func(to string) error
	// Data decides each message after its body was read (not called
	// with DigestOnly).
	Data func(from string, to []string, data []byte) error
	// DSN offers the DSN extension (RFC 3461), so MAIL and RCPT take
	// RET, ENVID, NOTIFY and ORCPT.
	DSN bool
	// No8BitMIME leaves 8BITMIME out of the EHLO reply, which go-smtp
	// always offers: the line is dropped on its way to the client (so
	// this works on sessions without TLS only).
	No8BitMIME bool
	// DigestOnly keeps each body's size and SHA-256, not the body, for
	// tests of large messages.
	DigestOnly bool
	// ReadTimeout replaces the default 10s. go-smtp sets it once per
	// command, so a whole DATA body must arrive within it.
	ReadTimeout time.Duration
}

// Sink is a go-smtp server on one 127.0.0.x address.
type Sink struct {
	Addr string // "127.0.0.x:port"
	IP   string

	cfg Config

	mu        sync.Mutex
	msgs      []Message
	sessions  int
	highWater int
	ehlos     []string
	remotes   []string
	pipelined int
	clearMail int           // MAIL FROM commands received outside TLS
	notify    chan struct{} // closed and replaced on every change
	server    *smtp.Server
	serveDone chan struct{}
}

// StartSinks starts one sink per IP, all on the same port (the port of the
// first, chosen by the kernel; retried a few times if another IP has it
// taken), and stops them when the test ends. cfg may be nil.
func StartSinks(t testing.TB, ips []string, cfg func(i int) Config) ([]*Sink, int) {
	t.Helper()
	var lastErr error
	for range 20 {
		lns, err := listenSamePort(ips)
		if err != nil {
			lastErr = err
			continue
		}
		sinks := make([]*Sink, len(ips))
		for i, ln := range lns {
			var c Config
			if cfg != nil {
				c = cfg(i)
			}
			sinks[i] = serve(t, ips[i], ln, c)
		}
		return sinks, lns[0].Addr().(*net.TCPAddr).Port
	}
	t.Fatalf("sinks on %v: no common free port: %v", ips, lastErr)
	return nil, 0
}

func listenSamePort(ips []string) ([]net.Listener, error) {
	var lns []net.Listener
	port := "0"
	for _, ip := range ips {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
		port = strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	}
	return lns, nil
}

func serve(t testing.TB, ip string, ln net.Listener, cfg Config) *Sink {
	s := &Sink{Addr: ln.Addr().String(), IP: ip, cfg: cfg, notify: make(chan struct{}), serveDone: make(chan struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "sink-" + ip
	srv.TLSConfig = cfg.TLS
	srv.EnableSMTPUTF8 = cfg.SMTPUTF8
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxRecipients = 1000
	srv.ErrorLog = discardLogger{}
	if cfg.ReadTimeout > 0 {
		srv.ReadTimeout = cfg.ReadTimeout
	}
	srv.EnableDSN = cfg.DSN
	s.server = srv
	go func() {
		defer close(s.serveDone)
		_ = srv.Serve(&watchListener{Listener: ln, sink: s})
	}()
	t.Cleanup(func() {
		// go-smtp's Close only closes the listeners Serve has registered:
		// one closed before its Serve goroutine ran would be missed and
		// Serve would accept forever. Closing ours too ends it either way.
		_ = srv.Close()
		_ = ln.Close()
		<-s.serveDone
	})
	return s
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// watchListener wraps accepted connections to see pipelining: a read that
// carries both MAIL FROM and RCPT TO means the client sent them without
// waiting for the MAIL reply.
type watchListener struct {
	net.Listener
	sink *Sink
}

func (l *watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &watchConn{Conn: c, sink: l.sink}, nil
}

type watchConn struct {
	net.Conn
	sink *Sink
}

// Write drops the EHLO reply's 8BITMIME line when the sink hides it;
// go-smtp writes each reply line with a write of its own.
func (c *watchConn) Write(p []byte) (int, error) {
	if c.sink.cfg.No8BitMIME && string(p) == "250-8BITMIME\r\n" {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *watchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		chunk := bytes.ToUpper(p[:n])
		if bytes.Contains(chunk, []byte("MAIL FROM:")) && bytes.Contains(chunk, []byte("RCPT TO:")) {
			c.sink.mu.Lock()
			c.sink.pipelined++
			c.sink.mu.Unlock()
		}
	}
	return n, err
}

func (s *Sink) changed() {
	close(s.notify)
	s.notify = make(chan struct{})
}

func (s *Sink) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.sessions++
	s.highWater = max(s.highWater, s.sessions)
	host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
	s.remotes = append(s.remotes, host)
	s.changed()
	s.mu.Unlock()
	return &session{sink: s, conn: c, remote: host}, nil
}

type session struct {
	sink   *Sink
	conn   *smtp.Conn
	remote string
	from   string
	body   smtp.BodyType
	mail   smtp.MailOptions
	to     []string
	rcpt   []smtp.RcptOptions
	closed bool
}

func (ss *session) Reset() {
	ss.from, ss.body, ss.to, ss.rcpt, ss.mail = "", "", nil, nil, smtp.MailOptions{}
}

func (ss *session) Mail(from string, o *smtp.MailOptions) error {
	if _, isTLS := ss.conn.TLSConnectionState(); !isTLS {
		ss.sink.mu.Lock()
		ss.sink.clearMail++
		ss.sink.mu.Unlock()
	}
	ss.from = from
	if o != nil {
		ss.body = o.Body
		ss.mail = *o
	}
	return nil
}

func (ss *session) Rcpt(to string, o *smtp.RcptOptions) error {
	if f := ss.sink.cfg.Rcpt; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	if o == nil {
		o = &smtp.RcptOptions{}
	}
	ss.rcpt = append(ss.rcpt, *o)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	h := sha256.New()
	var data []byte
	var size int64
	var err error
	if ss.sink.cfg.DigestOnly {
		size, err = io.Copy(h, r)
	} else {
		data, err = io.ReadAll(r)
		size = int64(len(data))
		h.Write(data)
	}
	if err != nil {
		return err
	}
	if f := ss.sink.cfg.Data; f != nil && !ss.sink.cfg.DigestOnly {
		if err := f(ss.from, ss.to, data); err != nil {
			return err
		}
	}
	_, isTLS := ss.conn.TLSConnectionState()
	m := Message{
		From: ss.from, Body: ss.body, To: append([]string(nil), ss.to...), Data: data,
		RemoteIP: ss.remote, EHLO: ss.conn.Hostname(), TLS: isTLS,
		SinkAddr: ss.sink.Addr, ReceivedAt: time.Now(),
		Mail: ss.mail, Rcpt: append([]smtp.RcptOptions(nil), ss.rcpt...), Size: size,
	}
	h.Sum(m.SHA256[:0])
	s := ss.sink
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.ehlos = append(s.ehlos, m.EHLO)
	s.changed()
	s.mu.Unlock()
	return nil
}

func (ss *session) Logout() error {
	s := ss.sink
	s.mu.Lock()
	if !ss.closed {
		ss.closed = true
		s.sessions--
		s.changed()
	}
	s.mu.Unlock()
	return nil
}

// ClearMails returns how many MAIL FROM commands the sink got outside
// TLS: a test of a policy that must never send in clear text wants 0.
func (s *Sink) ClearMails() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clearMail
}

// Messages returns a copy of the messages accepted so far.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// HighWater reports the most sessions the sink held at once.
func (s *Sink) HighWater() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.highWater
}

// Sessions reports the sessions open now.
func (s *Sink) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// Connections reports how many connections the sink accepted.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.remotes)
}

// Pipelined reports how many reads carried MAIL FROM and RCPT TO together.
func (s *Sink) Pipelined() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pipelined
}

// Wait blocks until cond (called under the sink's lock with the messages so
// far) is true, failing the test after timeout. It is a safety net against
// hangs, not a timing assertion.
func (s *Sink) Wait(t testing.TB, timeout time.Duration, what string, cond func(msgs []Message, sessions int) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s.msgs, s.sessions)
		ch := s.notify
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("sink %s: timed out waiting for %s", s.Addr, what)
		}
	}
}

// WaitMessages waits until the sink has accepted at least n messages.
func (s *Sink) WaitMessages(t testing.TB, n int) []Message {
	t.Helper()
	s.Wait(t, 10*time.Second, fmt.Sprintf("%d messages", n), func(m []Message, _ int) bool { return len(m) >= n })
	return s.Messages()
}

// Reply builds a go-smtp reply error for Config funcs.
func Reply(code int, enh smtp.EnhancedCode, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// TLSConfig returns a server config with a fresh self-signed certificate.
func TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sink.test"},
		DNSNames:     []string{"sink.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// BrokenTLSConfig returns a server config that offers STARTTLS but fails
// every handshake (it has no certificate to give).
func BrokenTLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("loopbacktest: handshake refused on purpose")
	}}
}
