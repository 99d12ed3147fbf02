package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// Large messages: a body streams from the injecting client to the spool and
// from the spool to the receiver, so mtad's memory does not grow with
// message size times sessions (issue 8, point 3).

// payload is a deterministic body of exactly size bytes (size ≥ 24): CRLF
// lines of varied length, some starting with a dot (dot-stuffing on both
// sides), the last one filled out to end exactly at size with its CRLF.
// It is generated as it is read, never held whole.
type payload struct {
	size, off int64
	seed      int
	line      []byte
	lineOff   int
	n         int
}

func newPayload(seed int, size int64) *payload { return &payload{size: size, seed: seed} }

func (p *payload) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	w := 0
	for w < len(b) && p.off < p.size {
		if p.lineOff == len(p.line) {
			p.n++
			k := (p.n*7919 + p.seed) % 97
			p.line = p.line[:0]
			if k%13 == 0 {
				p.line = append(p.line, '.')
			}
			p.line = fmt.Appendf(p.line, "%d:%d ", p.seed, p.n)
			for len(p.line) < 10+k*9 {
				p.line = append(p.line, byte('a'+(len(p.line)+k)%26))
			}
			p.line = append(p.line, "\r\n"...)
			if rem := p.size - p.off; rem < int64(len(p.line))+12 {
				// The last line: every earlier one left at least 12
				// bytes, so this one has a byte or more before its CRLF.
				p.line = append(bytes.Repeat([]byte{'z'}, int(rem)-2), "\r\n"...)
			}
			p.lineOff = 0
		}
		c := copy(b[w:], p.line[p.lineOff:])
		c = int(min(int64(c), p.size-p.off))
		p.lineOff += c
		p.off += int64(c)
		w += c
	}
	return w, nil
}

// payloadSum is the sha256 of the body a message of id and size carries
// after its header section.
func payloadSum(seed int, size int64) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, newPayload(seed, size)); err != nil {
		panic(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// hashSink is an SMTP receiver that keeps only a checksum of what follows
// each message's header section, keyed by its X-Seed header, so it can take
// gigabytes without holding them.
type hashSink struct {
	srv  *smtp.Server
	done chan struct{}

	mu   sync.Mutex
	sums map[int][][32]byte // seed -> checksums of the bodies received
	errs []string
	ch   chan struct{} // closed and replaced on every message
}

func startHashSink(t *testing.T, ip string) (*hashSink, int) {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	s := &hashSink{done: make(chan struct{}), sums: map[int][][32]byte{}, ch: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &hashSession{s: s}, nil }))
	s.srv.Domain = "sink.e2e"
	s.srv.EnableSMTPUTF8, s.srv.EnableBINARYMIME = true, false
	s.srv.ReadTimeout, s.srv.WriteTimeout = 30*time.Second, 30*time.Second
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = s.srv.Close()
		_ = l.Close() // Close misses a listener Serve has not registered yet
		<-s.done
	})
	return s, l.Addr().(*net.TCPAddr).Port
}

type hashSession struct{ s *hashSink }

func (*hashSession) Mail(string, *smtp.MailOptions) error { return nil }
func (*hashSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*hashSession) Reset()                               {}
func (*hashSession) Logout() error                        { return nil }

func (hs *hashSession) Data(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	seed := -1
	for { // the header section: bounded lines, bounded count
		line, err := br.ReadSlice('\n')
		if err != nil {
			return hs.fail(fmt.Sprintf("header section: %v", err))
		}
		if bytes.Equal(line, []byte("\r\n")) {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("X-Seed: ")); ok {
			seed, _ = strconv.Atoi(strings.TrimSpace(string(v)))
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, br); err != nil {
		return hs.fail(fmt.Sprintf("body: %v", err))
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	s := hs.s
	s.mu.Lock()
	s.sums[seed] = append(s.sums[seed], sum)
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (hs *hashSession) fail(msg string) error {
	hs.s.mu.Lock()
	hs.s.errs = append(hs.s.errs, msg)
	hs.s.mu.Unlock()
	return &smtp.SMTPError{Code: 554, Message: msg}
}

// wait blocks until n messages have arrived or the timeout passes.
func (s *hashSink) wait(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		got, ch := 0, s.ch
		for _, v := range s.sums {
			got += len(v)
		}
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("sink got %d of %d messages in %v", got, n, timeout)
		}
	}
}

// injectLarge sends one message of a size-byte payload with DATA.
func injectLarge(addr string, seed int, size int64) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.e2e"); err != nil {
		return err
	}
	if err := c.Mail("big@sender.e2e", &smtp.MailOptions{Size: size}); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt("rcpt@big.e2e", nil); err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	hdr := fmt.Sprintf("Message-ID: <big%d@sender.e2e>\r\nX-Seed: %d\r\nSubject: large\r\n\r\n", seed, seed)
	if _, err := io.WriteString(w, hdr); err != nil {
		return err
	}
	// The header section counts toward the size; the payload fills the rest.
	if _, err := io.Copy(w, newPayload(seed, size-int64(len(hdr)))); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	return c.Quit()
}

func largeHeaderLen(seed int) int64 {
	return int64(len(fmt.Sprintf("Message-ID: <big%d@sender.e2e>\r\nX-Seed: %d\r\nSubject: large\r\n\r\n", seed, seed)))
}

// peakRSS is the process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// TestLargeMessagesStreamed: a message of exactly max_message_size (25 MiB,
// the shipped default) is accepted and arrives intact; then 50 clients
// inject 10 MiB messages at once, and every one arrives intact while mtad's
// peak RSS stays under 512 MiB.
func TestLargeMessagesStreamed(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 525 MiB through the daemon")
	}
	const sinkIP = "127.0.8.1"
	z := loopbacktest.StartDNS(t)
	sink, port := startHashSink(t, sinkIP)
	addMX(t, z, "big.e2e", sinkIP)
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port, maxConnections: 60, perDomain: 60})
	d := start(t, e)

	const maxSize = 25 << 20
	if err := injectLarge(d.smtpAddr, 0, maxSize); err != nil {
		t.Fatalf("a message of exactly max_message_size: %v", err)
	}
	sink.wait(t, 1, 2*time.Minute)

	const clients, size = 50, 10 << 20
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := 1; i <= clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := injectLarge(d.smtpAddr, i, size); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	sink.wait(t, 1+clients, 3*time.Minute)
	rss := peakRSS(t, d.cmd.Process.Pid)
	t.Logf("mtad peak RSS %.0f MiB after 1×25 MiB and %d×10 MiB messages", float64(rss)/(1<<20), clients)

	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.errs) > 0 {
		t.Errorf("sink: %v", sink.errs)
	}
	check := func(seed int, size int64) {
		want := payloadSum(seed, size-largeHeaderLen(seed))
		got := sink.sums[seed]
		if len(got) != 1 || got[0] != want {
			t.Errorf("message %d (%d bytes): %d copies at the sink, first intact: %v", seed, size, len(got), len(got) > 0 && got[0] == want)
		}
	}
	check(0, maxSize)
	for i := 1; i <= clients; i++ {
		check(i, size)
	}
	if rss >= 512<<20 {
		t.Errorf("mtad peak RSS %d MiB, want under 512 MiB", rss>>20)
	}
}
