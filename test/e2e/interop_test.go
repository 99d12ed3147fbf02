package e2e

// Interop tests (issue 8, "How it is shown"): real SMTP clients that mtad
// did not write inject into the daemon's listener, and every message must
// arrive at a sink intact. "Intact" is checked byte for byte: what the sink
// received, less the leading Received fields the MTAs on the way prepend
// (exactly one per hop, counted), is the client's message, compared by
// SHA-256 with the first differing offset on failure. The envelope (sender,
// each recipient exactly once, BODY=8BITMIME and SMTPUTF8 where declared)
// must survive too, and each message must have its "received" log record.
//
// These tests see mtad only through SMTP on the wire, its config keys and
// its JSON log, so that they hold for any implementation of the listener.
//
// The clients: go-smtp's client (DATA), a BDAT client written here on
// net/textproto (go-smtp's client v0.25.1 has no BDAT), Python's smtplib,
// and Postfix's smtp client (interop_postfix_test.go).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// ---------------------------------------------------------------- the sink

// sunk is one transaction a captureSink accepted.
type sunk struct {
	from string
	to   []string
	body smtp.BodyType // MAIL's BODY= ("" when absent)
	utf8 bool          // MAIL carried SMTPUTF8
	data []byte
}

// captureSink is a go-smtp server on 127.0.0.1:0 that keeps every message
// whole, offering SMTPUTF8 and 8BITMIME (go-smtp always offers the latter)
// so that mtad relays such messages as they are. loopbacktest's sinks do
// not offer SMTPUTF8, hence this one.
type captureSink struct {
	addr string
	port int

	mu     sync.Mutex
	msgs   []sunk
	notify chan struct{} // closed and replaced on every message
}

func startCaptureSink(t *testing.T) *captureSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink listen: %v", err)
	}
	s := &captureSink{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, notify: make(chan struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }))
	srv.Domain = "sink.interop"
	srv.EnableSMTPUTF8 = true
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	srv.ErrorLog = discardLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		_ = ln.Close() // Close misses a listener Serve has not registered yet
		<-done
	})
	return s
}

// discardLog drops go-smtp's server log: failures show in the checks.
type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

type sinkSession struct {
	sink *captureSink
	cur  sunk
}

func (s *sinkSession) Reset()        { s.cur = sunk{} }
func (s *sinkSession) Logout() error { return nil }
func (s *sinkSession) Mail(from string, o *smtp.MailOptions) error {
	s.cur = sunk{from: from}
	if o != nil {
		s.cur.body, s.cur.utf8 = o.Body, o.UTF8
	}
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.to = append(s.cur.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := s.cur
	m.data = data
	s.sink.mu.Lock()
	s.sink.msgs = append(s.sink.msgs, m)
	close(s.sink.notify)
	s.sink.notify = make(chan struct{})
	s.sink.mu.Unlock()
	return nil
}

// byMessageID waits until the sink holds, for every wanted message, a
// delivery to each of its recipients, and returns the transactions by
// Message-ID. The timeout is a bound against hangs, not a timing assertion.
func (s *captureSink) byMessageID(t *testing.T, want []sentMsg, timeout time.Duration) map[string][]sunk {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		got := map[string][]sunk{}
		rcpts := map[string]int{}
		for _, m := range s.msgs {
			id := messageID(m.data)
			got[id] = append(got[id], m)
			rcpts[id] += len(m.to)
		}
		ch := s.notify
		s.mu.Unlock()
		missing := 0
		for _, w := range want {
			if rcpts[w.id] < len(w.to) {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("after %s, %d of %d messages have not reached the sink for all their recipients", timeout, missing, len(want))
		}
	}
}

// ---------------------------------------------------------------- messages

// sentMsg is one message a client injected: envelope, bytes as the client
// meant them (CRLF line ends, not dot-stuffed), and how it was declared.
type sentMsg struct {
	id       string // Message-ID without brackets
	from     string
	to       []string
	data     []byte
	eightBit bool // sent with BODY=8BITMIME
	utf8     bool // sent with SMTPUTF8
}

// newMsg builds a message with the standard header fields and body.
func newMsg(id, from string, to []string, extraHeader, body string) sentMsg {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: %s\r\nSubject: interop %s\r\nMessage-ID: <%s>\r\nDate: %s\r\n%s\r\n",
		from, strings.Join(to, ", "), id, id, time.Now().Format(time.RFC1123Z), extraHeader)
	b.WriteString(body)
	return sentMsg{id: id, from: from, to: to, data: []byte(b.String())}
}

