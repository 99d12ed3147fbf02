package loopbacktest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	// Data decides each message after its body was read.
	Data func(from string, to []string, data []byte) error
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
	s.server = srv
	go func() {
		defer close(s.serveDone)
		_ = srv.Serve(&watchListener{Listener: ln, sink: s})
	}()
	t.Cleanup(func() {
		_ = srv.Close()
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
	to     []string
	closed bool
}

func (ss *session) Reset() { ss.from, ss.body, ss.to = "", "", nil }
func (ss *session) Mail(from string, o *smtp.MailOptions) error {
	ss.from = from
	if o != nil {
		ss.body = o.Body
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f := ss.sink.cfg.Rcpt; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if f := ss.sink.cfg.Data; f != nil {
		if err := f(ss.from, ss.to, data); err != nil {
			return err
		}
	}
	_, isTLS := ss.conn.TLSConnectionState()
	m := Message{
		From: ss.from, Body: ss.body, To: append([]string(nil), ss.to...), Data: data,
		RemoteIP: ss.remote, EHLO: ss.conn.Hostname(), TLS: isTLS,
		SinkAddr: ss.sink.Addr, ReceivedAt: time.Now(),
	}
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
