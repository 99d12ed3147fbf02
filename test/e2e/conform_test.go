package e2e

import (
	"bytes"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// sendRaw injects one message with DATA as the client wrote it.
func sendRaw(t *testing.T, addr, from, to string, body string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.e2e"); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(from, []string{to}, strings.NewReader(body)); err != nil {
		t.Fatalf("inject: %v", err)
	}
	_ = c.Quit()
}

// afterTrace returns the message a sink received less the Received field
// mtad put at its head.
func afterTrace(t *testing.T, data []byte) *mail.Message {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("received message does not parse: %v\n%q", err, data)
	}
	for _, l := range bytes.Split(data, []byte("\r\n")) {
		if len(l) > 998 {
			t.Errorf("a line of %d octets reached the sink", len(l))
		}
	}
	return msg
}

// TestContentMadeConformant (issue 8, point 5): a 2,100-character line
// arrives at the sink as quoted-printable that decodes to the original
// text, and an 8-bit body sent to a sink without 8BITMIME arrives 7-bit,
// its text and Subject decoding to the original.
func TestContentMadeConformant(t *testing.T) {
	const plainIP, sevenIP = "127.0.9.1", "127.0.9.2"
	z, sinks, port := remote(t, []string{plainIP, sevenIP}, func(i int) loopbacktest.Config {
		return loopbacktest.Config{No8BitMIME: i == 1}
	})
	addMX(t, z, "plain.e2e", plainIP)
	addMX(t, z, "seven.e2e", sevenIP)
	addMX(t, z, "xn--bcher-kva.e2e", plainIP)
	d := start(t, newEnv(t, cfgOpts{dns: z.Addr, port: port}))

	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 47)[:2100]
	sendRaw(t, d.smtpAddr, "app@sender.e2e", "u@plain.e2e",
		"Subject: long\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nbefore\r\n"+long+"\r\nafter\r\n")
	msgs := sinks[0].WaitMessages(t, 1)
	msg := afterTrace(t, msgs[0].Data)
	if cte := msg.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
		t.Errorf("Content-Transfer-Encoding %q, want quoted-printable", cte)
	}
	dec, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil || string(dec) != "before\r\n"+long+"\r\nafter\r\n" {
		t.Errorf("the long line's part decodes to %q (%v), want the original text", dec, err)
	}

	// An SMTPUTF8 message to an IDN domain, for a sink without SMTPUTF8:
	// the envelope and the header section (mtad's own Received field
	// included) go ASCII, and it is delivered, not bounced.
	c, err := smtp.Dial(d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.e2e"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@sender.e2e", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("u@b\u00fccher.e2e", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "Subject: f\u00fcr dich\r\nTo: u@b\u00fccher.e2e\r\n\r\nhallo\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	_ = c.Close()
	msgs = sinks[0].WaitMessages(t, 2)
	idn := msgs[1]
	if idn.To[0] != "u@xn--bcher-kva.e2e" || idn.Mail.UTF8 {
		t.Errorf("IDN message reached the sink as RCPT %v, SMTPUTF8 %v", idn.To, idn.Mail.UTF8)
	}
	if i := bytes.IndexFunc(idn.Data, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Errorf("non-ASCII header at %d reached a sink without SMTPUTF8:\n%s", i, idn.Data)
	}
	msg = afterTrace(t, idn.Data)
	if subj, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil || subj != "f\u00fcr dich" {
		t.Errorf("Subject %q decodes to %q (%v)", msg.Header.Get("Subject"), subj, err)
	}

	eight := "Subject: Gr\u00fc\u00dfe\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSch\u00f6ne Gr\u00fc\u00dfe\r\n"
	sendRaw(t, d.smtpAddr, "app@sender.e2e", "u@seven.e2e", eight)
	msgs = sinks[1].WaitMessages(t, 1)
	if msgs[0].Body == smtp.Body8BitMIME {
		t.Error("BODY=8BITMIME sent to a sink that does not offer it")
	}
	if i := bytes.IndexFunc(msgs[0].Data, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Errorf("an 8-bit octet reached the 7-bit sink at %d", i)
	}
	msg = afterTrace(t, msgs[0].Data)
	if subj, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil || subj != "Gr\u00fc\u00dfe" {
		t.Errorf("Subject %q decodes to %q (%v)", msg.Header.Get("Subject"), subj, err)
	}
	dec, err = io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil || string(dec) != "Sch\u00f6ne Gr\u00fc\u00dfe\r\n" {
		t.Errorf("the 8-bit body decodes to %q (%v)", dec, err)
	}
}