// trickyBody has the lines transparency and length limits are about: a
// line of a single dot (the DATA terminator when unstuffed), lines that
// start with one or two dots, a line of exactly 998 octets (RFC 5322's
// limit), trailing white space and an empty last line.
func trickyBody() string {
	return "first line\r\n" +
		".\r\n" +
		".leading dot\r\n" +
		"..two leading dots\r\n" +
		". dot space\r\n" +
		strings.Repeat("x", 997) + ".\r\n" + // 998 octets
		"trailing space \t\r\n" +
		"\r\n" +
		"last\r\n"
}

// ---------------------------------------------------------------- checks

// interop is one test's remote side and daemon: a DNS server giving
// a.interop and b.interop an MX on 127.0.0.1, the capture sink there, and
// mtad delivering to the sink's port.
type interop struct {
	sink *captureSink
	d    *daemon
}

func startInterop(t *testing.T) *interop {
	t.Helper()
	z := loopbacktest.StartDNS(t)
	for _, dom := range []string{"a.interop", "b.interop"} {
		z.Add(t, dom+". 300 IN MX 10 mx.interop.")
	}
	z.Add(t, "mx.interop. 300 IN A 127.0.0.1")
	sink := startCaptureSink(t)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: sink.port})
	return &interop{sink: sink, d: start(t, e)}
}

// verify waits for every message at the sink and checks each delivery:
// exactly hops leading Received fields, then the client's bytes unchanged;
// the envelope sender and declarations as sent; every recipient delivered
// exactly once. It also checks each message's "received" log record.
func (in *interop) verify(t *testing.T, msgs []sentMsg, hops int) {
	t.Helper()
	got := in.sink.byMessageID(t, msgs, 90*time.Second)
	for _, m := range msgs {
		var rcpts []string
		for _, s := range got[m.id] {
			rcpts = append(rcpts, s.to...)
			if s.from != m.from {
				t.Errorf("%s: envelope sender at the sink %q, want %q", m.id, s.from, m.from)
			}
			if m.eightBit && s.body != smtp.Body8BitMIME {
				t.Errorf("%s: sent with BODY=8BITMIME, relayed with BODY=%q", m.id, s.body)
			}
			if m.utf8 && !s.utf8 {
				t.Errorf("%s: sent with SMTPUTF8, relayed without", m.id)
			}
			n, rest := splitTrace(s.data)
			if n != hops {
				t.Errorf("%s: %d leading Received fields at the sink, want %d (one per MTA on the way)", m.id, n, hops)
			}
			if msg := sameBytes(m.data, rest); msg != "" {
				t.Errorf("%s to %v: not intact: %s", m.id, s.to, msg)
			}
		}
		sort.Strings(rcpts)
		want := append([]string(nil), m.to...)
		sort.Strings(want)
		if strings.Join(rcpts, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: recipients delivered %q, want each of %q once", m.id, rcpts, want)
		}
	}
	in.checkReceived(t, msgs)
}

// stop stops the daemon with SIGTERM: a clean exit is part of the contract.
func (in *interop) stop(t *testing.T) {
	t.Helper()
	if code := in.d.stop(); code != 0 {
		t.Errorf("mtad exit code after SIGTERM = %d, want 0: %s", code, in.d.output())
	}
}

