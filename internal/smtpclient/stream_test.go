package smtpclient

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// splitReader returns its body in pieces whose sizes cycle through sizes,
// so a test chooses where the reads break.
type splitReader struct {
	b     []byte
	sizes []int
	i     int
}

func (r *splitReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(r.b)
	if len(r.sizes) > 0 {
		n = min(n, max(r.sizes[r.i%len(r.sizes)], 1))
		r.i++
	}
	n = copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// streamEncode writes body through dotWriter in pieces cut at cuts.
func streamEncode(body []byte, cuts []int) string {
	var out bytes.Buffer
	w := bufio.NewWriterSize(&out, 64)
	d := newDotWriter(w)
	prev := 0
	for _, c := range cuts {
		if c < prev || c > len(body) {
			continue
		}
		d.Write(body[prev:c])
		prev = c
	}
	d.Write(body[prev:])
	d.close()
	w.Flush()
	return out.String()
}

// crlfStream repairs body through crlfAppender in pieces cut at cuts.
func crlfStream(body []byte, cuts []int) string {
	a := newCRLFAppender()
	var out []byte
	prev := 0
	for _, c := range cuts {
		if c < prev || c > len(body) {
			continue
		}
		out = a.append(out, body[prev:c])
		prev = c
	}
	out = a.append(out, body[prev:])
	return string(a.finish(out))
}

// The cases where a read boundary falls inside what the writer must look
// at twice: a CRLF split, a "." that starts a read, a line split anywhere.
func TestStreamedWriterAcrossReads(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		body string
		cuts []int
	}{
		{"CR at the end of a read, LF at the start of the next", "ab\r\ncd\r\n", []int{3}},
		{"bare CR at the end of a read", "ab\rcd", []int{3}},
		{"bare CR at the end of the body", "ab\r", nil},
		{"dot at the start of a read", "ab\r\n.cd\r\n", []int{4}},
		{"dot at the start of a read after a split CRLF", "ab\r\n.\r\n", []int{3, 4}},
		{"dot mid-line at the start of a read", "ab.cd\r\n", []int{2}},
		{"line split across three reads", "a long line\r\n.x\r\n", []int{2, 7, 11, 12, 13}},
		{"bare LF at the start of a read", "ab\n.\n", []int{2, 3}},
		{"empty reads", "x\r\n", []int{0, 0, 1, 1, 2, 2}},
		{"smuggling across reads", "x\r\n.\rSMUGGLED", []int{3, 4, 5}},
	} {
		want := encodeBody([]byte(tc.body), 4096)
		if got := streamEncode([]byte(tc.body), tc.cuts); got != want {
			t.Errorf("%s: streamed %q = %q, want %q", tc.name, tc.body, got, want)
		}
		if got, want := crlfStream([]byte(tc.body), tc.cuts), normalise(tc.body); got != want {
			t.Errorf("%s: CRLF repair of %q = %q, want %q", tc.name, tc.body, got, want)
		}
	}
}

// FuzzStreamBody: the streamed writers, over any read splits, write what
// the one-shot writeBody (and the CRLF model) write for the body whole.
func FuzzStreamBody(f *testing.F) {
	for _, s := range []struct {
		body string
		cuts []byte
	}{
		{"a\r\n.b\r\n", []byte{1, 3, 4}},
		{"x\r\n.\rSMUGGLED", []byte{3, 4}},
		{"\r\n.\r\n\r", []byte{1, 2, 3}},
		{"..\n\r\r\n.", []byte{2, 3, 4}},
		{strings.Repeat("line .\r\n.", 20), []byte{7, 8, 9, 50, 51}},
	} {
		f.Add([]byte(s.body), s.cuts)
	}
	f.Fuzz(func(t *testing.T, body, cutBytes []byte) {
		cuts := make([]int, 0, len(cutBytes))
		pos := 0
		for _, c := range cutBytes {
			pos += int(c % 16)
			cuts = append(cuts, pos)
		}
		if got, want := streamEncode(body, cuts), encodeBody(body, 4096); got != want {
			t.Fatalf("streamed %q cut at %v = %q, one-shot %q", body, cuts, got, want)
		}
		if got, want := crlfStream(body, cuts), normalise(string(body)); got != want {
			t.Fatalf("CRLF repair of %q cut at %v = %q, want %q", body, cuts, got, want)
		}
	})
}

