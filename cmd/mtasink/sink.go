package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// maxMessageBytes is the largest message the sink takes (announced in
// EHLO SIZE): mtad's own inject.smtp.max_message_size default is 25 MiB,
// and a message grows a little on its way (Received, DKIM-Signature).
const maxMessageBytes = 64 << 20

// Sink is a running capture server: every message it accepts is one file
// in its directory, complete and fsync'd before the 250.
type Sink struct {
	dir  string
	out  io.Writer // one line per stored message; nil = none
	ln   net.Listener
	srv  *smtp.Server
	seq  atomic.Uint64 // the <n> of the file names
	done chan struct{} // closed when Serve has returned

	outMu sync.Mutex // serialises the lines written to out
}

// Listen checks that addr is a loopback address, creates dir if needed,
// listens on addr and serves until Close. Each stored message is reported
// as one line on out (nil: not reported).
func Listen(addr, dir string, out io.Writer) (*Sink, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("--dir: empty")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--dir: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	s := &Sink{dir: dir, out: out, ln: ln, done: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &session{sink: s}, nil
	}))
	s.srv.Domain = "mtasink.localhost"
	s.srv.MaxMessageBytes = maxMessageBytes
	s.srv.MaxRecipients = 1000
	s.srv.EnableSMTPUTF8 = true
	s.srv.EnableBINARYMIME = true
	// Bounds on a silent peer, so that no session outlives its use.
	s.srv.ReadTimeout, s.srv.WriteTimeout = 5*time.Minute, time.Minute
	s.srv.ErrorLog = discardLog{} // refusals already reach the client
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the address the sink listens on (the port chosen when addr
// asked for port 0).
func (s *Sink) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, lets sessions in progress finish for up to grace,
// then cuts them, and waits for the server's goroutine.
func (s *Sink) Close(grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	// Shutdown misses a listener Serve has not registered yet.
	_ = s.ln.Close()
	<-s.done
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// checkLoopback refuses any listen address outside 127.0.0.0/8 and ::1:
// the sink accepts everything from anyone, so it must never be reachable
// from another machine.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port (e.g. 127.0.0.1:2526): %w", addr, err)
	}
	if port == "" {
		return fmt.Errorf("--listen %q: no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return fmt.Errorf("--listen %q: not a loopback address (want 127.0.0.0/8, ::1 or localhost): the sink accepts mail from anyone who can reach it", addr)
	}
	return nil
}

// store writes one message to a new file <timestamp>-<n>.eml: a temporary
// file first, synced, then linked under its final name, so that whoever
// lists the directory sees only complete messages.
func (s *Sink) store(from string, to []string, body io.Reader) (string, error) {
	tmp, err := os.CreateTemp(s.dir, ".incoming-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	// Return-Path as a final delivery adds it (RFC 5321 4.4), and the
	// envelope recipients, which the header fields need not name.
	var hdr bytes.Buffer
	fmt.Fprintf(&hdr, "Return-Path: <%s>\r\n", from)
	fmt.Fprintf(&hdr, "X-Envelope-To: %s\r\n", strings.Join(to, ", "))
	if _, err := tmp.Write(hdr.Bytes()); err != nil {
		return "", err
	}
	if _, err := io.Copy(tmp, body); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	stamp := time.Now().UTC().Format("20060102T150405.000000Z")
	// A name taken (a restart within the same microsecond, or a file put
	// there by hand) takes the next number; a handful of tries is plenty.
	for range 100 {
		name := filepath.Join(s.dir, fmt.Sprintf("%s-%d.eml", stamp, s.seq.Add(1)))
		err := os.Link(tmp.Name(), name)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		return name, syncDir(s.dir)
	}
	return "", fmt.Errorf("no free file name for %s-<n>.eml in %s", stamp, s.dir)
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Sink) report(name, from string, to []string) {
	if s.out == nil {
		return
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.out, "mtasink: stored %s from=<%s> to=%s\n", name, from, strings.Join(to, ","))
}

// session is one SMTP connection's transaction state.
type session struct {
	sink *Sink
	from string
	to   []string
	mail bool // MAIL FROM seen (from may be "", the null sender)
}

func (s *session) Reset()        { s.from, s.to, s.mail = "", nil, false }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if hasControl(from) {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "sender address contains a control character"}
	}
	s.from, s.to, s.mail = from, nil, true
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if hasControl(to) {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "recipient address contains a control character"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	name, err := s.sink.store(s.from, s.to, r)
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		return err // 552 5.3.4, go-smtp's own
	case err != nil:
		// The disk, not the message: the client may try again.
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "sink could not store the message: " + err.Error()}
	}
	s.sink.report(name, s.from, s.to)
	return nil
}

// hasControl reports whether an address holds a character that would break
// the header line it is written into.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// discardLog drops go-smtp's server log.
type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}
