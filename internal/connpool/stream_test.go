package connpool

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// spoolLarge writes a body of about size bytes to the spool a piece at a
// time, as the injector does, and returns the message and the body's
// SHA-256. The body is CRLF text with dot lines and 8-bit octets.
func spoolLarge(t *testing.T, sp *spool.Spool, m *spool.Message, size int) [sha256.Size]byte {
	t.Helper()
	w := sp.NewBody()
	h := sha256.New()
	var line []byte
	for i := 0; w.Len() < int64(size); i++ {
		line = line[:0]
		switch i % 50 {
		case 0:
			line = append(line, ".a line that starts with a dot\r\n"...)
		case 1:
			line = append(line, ".\r\n"...)
		default:
			line = fmt.Appendf(line, "line %d of a large message, caf\xc3\xa9, some more text to fill it\r\n", i)
		}
		h.Write(line)
		if _, err := w.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.PutBody(m, w); err != nil {
		w.Abort()
		t.Fatal(err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// queueMsg queues m's delivery to domain on slot 0.
func (h *harness) queueMsg(m *spool.Message, domain string) *queue.Delivery {
	d := &queue.Delivery{MsgID: m.ID, Domain: domain, Sender: m.Sender, Arrival: m.Received.UnixNano(),
		Expires: time.Now().Add(time.Hour).UnixNano(), Size: m.Size, EightBit: m.EightBit, UTF8: m.SMTPUTF8,
		EnvID: m.EnvID, Ret: uint8(m.Ret)}
	for i, r := range m.Recipients {
		d.Rcpts = append(d.Rcpts, queue.Rcpt{Idx: int32(i), Addr: r.Addr, Notify: uint8(r.Notify), ORcpt: r.ORcpt})
	}
	h.q.Push(d)
	return d
}

// TestLargeMessageStreamed: a 25 MiB message goes from a real spool (in
// chunk records) through a session to a sink intact, by DATA and by BDAT.
func TestLargeMessageStreamed(t *testing.T) {
	t.Parallel()
	for i, chunked := range []bool{false, true} {
		name := map[bool]string{false: "DATA", true: "BDAT"}[chunked]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sinkIP := ip(19, 10+i)
			sinks, port := loopbacktest.StartSinks(t, []string{sinkIP}, func(int) loopbacktest.Config {
				return loopbacktest.Config{DigestOnly: true, ReadTimeout: 5 * time.Minute}
			})
			h := newHarness(t, port, nil, nil, func(o *Options) {
				o.DisableChunking = !chunked
				o.Timeouts.DataTerm = time.Minute
				o.Timeouts.DataBlock = time.Minute
			})
			h.dns.Add(t, "large.test. 60 IN MX 10 mx.large.test.", "mx.large.test. 60 IN A "+sinkIP)
			m := &spool.Message{Sender: "s@origin.test", Received: time.Now(), Recipients: []spool.Recipient{{Addr: "r@large.test"}}}
			sum := spoolLarge(t, h.sp, m, 25<<20)
			h.queueMsg(m, "large.test")
			h.pool.Open(h.q.Domain("large.test"), 0, 1)
			// A hang guard, not a timing assertion: 25 MiB through
			// go-smtp's byte-at-a-time reader under -race on a shared
			// 2-core box takes tens of seconds.
			var r result
			select {
			case r = <-h.out.results:
			case <-time.After(5 * time.Minute):
				t.Fatal("no delivery result")
			}
			delivered(t, r)
			got := sinks[0].WaitMessages(t, 1)[0]
			if got.Size != m.Size || got.SHA256 != sum {
				t.Fatalf("sink got %d bytes with a different checksum, want %d bytes intact", got.Size, m.Size)
			}
		})
	}
}

// TestDSNParametersPassedOn: a receiver that offers DSN gets RET, ENVID,
// NOTIFY and ORCPT as the injecting client gave them, and the attempt
// says so; one that does not gets none (go-smtp would refuse them with
// 504) and the attempt says that too.
func TestDSNParametersPassedOn(t *testing.T) {
	t.Parallel()
	for i, offered := range []bool{true, false} {
		t.Run(fmt.Sprint("offered=", offered), func(t *testing.T) {
			t.Parallel()
			sinkIP := ip(20, 10+i)
			sinks, port := loopbacktest.StartSinks(t, []string{sinkIP}, func(int) loopbacktest.Config {
				return loopbacktest.Config{DSN: offered}
			})
			h := newHarness(t, port, nil, nil, nil)
			h.dns.Add(t, "dsn.test. 60 IN MX 10 mx.dsn.test.", "mx.dsn.test. 60 IN A "+sinkIP)
			m := &spool.Message{Sender: "s@origin.test", Received: time.Now(), EnvID: "env-1+x", Ret: spool.RetFull,
				Recipients: []spool.Recipient{
					{Addr: "a@dsn.test", Notify: spool.NotifySuccess | spool.NotifyFailure, ORcpt: "rfc822;orig-a@first.example"},
					{Addr: "b@dsn.test", Notify: spool.NotifyNever},
					{Addr: "c@dsn.test"},
				}}
			if err := h.sp.Put(m, []byte("Subject: dsn\r\n\r\nhi\r\n")); err != nil {
				t.Fatal(err)
			}
			h.queueMsg(m, "dsn.test")
			h.pool.Open(h.q.Domain("dsn.test"), 0, 1)
			r := h.result()
			delivered(t, r)
			if r.at.DSN != offered {
				t.Errorf("Attempt.DSN = %v, want %v", r.at.DSN, offered)
			}
			got := sinks[0].WaitMessages(t, 1)[0]
			if !offered {
				if got.Mail.Return != "" || got.Mail.EnvelopeID != "" {
					t.Errorf("MAIL got RET=%q ENVID=%q from a sink without DSN", got.Mail.Return, got.Mail.EnvelopeID)
				}
				return
			}
			if got.Mail.Return != smtp.DSNReturnFull || got.Mail.EnvelopeID != "env-1+x" {
				t.Errorf("MAIL got RET=%q ENVID=%q", got.Mail.Return, got.Mail.EnvelopeID)
			}
			if len(got.Rcpt) != 3 {
				t.Fatalf("sink got %d RCPTs", len(got.Rcpt))
			}
			a, b, c := got.Rcpt[0], got.Rcpt[1], got.Rcpt[2]
			if fmt.Sprint(a.Notify) != "[SUCCESS FAILURE]" || a.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || a.OriginalRecipient != "orig-a@first.example" {
				t.Errorf("RCPT a: %+v", a)
			}
			if fmt.Sprint(b.Notify) != "[NEVER]" || b.OriginalRecipient != "" {
				t.Errorf("RCPT b: %+v", b)
			}
			if c.Notify != nil || c.OriginalRecipient != "" {
				t.Errorf("RCPT c: %+v, want no parameters", c)
			}
		})
	}
}

// countOpens wraps the pool's spool so that a test can count how often the
// converter opened a body.
type countOpens struct {
	Bodies
	n atomic.Int32
}

func (c *countOpens) OpenBody(id string) (*spool.BodyReader, error) {
	c.n.Add(1)
	return c.Bodies.OpenBody(id)
}

// TestEightBitToReceiverWithout8BitMIME: with the default converter
// (internal/conform), a body with 8-bit octets goes to a receiver without
// 8BITMIME by DATA, without BODY=8BITMIME, and arrives 7-bit: its text
// part quoted-printable and its Subject an encoded word, both decoding to
// the original, whether it was declared 8-bit or not. A 7-bit body arrives
// as it was. A message whose 8-bit content cannot be converted (in a
// multipart preamble, which no encoding covers) is refused permanently.
func TestEightBitToReceiverWithout8BitMIME(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(21, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{No8BitMIME: true}
	})
	var opens *countOpens
	h := newHarness(t, port, nil, nil, func(o *Options) {
		opens = &countOpens{Bodies: o.Bodies}
		o.Bodies = opens
	})
	h.dns.Add(t, "seven.test. 60 IN MX 10 mx.seven.test.", "mx.seven.test. 60 IN A "+ip(21, 10))
	eightBit := "Subject: caf\xc3\xa9\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nt\xc3\xa9st\r\n"
	bodies := map[string]string{"declared": eightBit, "undeclared": eightBit, "seven": "Subject: x\r\n\r\n=plain\r\n",
		"preamble": "Content-Type: multipart/mixed; boundary=b\r\n\r\npr\xc3\xa9amble\r\n--b\r\n\r\nx\r\n--b--\r\n"}
	names := []string{"declared", "undeclared", "seven", "preamble"}
	for _, name := range names {
		m := &spool.Message{Sender: "s@origin.test", Received: time.Now(), EightBit: name == "declared",
			Recipients: []spool.Recipient{{Addr: name + "@seven.test"}}}
		if err := h.sp.Put(m, []byte(bodies[name])); err != nil {
			t.Fatal(err)
		}
		h.queueMsg(m, "seven.test")
	}
	h.pool.Open(h.q.Domain("seven.test"), 0, 1)
	for range names {
		r := h.result()
		if r.d.Rcpts[0].Addr != "preamble@seven.test" {
			delivered(t, r)
			continue
		}
		if e := outcome.As(r.err); e == nil || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 6, 3}) {
			t.Errorf("unconvertible message: %v, want a permanent 5.6.3 failure", r.err)
		}
	}
	for _, m := range sinks[0].WaitMessages(t, len(names)-1) {
		name := strings.TrimSuffix(m.To[0], "@seven.test")
		if m.Body == smtp.Body8BitMIME {
			t.Errorf("%s: BODY=8BITMIME sent to a receiver without 8BITMIME", name)
		}
		if name == "seven" {
			if string(m.Data) != bodies[name] {
				t.Errorf("7-bit body changed: %q", m.Data)
			}
			continue
		}
		if bytes.IndexFunc(m.Data, func(r rune) bool { return r >= 0x80 }) >= 0 {
			t.Errorf("%s: body arrived with 8-bit octets: %q", name, m.Data)
		}
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if subj, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil || subj != "caf\u00e9" {
			t.Errorf("%s: Subject %q decodes to %q (%v)", name, msg.Header.Get("Subject"), subj, err)
		}
		if cte := msg.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
			t.Errorf("%s: Content-Transfer-Encoding %q", name, cte)
		}
		dec, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
		if err != nil || string(dec) != "t\u00e9st\r\n" {
			t.Errorf("%s: converted body decodes to %q (%v), want the original", name, dec, err)
		}
	}
	// Two passes for each 8-bit body; a 7-bit one is copied after its
	// scan; plus the delivery's own open of each (4 messages).
	if n := opens.n.Load(); n < 4+2+2+1 {
		t.Errorf("bodies opened %d times, want two passes per converted body", n)
	}
}

