package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startSink runs a sink on a free loopback port, stopped at the test's end.
func startSink(t *testing.T, dir string, out io.Writer) *Sink {
	t.Helper()
	s, err := Listen("127.0.0.1:0", dir, out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(5 * time.Second); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// syncBuffer is a bytes.Buffer the sink's sessions may write to while the
// test reads it (the sink serialises its own writes; the reads need this).
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

var fileName = regexp.MustCompile(`^\d{8}T\d{6}\.\d{6}Z-\d+\.eml$`)

func TestStoresEachMessage(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "var", "sink") // created by Listen
	out := newSyncBuffer()
	s := startSink(t, dir, out)

	msgs := []struct {
		from string
		to   []string
		body string
	}{
		{"app@mtad.test", []string{"user@example.test"}, "Subject: one\r\n\r\nhello\r\n"},
		{"", []string{"a@example.test", "b@mtad.test"}, "Subject: two\r\n\r\nbounce-like, null sender\r\n"},
	}
	for _, m := range msgs {
		if err := send(s.Addr().String(), m.from, m.to, m.body); err != nil {
			t.Fatalf("send %q: %v", m.body, err)
		}
	}

	// send returned after the 250, which the sink gives only once the
	// file is in place: no waiting needed.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != len(msgs) {
		t.Fatalf("%d entries in %s, want %d (no temporary file left): %v", len(ents), dir, len(msgs), ents)
	}
	got := map[string]bool{}
	for _, e := range ents {
		if !fileName.MatchString(e.Name()) {
			t.Errorf("file %q is not <timestamp>-<n>.eml", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got[string(b)] = true
		if !strings.Contains(out.String(), "stored "+filepath.Join(dir, e.Name())) {
			t.Errorf("output %q does not report %s", out.String(), e.Name())
		}
	}
	for _, m := range msgs {
		want := "Return-Path: <" + m.from + ">\r\nX-Envelope-To: " + strings.Join(m.to, ", ") + "\r\n" + m.body
		if !got[want] {
			t.Errorf("no file holds %q; files: %v", want, got)
		}
	}
}

// TestRefusals: bad envelope input gets a permanent, precise reply; a
// sink that cannot write gets a transient one, as the disk may come back.
func TestRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startSink(t, dir, nil)

	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tp := textproto.NewConn(conn)
	defer tp.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	cmd := func(line string, wantCode int, wantText string) {
		t.Helper()
		if err := tp.PrintfLine("%s", line); err != nil {
			t.Fatal(err)
		}
		code, msg, err := tp.ReadResponse(wantCode)
		if err != nil || !strings.Contains(msg, wantText) {
			t.Fatalf("%q: %d %q (%v), want %d %q", line, code, msg, err, wantCode, wantText)
		}
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	cmd("EHLO test.localhost", 250, "")
	cmd("MAIL FROM:<a\x01b@mtad.test>", 553, "5.1.7")
	cmd("MAIL FROM:<app@mtad.test>", 250, "")
	cmd("RCPT TO:<u\x7fser@example.test>", 553, "5.1.3")
	cmd("RCPT TO:<user@example.test>", 250, "")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	cmd("DATA", 354, "")
	cmd("Subject: lost\r\n\r\nthe directory is gone\r\n.", 451, "4.3.0")
	cmd("QUIT", 221, "")
}

func TestCheckLoopback(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:2526", true},
		{"127.3.4.5:0", true},
		{"[::1]:2526", true},
		{"localhost:2526", true},
		{"[::ffff:127.0.0.1]:2526", true},
		{"0.0.0.0:2526", false},
		{":2526", false},
		{"[::]:2526", false},
		{"192.0.2.1:2526", false},
		{"[fe80::1%lo]:2526", false},
		{"example.test:2526", false},
		{"127.0.0.1", false},
		{"127.0.0.1:", false},
	} {
		err := checkLoopback(c.addr)
		if (err == nil) != c.ok {
			t.Errorf("checkLoopback(%q) = %v, want ok=%v", c.addr, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--listen") {
			t.Errorf("checkLoopback(%q) = %q: does not name --listen", c.addr, err)
		}
	}
}

// TestRun drives the command as make run does: it announces its address,
// stores a message, and exits 0 on SIGTERM; bad flags exit non-zero.
func TestRun(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"--listen", "0.0.0.0:0"}, 1, "--listen"},
		{[]string{"--dir", ""}, 1, "--dir"},
		{[]string{"extra"}, 2, "unexpected arguments"},
		{[]string{"--nope"}, 2, "-nope"},
	} {
		var out, errb bytes.Buffer
		if got := run(c.args, &out, &errb); got != c.code || !strings.Contains(errb.String(), c.err) {
			t.Errorf("run %q: exit %d stderr %q, want %d naming %q", c.args, got, errb.String(), c.code, c.err)
		}
	}
}

// TestAnnounce reads the first line a caller (make run, the end-to-end
// test) waits for, from the real process.
func TestAnnounce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "mtasink")
	if out, err := runCmd("go", "build", "-o", bin, "."); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	p, lines, err := startProc(bin, "--listen", "127.0.0.1:0", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	})
	first := nextLine(t, lines)
	m := regexp.MustCompile(`^mtasink listening on (127\.0\.0\.1:\d+), writing to `).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("first line %q, want the listening address", first)
	}
	if err := send(m[1], "app@mtad.test", []string{"user@example.test"}, "Subject: hi\r\n\r\nhello\r\n"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if l := nextLine(t, lines); !strings.Contains(l, "stored "+dir) {
		t.Errorf("second line %q, want the stored file", l)
	}
	if err := p.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for open := true; open; { // until the process closes its stdout
		select {
		case l, ok := <-lines:
			if open = ok; ok {
				t.Errorf("unexpected output %q", l)
			}
		case <-deadline:
			t.Fatal("still running 30s after SIGINT")
		}
	}
	exited = true
	if err := p.Wait(); err != nil {
		t.Fatalf("after SIGINT: %v, want exit 0", err)
	}
}

// nextLine waits (bounded) for the process's next line of output.
func nextLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("the process closed its output")
		}
		return l
	case <-time.After(30 * time.Second):
		t.Fatal("no line of output in 30s")
	}
	return ""
}

// send is one SMTP transaction over loopback, in clear text.
func send(addr, from string, to []string, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, to, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

func runCmd(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// startProc starts bin and returns its stdout lines; the channel closes
// when the process closes its stdout. Its buffer holds more lines than the
// tests read, so the reader never blocks on a test that stopped reading.
func startProc(bin string, args ...string) (*exec.Cmd, <-chan string, error) {
	p := exec.Command(bin, args...)
	p.Stderr = os.Stderr
	r, err := p.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := p.Start(); err != nil {
		return nil, nil, err
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for n := 0; sc.Scan() && n < cap(lines); n++ {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return p, lines, nil
}