// largeBody is about n bytes of CRLF text with dot lines, a bare LF and a
// bare CR now and then, and 8-bit bytes.
func largeBody(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		switch i % 97 {
		case 0:
			b.WriteString(".leading dot\r\n")
		case 1:
			b.WriteString(".\r\n")
		case 2:
			b.WriteString("bare lf\n")
		case 3:
			b.WriteString("bare cr\r")
		default:
			fmt.Fprintf(&b, "line %d of a large body, caf\xc3\xa9 \xe2\x82\xac\r\n", i)
		}
	}
	return b.Bytes()
}

// A streamed body reaches the server intact, whatever its size, by DATA
// and by BDAT: up to 1 MiB in the envelope's group, above that in chunks
// after the RCPT replies. The reads break at odd places.
func TestStreamedSend(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, 5 << 10, 300 << 10, 3 << 19} {
		forBothTransfers(t, func(t *testing.T, chunked bool) {
			be := &backend{}
			// go-smtp's read timeout covers a whole DATA body, which its
			// byte-at-a-time reader takes seconds over under -race.
			addr := startServer(t, be, func(s *smtp.Server) { s.ReadTimeout = 2 * time.Minute })
			c := newClient(t, addr, Options{DisableChunking: !chunked})
			body := largeBody(size)
			r := &splitReader{b: body, sizes: []int{1, 7000, 65536, 3, 100000}}
			env := Envelope{From: "a@src.test", To: []string{"b@dst.test", "c@dst.test"}, Size: int64(len(body))}
			res, err := c.Send(env, Stream(r, int64(len(body))))
			if err != nil || res.Data != nil || res.Rcpt[0] != nil || res.Rcpt[1] != nil {
				t.Fatalf("size %d: Send = %+v, %v", size, res, err)
			}
			// A second transaction on the same connection: the first
			// left the session clean.
			res, err = c.Send(env, Stream(bytes.NewReader(body), int64(len(body))))
			if err != nil || res.Data != nil {
				t.Fatalf("size %d: second Send = %+v, %v", size, res, err)
			}
			_, _, msgs := be.snapshot()
			if len(msgs) != 2 {
				t.Fatalf("size %d: server got %d messages, want 2", size, len(msgs))
			}
			want := sha256.Sum256([]byte(normalise(string(body))))
			for i, m := range msgs {
				if got := sha256.Sum256([]byte(m.data)); got != want {
					t.Errorf("size %d: message %d arrived with %d bytes and a different checksum (sent %d)", size, i, len(m.data), len(body))
				}
			}
		})
	}
}

// A Produce body goes by DATA even where BDAT is offered (its size is not
// known), and arrives as the function wrote it.
func TestProducedBody(t *testing.T) {
	t.Parallel()
	be := &backend{}
	var dialog dialogLog
	addr := startServer(t, be, func(s *smtp.Server) { s.Debug = &dialog })
	c := newClient(t, addr, Options{})
	body := Produce(func(w io.Writer) error {
		for i := range 1000 {
			if _, err := fmt.Fprintf(w, ".line %d\n", i); err != nil {
				return err
			}
		}
		return nil
	})
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, body)
	if err != nil || res.Data != nil {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	var want strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&want, ".line %d\r\n", i)
	}
	if _, _, msgs := be.snapshot(); len(msgs) != 1 || msgs[0].data != want.String() {
		t.Fatalf("server got %d messages, want the produced body", len(msgs))
	}
	if d := dialog.String(); strings.Contains(d, "BDAT") || !strings.Contains(d, "DATA") {
		t.Errorf("produced body not sent with DATA alone")
	}
}

// failingReader fails after n bytes, as a spool read that hits a corrupt
// chunk midway.
type failingReader struct {
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	for i := range k {
		p[i] = "line\r\n"[i%6]
	}
	r.n -= k
	return k, nil
}