// TestUTF8RecipientToReceiverWithoutSMTPUTF8: through the pool, an IDN
// recipient is delivered with its A-label domain, and one whose local
// part is not ASCII fails alone, permanently.
func TestUTF8RecipientToReceiverWithoutSMTPUTF8(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(22, 10)}, nil)
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t, "xn--mnchen-3ya.test. 60 IN MX 10 mx.utf.test.", "mx.utf.test. 60 IN A "+ip(22, 10))
	m := &spool.Message{Sender: "s@origin.test", Received: time.Now(), SMTPUTF8: true,
		Recipients: []spool.Recipient{{Addr: "a@m\u00fcnchen.test"}, {Addr: "j\u00f6e@m\u00fcnchen.test"}}}
	if err := h.sp.Put(m, []byte("Subject: Gr\u00fc\u00dfe\r\nTo: a@m\u00fcnchen.test\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	// A header that cannot be made ASCII (a UTF-8 local part) fails for
	// good, with no transaction ended at the sink.
	m2 := &spool.Message{Sender: "s@origin.test", Received: time.Now(), SMTPUTF8: true,
		Recipients: []spool.Recipient{{Addr: "b@m\u00fcnchen.test"}}}
	if err := h.sp.Put(m2, []byte("From: j\u00f6e@origin.test\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	h.queueMsg(m, "xn--mnchen-3ya.test")
	h.pool.Open(h.q.Domain("xn--mnchen-3ya.test"), 0, 1)
	r := h.result()
	if r.err != nil || r.res.Data != nil || r.res.Rcpt[0] != nil {
		t.Fatalf("result %+v, %v", r.res, r.err)
	}
	if e := r.res.Rcpt[1]; e == nil || e.Temporary || e.Code != 553 || !strings.Contains(e.Message, "requires SMTPUTF8") {
		t.Errorf("non-ASCII local part: %+v", e)
	}
	got := sinks[0].WaitMessages(t, 1)[0]
	if len(got.To) != 1 || got.To[0] != "a@xn--mnchen-3ya.test" || got.Mail.UTF8 {
		t.Errorf("sink got RCPT %q SMTPUTF8=%v", got.To, got.Mail.UTF8)
	}
	// Its header section went ASCII: the Subject an encoded word, the
	// domain in To an A-label.
	if i := bytes.IndexFunc(got.Data, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Errorf("non-ASCII header reached a receiver without SMTPUTF8: %q", got.Data)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatal(err)
	}
	if subj, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil || subj != "Gr\u00fc\u00dfe" {
		t.Errorf("Subject %q decodes to %q (%v)", msg.Header.Get("Subject"), subj, err)
	}
	if to, err := mail.ParseAddress(msg.Header.Get("To")); err != nil || to.Address != "a@xn--mnchen-3ya.test" {
		t.Errorf("To: %q", msg.Header.Get("To"))
	}

	h.queueMsg(m2, "xn--mnchen-3ya.test")
	h.pool.Open(h.q.Domain("xn--mnchen-3ya.test"), 0, 1)
	r = h.result()
	if e := outcome.As(r.err); e == nil || e.Temporary || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) {
		t.Errorf("UTF-8 local part in From to a receiver without SMTPUTF8: %v, want a permanent 5.6.7", r.err)
	}
	if n := len(sinks[0].Messages()); n != 1 {
		t.Errorf("the sink has %d messages, want 1", n)
	}
}
