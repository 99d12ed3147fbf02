// Package faultsrv is a scripted SMTP receiver for tests: raw TCP on a
// loopback address, each connection following a script of steps (expect a
// command, reply, hang, drip a reply a byte at a time, reset, close, or
// behave as a plain receiver for a while), so that a test can make a
// receiver misbehave at any exact point of a session and then behave again.
//
// It is test code only: nothing outside _test.go files may import it. It
// must never listen beyond loopback, and every goroutine it starts ends at
// Close (which the test's Cleanup calls): a hung step waits for the peer
// to go or for Close, a drip stops at Close, never on a timer of its own.
package faultsrv

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type kind int

const (
	kExpect kind = iota
	kReply
	kRaw
	kHang
	kDrip
	kReset
	kClose
	kReadData
	kServe
)

// Step is one action of a script.
type Step struct {
	k     kind
	s     string
	every time.Duration
	serve ServeOptions
}

// Script is what the server does on one connection, step by step. When
// the steps run out the server closes the connection.
type Script []Step

// Expect reads one command line and records an error (see Server.Err) if
// it does not start with prefix (case-insensitively).
func Expect(prefix string) Step { return Step{k: kExpect, s: prefix} }

// Reply writes lines, each ended by CRLF, in one write.
func Reply(lines ...string) Step {
	return Step{k: kReply, s: strings.Join(lines, "\r\n") + "\r\n"}
}

// Raw writes s as it is.
func Raw(s string) Step { return Step{k: kRaw, s: s} }

// Hang reads and discards until the peer closes or the server does.
func Hang() Step { return Step{k: kHang} }

// Drip writes s one byte at a time, a byte every `every`, until done, the
// peer goes or the server closes.
func Drip(s string, every time.Duration) Step { return Step{k: kDrip, s: s, every: every} }

// Reset closes the connection with a TCP RST (SO_LINGER 0).
func Reset() Step { return Step{k: kReset} }

// Close closes the connection (FIN).
func Close() Step { return Step{k: kClose} }

// ReadData reads a message body up to its terminating "." line.
func ReadData() Step { return Step{k: kReadData} }

// ServeOptions shape a Serve step.
type ServeOptions struct {
	// Messages, when > 0, ends the step after that many messages were
	// accepted (the script goes on, typically to Close).
	Messages int
	// MaxRcpts, when > 0, answers "452 4.5.3" to each RCPT past it in a
	// transaction (RFC 5321 §4.5.3.1.10).
	MaxRcpts int
	// DataReply, when set, is the reply to every end of data instead of
	// 250 (the message is then not recorded).
	DataReply string
	// Ext are EHLO keywords besides PIPELINING and 8BITMIME.
	Ext []string
	// TLS, when set, offers STARTTLS and does the handshake with it.
	TLS *tls.Config
}

// Serve behaves as a plain receiver (EHLO, HELO, MAIL, RCPT, DATA, RSET,
// NOOP, QUIT) until QUIT, the peer's close, or opts.Messages. The
// greeting is not part of it.
func Serve(opts ServeOptions) Step { return Step{k: kServe, serve: opts} }

// Greeting is the usual 220 banner.
func Greeting() Step { return Reply("220 fault.test ESMTP faultsrv") }

// EHLO answers an EHLO with PIPELINING and 8BITMIME, and ext.
func EHLO(ext ...string) []Step {
	return []Step{Expect("EHLO"), Reply(ehloLines(ext)...)}
}

func ehloLines(ext []string) []string {
	kw := append([]string{"fault.test", "PIPELINING", "8BITMIME"}, ext...)
	lines := make([]string, len(kw))
	for i, k := range kw {
		sep := "-"
		if i == len(kw)-1 {
			sep = " "
		}
		lines[i] = "250" + sep + k
	}
	return lines
}

// Good is a well-behaved receiver's script.
func Good() Script { return Script{Greeting(), Serve(ServeOptions{})} }

// Then concatenates steps and step lists into a Script.
func Then(parts ...any) Script {
	var s Script
	for _, p := range parts {
		switch v := p.(type) {
		case Step:
			s = append(s, v)
		case []Step:
			s = append(s, v...)
		case Script:
			s = append(s, v...)
		default:
			panic(fmt.Sprintf("faultsrv.Then: %T", p))
		}
	}
	return s
}

// Message is one message the server accepted.
type Message struct {
	Conn  int // the connection's number, from 0
	From  string
	Rcpts []string
	Body  string
}

// Server is a listening fault server.
type Server struct {
	ln       net.Listener
	scripts  []Script
	fallback Script
	done     chan struct{}
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	n     int
	msgs  []Message
	errs  []error
}

// Start listens on addr (a loopback "ip:port", port 0 for any) and serves
// connection i with scripts[i], and every later one with fallback. It is
// closed by t's Cleanup.
func Start(t testing.TB, addr string, fallback Script, scripts ...Script) *Server {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		t.Fatalf("faultsrv: %q is not a loopback address and port", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{ln: ln, scripts: scripts, fallback: fallback, done: make(chan struct{}),
		conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

// Addr is the address the server listens on, as "ip:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Port is the port the server listens on.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close stops the server, closes every connection and waits for their
// goroutines. Calling it again does nothing.
func (s *Server) Close() {
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return
	default:
	}
	close(s.done)
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Conns is how many connections were accepted.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Messages returns the messages accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Err returns the script mismatches seen so far (nil: none).
func (s *Server) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) == 0 {
		return nil
	}
	return fmt.Errorf("faultsrv: %v", s.errs)
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			c.Close()
			return
		default:
		}
		i := s.n
		s.n++
		s.conns[c] = struct{}{}
		script := s.fallback
		if i < len(s.scripts) {
			script = s.scripts[i]
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.run(i, c, script)
	}
}

