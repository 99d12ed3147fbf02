package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startSink(t *testing.T, addrs ...string) *sink {
	t.Helper()
	s, err := listenSink(addrs, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// dialEHLO connects to the sink, reads its greeting and sends EHLO; the
// caller reads the EHLO reply. The connection closes with the test.
func dialEHLO(t *testing.T, s *sink) (net.Conn, *textproto.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tp := textproto.NewConn(c)
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	if err := tp.PrintfLine("EHLO client"); err != nil {
		t.Fatal(err)
	}
	return c, tp
}

// TestPipelinedSession sends two whole transactions in one write, as a
// pipelining client may, and expects every reply in order and both messages
// counted with the ids from their Received headers.
func TestPipelinedSession(t *testing.T) {
	t.Parallel()
	s := startSink(t, "127.0.0.1")
	c, tp := dialEHLO(t, s)
	_, msg, err := tp.ReadResponse(250)
	if err != nil || !strings.Contains(msg, "PIPELINING") {
		t.Fatalf("EHLO: %q, %v; want PIPELINING advertised", msg, err)
	}
	msg1 := "Received: from x\r\n\tby mta with ESMTP id AAA111;\r\n\tdate\r\nReceived: from y by z id NOTME\r\nSubject: hi\r\n\r\n..dot-stuffed\r\nbody\r\n.\r\n"
	msg2 := "Subject: no received\r\n\r\nReceived: in the body id NOTME\r\n.\r\n"
	// DATA needs its 354 before the body; the rest can be pipelined.
	if _, err := fmt.Fprintf(c, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{250, 250, 354} {
		if _, _, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
	}
	if _, err := fmt.Fprintf(c, "%sRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", msg1); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{250, 250, 250, 250, 354} {
		if _, _, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
	}
	if _, err := fmt.Fprintf(c, "%sNOOP\r\nXYZZY\r\nQUIT\r\n", msg2); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{250, 250, 502, 221} {
		if _, _, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
	}
	recs := s.records()
	if len(recs) != 2 || recs[0].id != "AAA111" || recs[1].id != "" {
		t.Fatalf("records %+v, want ids AAA111 then none", recs)
	}
	st := s.snapshot()
	if st.Count != 2 || st.FirstNs == 0 || st.LastNs < st.FirstNs || st.Conns != 1 {
		t.Fatalf("stats %+v, want 2 messages on 1 connection", st)
	}
}

// TestGoSMTPClient delivers through a real client library on a second
// loopback address to check the sink listens on every address given.
func TestGoSMTPClient(t *testing.T) {
	t.Parallel()
	s := startSink(t, "127.0.0.1", "127.0.1.77")
	for i, addr := range []string{"127.0.0.1", "127.0.1.77"} {
		body := fmt.Sprintf("Received: from a by b with ESMTP id Q%d\r\n\r\nhello\r\n", i)
		c, err := smtp.Dial(fmt.Sprintf("%s:%d", addr, s.port))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("a@b.bench", []string{"c@d0.bench"}, strings.NewReader(body)); err != nil {
			t.Fatalf("sending to %s: %v", addr, err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
	recs := s.records()
	if len(recs) != 2 || recs[0].id != "Q0" || recs[1].id != "Q1" {
		t.Fatalf("records %+v, want Q0 and Q1", recs)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	if _, err := listenSink([]string{"127.0.0.1", "0.0.0.0"}, 0); err == nil {
		t.Fatal("listenSink with 0.0.0.0 succeeded, want an error")
	}
}

func TestReadData(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 200<<10) // longer than the reader's buffer
	tests := []struct {
		name, in, id string
		size         int64
		wantErr      bool
	}{
		{"empty", ".\r\n", "", 0, false},
		{"bare LF", "a\n.\n", "", 2, false},
		{"stuffed dot is not the end", "..\r\nx\r\n.\r\n", "", 7, false},
		{"received continuation", "Received: from a\r\n by b id X1\r\n\r\n.\r\n", "X1", 33, false},
		{"lower-case header", "received: by b id y2; now\r\n\r\n.\r\n", "y2", 29, false},
		{"only topmost", "Received: by b\r\nReceived: by c id Z\r\n\r\n.\r\n", "", 39, false},
		{"long line holding a dot", long + ".\r\nmore\r\n.\r\n", "", int64(len(long)) + 3 + 6, false},
		{"eof", "abc\r\n", "", 0, true},
	}
	for _, tc := range tests {
		id, size, err := readData(bufio.NewReaderSize(strings.NewReader(tc.in), 64<<10))
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err %v, want error %v", tc.name, err, tc.wantErr)
			continue
		}
		if tc.wantErr {
			continue
		}
		if id != tc.id || size != tc.size {
			t.Errorf("%s: id %q size %d, want %q %d", tc.name, id, size, tc.id, tc.size)
		}
	}
}

func TestVerb(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"ehlo x\r\n": "EHLO", "QUIT\r\n": "QUIT", "\r\n": "", "DATAX\r\n": "DATA", "rcpt to:<a>\n": "RCPT"} {
		if got := verb([]byte(in)); got != want {
			t.Errorf("verb(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzReadData checks that any input either ends in an error or yields an
// id that appears in the input and a size no larger than the input.
func FuzzReadData(f *testing.F) {
	f.Add([]byte("Received: from a\r\n by b id X1\r\n\r\nbody\r\n.\r\n"))
	f.Add([]byte("..\r\n.\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		id, size, err := readData(bufio.NewReaderSize(bytes.NewReader(in), 16))
		if err != nil {
			return
		}
		if size > int64(len(in)) {
			t.Fatalf("size %d > input %d", size, len(in))
		}
		if !bytes.Contains(in, []byte(id)) {
			t.Fatalf("id %q not in input", id)
		}
	})
}

// TestBDATSession: CHUNKING is offered; a message in two BDAT chunks, then
// one whose MAIL, RCPT, BDAT LAST and body come in one write, are counted
// with their sizes and Received ids; BDAT outside a transaction is refused
// and its chunk skipped, so the session stays in step.
func TestBDATSession(t *testing.T) {
	t.Parallel()
	s := startSink(t, "127.0.0.1")
	c, tp := dialEHLO(t, s)
	if _, msg, err := tp.ReadResponse(250); err != nil || !strings.Contains(msg, "CHUNKING") {
		t.Fatalf("EHLO: %q, %v; want CHUNKING advertised", msg, err)
	}
	part1 := "Received: from x by mta with ESMTP id BBB222;\r\n\tdate\r\nSub"
	part2 := "ject: hi\r\n\r\n.a line starting with a dot, not stuffed\r\n"
	msg2 := "Received: from y by mta id CCC333\r\n\r\nbody\r\n"
	fmt.Fprintf(c, "BDAT 5\r\nxxxxxMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s", len(part1), part1, len(part2), part2)
	fmt.Fprintf(c, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT %d LAST\r\n%sQUIT\r\n", len(msg2), msg2)
	for _, code := range []int{503, 250, 250, 250, 250, 250, 250, 250, 221} {
		if _, _, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
	}
	recs := s.records()
	if len(recs) != 2 || recs[0].id != "BBB222" || recs[1].id != "CCC333" {
		t.Fatalf("records %+v, want ids BBB222 then CCC333", recs)
	}
	if st := s.snapshot(); st.Count != 2 || st.Bytes != int64(len(part1)+len(part2)+len(msg2)) {
		t.Fatalf("stats %+v, want 2 messages of %d bytes", st, len(part1)+len(part2)+len(msg2))
	}
}
