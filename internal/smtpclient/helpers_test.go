package smtpclient

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const localName = "out1.mtad.test"

// testCert is a self-signed certificate for "mx.test", made once per run:
// it never changes after creation.
var testCert = sync.OnceValue(func() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test"},
		DNSNames:     []string{"mx.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
})

func serverTLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{testCert()}}
}

// --- a go-smtp server with a recording backend ---

type heloRec struct {
	name string
	tls  bool
}

type msgRec struct {
	from     string
	opts     smtp.MailOptions
	rcpts    []string
	rcptOpts []smtp.RcptOptions
	data     string
	tls      bool
}

// backend records what a go-smtp server saw. The reject maps and dataErr
// are set before the server starts and only read afterwards.
type backend struct {
	rejectMail map[string]*smtp.SMTPError
	rejectRcpt map[string]*smtp.SMTPError
	dataErr    *smtp.SMTPError
	discard    bool // for benchmarks: drain data, record nothing

	mu    sync.Mutex
	helos []heloRec
	mails []string
	msgs  []msgRec
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	b.mu.Lock()
	b.helos = append(b.helos, heloRec{c.Hostname(), isTLS})
	b.mu.Unlock()
	return &session{b: b, tls: isTLS}, nil
}

func (b *backend) snapshot() ([]heloRec, []string, []msgRec) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]heloRec(nil), b.helos...), append([]string(nil), b.mails...), append([]msgRec(nil), b.msgs...)
}

type session struct {
	b   *backend
	tls bool
	cur msgRec
}

func (s *session) Reset()        { s.cur = msgRec{} }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.b.discard {
		return nil
	}
	s.b.mu.Lock()
	s.b.mails = append(s.b.mails, from)
	s.b.mu.Unlock()
	if e := s.b.rejectMail[from]; e != nil {
		return e
	}
	s.cur = msgRec{from: from, tls: s.tls}
	if opts != nil {
		s.cur.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if e := s.b.rejectRcpt[to]; e != nil {
		return e
	}
	s.cur.rcpts = append(s.cur.rcpts, to)
	if opts != nil {
		s.cur.rcptOpts = append(s.cur.rcptOpts, *opts)
	} else {
		s.cur.rcptOpts = append(s.cur.rcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (s *session) Data(r io.Reader) error {
	if s.b.discard {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.b.dataErr != nil {
		return s.b.dataErr
	}
	s.cur.data = string(data)
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, s.cur)
	s.b.mu.Unlock()
	return nil
}

// startServer runs a go-smtp server on 127.0.0.1:0 until the test ends
// and returns its address.
func startServer(tb testing.TB, be *backend, configure func(*smtp.Server)) string {
	tb.Helper()
	s := smtp.NewServer(be)
	s.Domain = "mx.test"
	s.ErrorLog = log.New(io.Discard, "", 0)
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	if configure != nil {
		configure(s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(l)
	}()
	tb.Cleanup(func() {
		s.Close()
		l.Close() // Close misses a listener Serve has not registered yet
		<-done
	})
	return l.Addr().String()
}

func dial(tb testing.TB, addr string) net.Conn {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	return conn
}

// newClient dials addr and starts a session that the test's end closes.
func newClient(tb testing.TB, addr string, opts Options) *Client {
	tb.Helper()
	if opts.LocalName == "" {
		opts.LocalName = localName
	}
	if opts.ServerName == "" {
		opts.ServerName = "mx.test"
	}
	c, err := New(dial(tb, addr), opts)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// --- raw scripted servers, for what go-smtp won't do ---

// rawConn is the server side of one scripted session.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *rawConn) send(lines ...string) error {
	_, err := io.WriteString(c.Conn, strings.Join(lines, "\r\n")+"\r\n")
	return err
}

// line reads one command line, without its CRLF.
func (c *rawConn) line() (string, error) {
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading a command: %w", err)
	}
	return strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r"), nil
}

// expect reads one line and checks it is want.
func (c *rawConn) expect(want string) error {
	l, err := c.line()
	if err != nil {
		return fmt.Errorf("waiting for %q: %w", want, err)
	}
	if l != want {
		return fmt.Errorf("got %q, want %q", l, want)
	}
	return nil
}

// hello sends the greeting, reads "EHLO out1.mtad.test" and answers with
// the given extensions.
func (c *rawConn) hello(exts ...string) error {
	if err := c.send("220 mx.test ESMTP scripted"); err != nil {
		return err
	}
	if err := c.expect("EHLO " + localName); err != nil {
		return err
	}
	lines := []string{"mx.test hello"}
	lines = append(lines, exts...)
	for i := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		lines[i] = "250" + sep + lines[i]
	}
	return c.send(lines...)
}

// data reads message data up to and including the end-of-data line and
// returns it raw, as it was on the wire.
func (c *rawConn) data() (string, error) {
	var b strings.Builder
	for range 100000 {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return b.String(), fmt.Errorf("reading data: %w", err)
		}
		b.WriteString(l)
		if l == ".\r\n" {
			return b.String(), nil
		}
	}
	return b.String(), errors.New("data too long")
}

// untilEOF waits for the client to close the connection.
func (c *rawConn) untilEOF() error {
	_, err := io.Copy(io.Discard, c.r)
	return err
}

// startRaw accepts one connection on 127.0.0.1:0 and runs script on it.
// The test's end waits for the script and fails the test with its error.
// A deadline keeps a script from outliving a client that went away.
func startRaw(t *testing.T, script func(c *rawConn) error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			done <- fmt.Errorf("accept: %w", err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		done <- script(&rawConn{Conn: conn, r: bufio.NewReader(conn)})
	}()
	t.Cleanup(func() {
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("scripted server: %v", err)
		}
	})
	return l.Addr().String()
}

// forBothTransfers runs f as two parallel subtests: the body sent with
// BDAT (go-smtp's servers offer CHUNKING) and with DATA.
func forBothTransfers(t *testing.T, f func(t *testing.T, chunked bool)) {
	t.Helper()
	for _, chunked := range []bool{true, false} {
		name := "DATA"
		if chunked {
			name = "BDAT"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, chunked)
		})
	}
}

// dialogLog records a go-smtp server's Debug output (both directions of
// every session), safe for its concurrent writers.
type dialogLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (d *dialogLog) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.Write(p)
}

func (d *dialogLog) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.String()
}