func (s *Server) fail(conn int, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, fmt.Errorf("conn %d: "+format, append([]any{conn}, args...)...))
}

// maxLine bounds a command line read; a longer one ends the connection.
const maxLine = 64 << 10

func (s *Server) run(i int, c net.Conn, script Script) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 4096)
	for _, st := range script {
		switch st.k {
		case kExpect:
			line, err := readLine(r)
			if err != nil {
				return
			}
			if !strings.HasPrefix(strings.ToUpper(line), strings.ToUpper(st.s)) {
				s.fail(i, "got %q, want %s", line, st.s)
				return
			}
		case kReply, kRaw:
			if _, err := c.Write([]byte(st.s)); err != nil {
				return
			}
		case kHang:
			var buf [512]byte
			for {
				if _, err := r.Read(buf[:]); err != nil {
					return
				}
			}
		case kDrip:
			t := time.NewTicker(st.every)
			for j := 0; j < len(st.s); j++ {
				if _, err := c.Write([]byte{st.s[j]}); err != nil {
					t.Stop()
					return
				}
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return
				}
			}
			t.Stop()
		case kReset:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			return
		case kClose:
			return
		case kReadData:
			if _, err := readData(r); err != nil {
				return
			}
		case kServe:
			if !s.serve(i, &c, &r, st.serve) {
				return
			}
		}
	}
}

// serve is the Serve step; false means the connection is over.
func (s *Server) serve(i int, cp *net.Conn, rp **bufio.Reader, o ServeOptions) bool {
	var m Message
	accepted := 0
	reply := func(l ...string) bool {
		_, err := (*cp).Write([]byte(strings.Join(l, "\r\n") + "\r\n"))
		return err == nil
	}
	ext, tlsOn := o.Ext, false
	if o.TLS != nil {
		ext = append(ext[:len(ext):len(ext)], "STARTTLS")
	}
	for {
		r := *rp
		line, err := readLine(r)
		if err != nil {
			return false
		}
		verb := strings.ToUpper(line)
		if len(verb) > 4 {
			verb = verb[:4]
		}
		ok := true
		switch verb {
		case "EHLO":
			ok = reply(ehloLines(ext)...)
		case "STAR":
			if o.TLS == nil || tlsOn || r.Buffered() > 0 {
				ok = reply("454 4.7.0 TLS not available")
				break
			}
			if !reply("220 2.0.0 go ahead") {
				return false
			}
			tc := tls.Server(*cp, o.TLS)
			tc.SetDeadline(time.Now().Add(handshakeLimit))
			if err := tc.Handshake(); err != nil {
				return false
			}
			tc.SetDeadline(time.Time{})
			*cp, *rp = tc, bufio.NewReaderSize(tc, 4096)
			ext, m, tlsOn = o.Ext, Message{}, true
		case "HELO":
			ok = reply("250 fault.test")
		case "MAIL":
			m = Message{Conn: i, From: addrOf(line)}
			ok = reply("250 2.1.0 ok")
		case "RCPT":
			if o.MaxRcpts > 0 && len(m.Rcpts) >= o.MaxRcpts {
				ok = reply("452 4.5.3 Too many recipients")
				break
			}
			m.Rcpts = append(m.Rcpts, addrOf(line))
			ok = reply("250 2.1.5 ok")
		case "DATA":
			if len(m.Rcpts) == 0 {
				ok = reply("554 5.5.1 no valid recipients")
				break
			}
			if !reply("354 go ahead") {
				return false
			}
			body, err := readData(r)
			if err != nil {
				return false
			}
			if o.DataReply != "" {
				ok = reply(o.DataReply)
				m = Message{}
				break
			}
			m.Body = body
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
			accepted++
			ok = reply("250 2.0.0 queued as " + strconv.Itoa(len(s.Messages())))
			m = Message{}
			if o.Messages > 0 && accepted >= o.Messages {
				return ok
			}
		case "RSET":
			m = Message{}
			ok = reply("250 2.0.0 ok")
		case "NOOP":
			ok = reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return false
		default:
			ok = reply("500 5.5.2 unknown command")
		}
		if !ok {
			return false
		}
	}
}

// addrOf is the address between the first < and >.
func addrOf(line string) string {
	a, b := strings.IndexByte(line, '<'), strings.IndexByte(line, '>')
	if a < 0 || b < a {
		return ""
	}
	return line[a+1 : b]
}

func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > maxLine {
			return "", fmt.Errorf("faultsrv: line over %d bytes", maxLine)
		}
		if !isPrefix {
			return string(b), nil
		}
	}
}

// readData reads a dot-stuffed body to its "." line, bounded by maxData.
func readData(r *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := readLine(r)
		if err != nil {
			return "", err
		}
		if line == "." {
			return sb.String(), nil
		}
		line = strings.TrimPrefix(line, ".")
		if sb.Len()+len(line) > maxData {
			return "", fmt.Errorf("faultsrv: body over %d bytes", maxData)
		}
		sb.WriteString(line)
		sb.WriteString("\r\n")
	}
}

const maxData = 16 << 20

// handshakeLimit bounds a TLS handshake, so a client that stops midway
// does not hold the connection's goroutine until Close.
const handshakeLimit = 10 * time.Second