// checkReceived finds each message's "received" record (by Message-ID) and
// checks its envelope.
func (in *interop) checkReceived(t *testing.T, msgs []sentMsg) {
	t.Helper()
	recs := map[string]record{}
	for _, r := range in.d.records() {
		if r.str("event") == "received" {
			recs[strings.Trim(r.str("message_id"), "<>")] = r
		}
	}
	for _, m := range msgs {
		r, ok := recs[m.id]
		if !ok {
			t.Errorf("%s: no \"received\" log record", m.id)
			continue
		}
		if r.str("sender") != m.from || r.str("queue_id") == "" {
			t.Errorf("%s: received record sender %q queue_id %q, want %q and an id", m.id, r.str("sender"), r.str("queue_id"), m.from)
		}
		var logged []string
		for _, v := range asSlice(r["recipients"]) {
			s, _ := v.(string)
			logged = append(logged, s)
		}
		want := append([]string(nil), m.to...)
		// A relaying MTA may reorder a message's recipients (Postfix's
		// queue manager sorts them).
		sort.Strings(logged)
		sort.Strings(want)
		if strings.Join(logged, ",") != strings.Join(want, ",") {
			t.Errorf("%s: received record recipients %q, want %q", m.id, logged, m.to)
		}
	}
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// splitTrace counts the Received fields at the head of data (each with its
// folded continuation lines) and returns what follows them.
func splitTrace(data []byte) (int, []byte) {
	n := 0
	for len(data) >= 9 && strings.EqualFold(string(data[:9]), "Received:") {
		end := 0
		for {
			i := bytes.Index(data[end:], []byte("\r\n"))
			if i < 0 {
				return n, data // an unterminated field: let the comparison fail
			}
			end += i + 2
			if end < len(data) && (data[end] == ' ' || data[end] == '\t') {
				continue
			}
			break
		}
		data = data[end:]
		n++
	}
	return n, data
}

// sameBytes says how got differs from want ("" if it does not).
func sameBytes(want, got []byte) string {
	if sha256.Sum256(want) == sha256.Sum256(got) {
		return ""
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	excerpt := func(b []byte) string { return fmt.Sprintf("%q", b[max(0, i-40):min(len(b), i+40)]) }
	return fmt.Sprintf("sha256 %x (%d octets) at the sink, sent %x (%d octets); first difference at offset %d: sent %s, got %s",
		sha256.Sum256(got), len(got), sha256.Sum256(want), len(want), i, excerpt(want), excerpt(got))
}

// ---------------------------------------------------------------- go-smtp, DATA

// TestInteropGoSMTPData: go-smtp's client injects by DATA, one session, a
// plain message, an 8-bit body declared BODY=8BITMIME, an SMTPUTF8
// transaction with UTF-8 addresses, and a message to two domains with the
// dot and length edge cases.
func TestInteropGoSMTPData(t *testing.T) {
	t.Parallel()
	in := startInterop(t)

	plain := newMsg("plain@interop", "app@snd.interop", []string{"u1@a.interop"}, "", "Hello.\r\nA plain ASCII body.\r\n")
	eight := newMsg("8bit@interop", "app@snd.interop", []string{"u2@a.interop"},
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
		"Grüße aus Köln, ½ € — naïve café.\r\nЗдравствуйте. こんにちは\r\n")
	eight.eightBit = true
	utf := newMsg("utf8@interop", "sénder@snd.interop", []string{"jörg@a.interop", "ü@b.interop"},
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
		"An SMTPUTF8 message: Jörg, Ünal.\r\n")
	utf.eightBit, utf.utf8 = true, true
	tricky := newMsg("tricky@interop", "app@snd.interop", []string{"u3@a.interop", "u4@b.interop", "u5@a.interop"}, "", trickyBody())
	msgs := []sentMsg{plain, eight, utf, tricky}

	c, err := smtp.Dial(in.d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if err := c.Hello("gosmtp.interop"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO reply does not offer %s", ext)
		}
	}
	for _, m := range msgs {
		opts := &smtp.MailOptions{UTF8: m.utf8}
		if m.eightBit {
			opts.Body = smtp.Body8BitMIME
		}
		if err := c.Mail(m.from, opts); err != nil {
			t.Fatalf("%s: MAIL: %v", m.id, err)
		}
		for _, r := range m.to {
			if err := c.Rcpt(r, nil); err != nil {
				t.Fatalf("%s: RCPT %s: %v", m.id, r, err)
			}
		}
		w, err := c.Data()
		if err != nil {
			t.Fatalf("%s: DATA: %v", m.id, err)
		}
		if _, err := w.Write(m.data); err != nil {
			t.Fatalf("%s: body: %v", m.id, err)
		}
		// CloseWithResponse fails on anything but a 2xx.
		if _, err := w.CloseWithResponse(); err != nil {
			t.Fatalf("%s: final dot: %v", m.id, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	in.verify(t, msgs, 1)
	in.stop(t)
}

// ---------------------------------------------------------------- BDAT

// bdatClient is a minimal RFC 3030 client on net/textproto: go-smtp's
// client has no BDAT. It checks every reply's code.
type bdatClient struct {
	conn net.Conn
	tp   *textproto.Conn
	ext  map[string]bool
}

func dialBDAT(t *testing.T, addr string) *bdatClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// One bound for the whole session: far above what it takes, so only a
	// hang trips it.
	_ = conn.SetDeadline(time.Now().Add(90 * time.Second))
	c := &bdatClient{conn: conn, tp: textproto.NewConn(conn), ext: map[string]bool{}}
	t.Cleanup(func() { c.tp.Close() })
	if _, _, err := c.tp.ReadResponse(220); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if err := c.tp.PrintfLine("EHLO bdat.interop"); err != nil {
		t.Fatal(err)
	}
	_, text, err := c.tp.ReadResponse(250)
	if err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	for _, line := range strings.Split(text, "\n")[1:] {
		c.ext[strings.ToUpper(strings.Fields(line + " x")[0])] = true
	}
	for _, ext := range []string{"CHUNKING", "PIPELINING"} {
		if !c.ext[ext] {
			t.Fatalf("EHLO reply does not offer %s: %q", ext, text)
		}
	}
	return c
}

// send sends m in chunks of the given sizes (the last chunk is what is
// left, sent with LAST). pipelined writes MAIL, RCPTs and every BDAT in one
// go and only then reads the replies (RFC 2920 with RFC 3030); otherwise
// each reply is read before the next command.
func (c *bdatClient) send(m sentMsg, sizes []int, pipelined bool) error {
	params := ""
	if m.eightBit {
		params += " BODY=8BITMIME"
	}
	if m.utf8 {
		params += " SMTPUTF8"
	}
	type step struct {
		what  string
		write func() error
	}
	line := func(format string, a ...any) func() error {
		return func() error { return c.tp.PrintfLine(format, a...) }
	}
	steps := []step{{"MAIL", line("MAIL FROM:<%s>%s", m.from, params)}}
	for _, r := range m.to {
		steps = append(steps, step{"RCPT " + r, line("RCPT TO:<%s>", r)})
	}
	rest := m.data
	for i := 0; ; i++ {
		n := len(rest)
		if i < len(sizes) && sizes[i] < n {
			n = sizes[i]
		}
		chunk, last := rest[:n], n == len(rest)
		rest = rest[n:]
		cmd := fmt.Sprintf("BDAT %d", len(chunk))
		if last {
			cmd += " LAST"
		}
		steps = append(steps, step{cmd, func() error {
			if _, err := fmt.Fprintf(c.tp.W, "%s\r\n", cmd); err != nil {
				return err
			}
			if _, err := c.tp.W.Write(chunk); err != nil {
				return err
			}
			return c.tp.W.Flush()
		}})
		if last {
			break
		}
	}
	read := func(s step) error {
		code, text, err := c.tp.ReadResponse(250)
		if err != nil {
			return fmt.Errorf("%s: %d %s: %w", s.what, code, text, err)
		}
		return nil
	}
	if pipelined {
		// The writes go into the socket buffers while nothing is read: a 3 MiB
		// message would fill them, so only small messages are pipelined
		// whole here.
		for _, s := range steps {
			if err := s.write(); err != nil {
				return fmt.Errorf("%s: %w", s.what, err)
			}
		}
		for _, s := range steps {
			if err := read(s); err != nil {
				return err
			}
		}
		return nil
	}
	for _, s := range steps {
		if err := s.write(); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		if err := read(s); err != nil {
			return err
		}
	}
	return nil
}

// bigBody is about size octets of text whose every line is different (a
// counter), with a lone dot, dot-leading lines and CRLF.CRLF every few
// hundred lines: in BDAT these are plain content, and mtad must dot-stuff
// them when it relays by DATA.
func bigBody(size int) string {
	var b strings.Builder
	b.Grow(size + 100)
	for i := 0; b.Len() < size; i++ {
		switch i % 500 {
		case 17:
			b.WriteString(".\r\n")
		case 18:
			b.WriteString("..\r\n")
		case 19:
			fmt.Fprintf(&b, ".line %d starts with a dot\r\n", i)
		default:
			fmt.Fprintf(&b, "%08d The quick brown fox jumps over the lazy dog; 0123456789 abcdef\r\n", i)
		}
	}
	return b.String()
}

// TestInteropBDAT: BDAT in several chunks, with chunk boundaries inside a
// CRLF and right after a dot; a ~3 MiB body in uneven chunks; one
// transaction pipelined whole; an 8-bit body declared BODY=8BITMIME.
func TestInteropBDAT(t *testing.T) {
	t.Parallel()
	in := startInterop(t)

	small := newMsg("bdat-small@interop", "app@snd.interop", []string{"u1@a.interop", "u2@b.interop"}, "", trickyBody())
	// Split inside the header section, inside the first CRLF of the body
	// (a chunk ending in CR) and just after the lone dot.
	hdrEnd := bytes.Index(small.data, []byte("\r\n\r\n"))
	dot := bytes.Index(small.data, []byte("\r\n.\r\n"))
	smallSizes := []int{20, hdrEnd + 1 - 20, dot + 3 - (hdrEnd + 1)}

	big := newMsg("bdat-big@interop", "app@snd.interop", []string{"big@a.interop"}, "", bigBody(3<<20))
	bigSizes := []int{1<<20 - 1, 1 << 20, 7, 1<<20 + 3} // the rest, about 30 KB, goes LAST

	eight := newMsg("bdat-8bit@interop", "app@snd.interop", []string{"u3@a.interop"},
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
		"Übergröße: 8-bit text in BDAT chunks, ½ €.\r\n.\r\n")
	eight.eightBit = true
	pipe := newMsg("bdat-pipelined@interop", "app@snd.interop", []string{"u4@a.interop", "u5@b.interop"}, "", trickyBody())

	c := dialBDAT(t, in.d.smtpAddr)
	cases := []struct {
		m         sentMsg
		sizes     []int
		pipelined bool
	}{
		{small, smallSizes, false},
		{big, bigSizes, false},
		{eight, []int{10, 100}, false},
		{pipe, []int{50, 50, 50}, true},
	}
	for _, tc := range cases {
		if err := c.send(tc.m, tc.sizes, tc.pipelined); err != nil {
			t.Fatalf("%s: %v", tc.m.id, err)
		}
	}
	if err := c.tp.PrintfLine("QUIT"); err == nil {
		_, _, _ = c.tp.ReadResponse(221)
	}
	var msgs []sentMsg
	for _, tc := range cases {
		msgs = append(msgs, tc.m)
	}
	in.verify(t, msgs, 1)
	in.stop(t)
}

// ---------------------------------------------------------------- Python

// TestInteropPythonSmtplib: Python's smtplib (testdata/interop_smtplib.py)
// sends, in one session with SMTP.sendmail, a message to several
// recipients in two domains, one with the dot-leading lines and a line of
// exactly 998 octets (smtplib does the dot-stuffing), an 8-bit body
// (BODY=8BITMIME) and an SMTPUTF8 one.
func TestInteropPythonSmtplib(t *testing.T) {
	t.Parallel()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 not found (%v): run 'make deps' (as root it installs it with apt)", err)
	}
	in := startInterop(t)

	multi := newMsg("py-multi@interop", "app@snd.interop",
		[]string{"r1@a.interop", "r2@b.interop", "r3@a.interop", "r4@b.interop", "r5@a.interop"}, "", "One message, five recipients, two domains.\r\n")
	tricky := newMsg("py-tricky@interop", "app@snd.interop", []string{"r6@a.interop", "r7@b.interop"}, "", trickyBody())
	eight := newMsg("py-8bit@interop", "app@snd.interop", []string{"r8@a.interop"},
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
		"Smörgåsbord, ½ €.\r\n.\r\n")
	eight.eightBit = true
	utf := newMsg("py-utf8@interop", "pÿthon@snd.interop", []string{"zoë@a.interop"},
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
		"SMTPUTF8 from smtplib: Zoë.\r\n")
	utf.eightBit, utf.utf8 = true, true
	msgs := []sentMsg{multi, tricky, eight, utf}

	dir := t.TempDir()
	type specMsg struct {
		From        string   `json:"from"`
		To          []string `json:"to"`
		File        string   `json:"file"`
		MailOptions []string `json:"mail_options"`
	}
	var spec []specMsg
	for i, m := range msgs {
		f := filepath.Join(dir, fmt.Sprintf("msg%d.eml", i))
		if err := os.WriteFile(f, m.data, 0o600); err != nil {
			t.Fatal(err)
		}
		opts := []string{}
		if m.eightBit {
			opts = append(opts, "BODY=8BITMIME")
		}
		if m.utf8 {
			opts = append(opts, "SMTPUTF8")
		}
		spec = append(spec, specMsg{From: m.from, To: m.to, File: f, MailOptions: opts})
	}
	specPath := filepath.Join(dir, "spec.json")
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specPath, js, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(in.d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script := filepath.Join(moduleRoot, "test", "e2e", "testdata", "interop_smtplib.py")
	out, err := exec.CommandContext(ctx, py, script, host, port, specPath).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "sent "); n != len(msgs) {
		t.Fatalf("smtplib reports %d messages sent, want %d:\n%s", n, len(msgs), out)
	}
	in.verify(t, msgs, 1)
	in.stop(t)
}