// A body that fails to read midway ends the connection without an end of
// data: the server never takes the truncated part for a message, and the
// caller gets a temporary local error.
func TestBodyReadFailure(t *testing.T) {
	t.Parallel()
	errDisk := errors.New("chunk 3: checksum mismatch")
	for _, size := range []int64{100 << 10, 4 << 20} {
		forBothTransfers(t, func(t *testing.T, chunked bool) {
			be := &backend{}
			addr := startServer(t, be, nil)
			c := newClient(t, addr, Options{DisableChunking: !chunked})
			res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}},
				Stream(&failingReader{n: 70 << 10, err: errDisk}, size))
			e := outcome.As(err)
			if res != nil || e == nil || !e.Temporary || e.Enhanced != enhLocalRead || !errors.Is(err, errDisk) {
				t.Fatalf("Send = %+v, %v; want a temporary 4.3.0 error wrapping the read error", res, err)
			}
			c.Close()
			if _, _, msgs := be.snapshot(); len(msgs) != 0 {
				t.Fatalf("server accepted %d messages from a truncated body", len(msgs))
			}
		})
	}
}

// A refused chunk of a large BDAT body stops the sending: the refusal is
// the transaction's result, no chunk follows it, and the next transaction
// starts with RSET.
func TestBDATChunkRefused(t *testing.T) {
	t.Parallel()
	var chunks []string
	addr := startRaw(t, func(c *rawConn) error {
		if err := c.hello("PIPELINING", "CHUNKING"); err != nil {
			return err
		}
		for _, want := range []string{"MAIL FROM:<a@src.test>", "RCPT TO:<b@dst.test>"} {
			if err := c.expect(want); err != nil {
				return err
			}
		}
		if err := c.send("250 2.1.0 ok", "250 2.1.5 ok"); err != nil {
			return err
		}
		// The client sends the first chunk, then the second before it
		// reads the first reply; the second is refused.
		for i := range 2 {
			l, err := c.line()
			if err != nil {
				return err
			}
			var n int
			if _, err := fmt.Sscanf(l, "BDAT %d", &n); err != nil || strings.HasSuffix(l, "LAST") {
				return fmt.Errorf("chunk %d: got %q, want a BDAT that is not LAST", i, l)
			}
			chunks = append(chunks, l)
			if _, err := io.CopyN(io.Discard, c.r, int64(n)); err != nil {
				return err
			}
		}
		if err := c.send("250 2.0.0 chunk ok", "552 5.3.4 message too big for this mailbox"); err != nil {
			return err
		}
		// At most the one chunk already in flight follows (RFC 3030 §2:
		// the server discards it), then the next transaction's RSET.
		for extra := 0; ; extra++ {
			l, err := c.line()
			if err != nil {
				return err
			}
			if l == "RSET" {
				break
			}
			var n int
			if _, err := fmt.Sscanf(l, "BDAT %d", &n); err != nil || extra > 0 {
				return fmt.Errorf("after the refused chunk: got %q (%d chunks after it), want at most one BDAT then RSET", l, extra)
			}
			if _, err := io.CopyN(io.Discard, c.r, int64(n)); err != nil {
				return err
			}
			if err := c.send("503 5.5.1 transaction failed, chunk discarded"); err != nil {
				return err
			}
		}
		if err := c.send("250 2.0.0 reset"); err != nil {
			return err
		}
		if err := c.expect("QUIT"); err != nil {
			return err
		}
		return c.send("221 bye")
	})
	c := newClient(t, addr, Options{})
	body := largeBody(3 << 20)
	res, err := c.Send(Envelope{From: "a@src.test", To: []string{"b@dst.test"}}, Stream(bytes.NewReader(body), int64(len(body))))
	if err != nil {
		t.Fatal(err)
	}
	if res.Data == nil || res.Data.Code != 552 || res.Data.Temporary || res.Rcpt[0] != nil {
		t.Fatalf("result %+v, want Data 552", res)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}
