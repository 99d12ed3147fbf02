package e2e

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestNotifySuccessEndToEnd (issue 8, point 8): NOTIFY=SUCCESS with
// ORCPT and ENVID, injected through the daemon's listener. To a receiver
// that offers DSN the parameters are passed on and mtad sends no DSN of
// its own; to one that does not, the sender gets an "Action: relayed" DSN
// carrying the ENVID and ORCPT.
func TestNotifySuccessEndToEnd(t *testing.T) {
	const withIP, withoutIP, senderIP = "127.0.9.11", "127.0.9.12", "127.0.9.13"
	z, sinks, port := remote(t, []string{withIP, withoutIP, senderIP}, func(i int) loopbacktest.Config {
		return loopbacktest.Config{DSN: i == 0}
	})
	addMX(t, z, "with.e2e", withIP)
	addMX(t, z, "without.e2e", withoutIP)
	addMX(t, z, "sender.e2e", senderIP)
	d := start(t, newEnv(t, cfgOpts{dns: z.Addr, port: port}))

	send := func(to string) {
		t.Helper()
		c, err := smtp.Dial(d.smtpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("client.e2e"); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("app@sender.e2e", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "ENV-" + to}); err != nil {
			t.Fatalf("MAIL: %v", err)
		}
		ro := &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
			OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig+" + to}
		if err := c.Rcpt(to, ro); err != nil {
			t.Fatalf("RCPT: %v", err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("Subject: notify\r\nMessage-ID: <n-" + to + ">\r\n\r\nhello\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("end of data: %v", err)
		}
		_ = c.Quit()
	}
	send("u@with.e2e")
	got := sinks[0].WaitMessages(t, 1)[0]
	if len(got.Rcpt) != 1 || len(got.Rcpt[0].Notify) != 2 || got.Rcpt[0].OriginalRecipient != "orig+u@with.e2e" ||
		got.Mail.EnvelopeID != "ENV-u@with.e2e" || got.Mail.Return != smtp.DSNReturnHeaders {
		t.Errorf("the DSN-capable receiver saw MAIL %+v RCPT %+v, want the parameters passed on", got.Mail, got.Rcpt)
	}

	send("u@without.e2e")
	sinks[1].WaitMessages(t, 1)
	dsn := sinks[2].WaitMessages(t, 1)[0]
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "app@sender.e2e" {
		t.Fatalf("DSN envelope from %q to %v", dsn.From, dsn.To)
	}
	for _, want := range []string{"action: relayed", "original-envelope-id: env-u@without.e2e",
		"original-recipient: rfc822; orig+u@without.e2e", "final-recipient: rfc822; u@without.e2e"} {
		if !bytes.Contains(bytes.ToLower(dsn.Data), []byte(want)) {
			t.Errorf("the relayed DSN lacks %q:\n%s", want, dsn.Data)
		}
	}
	if bytes.Contains(dsn.Data, []byte("hello")) {
		t.Error("RET=HDRS DSN returned the body")
	}
	// The DSN-capable receiver's message made no DSN: a DSN is logged
	// before the outcome that caused it, so once both delivered records
	// are in the log, so are all the dsn records there will be.
	var withID string
	d.waitRecords("both delivered", 30*time.Second, func(rs []record) bool {
		n := 0
		for _, r := range rs {
			if r.str("event") == "delivered" && strings.HasSuffix(r.str("recipient"), ".e2e") && r.str("recipient") != "app@sender.e2e" {
				n++
				if r.str("recipient") == "u@with.e2e" {
					withID = r.str("queue_id")
					// A delivered record says which reply delivered it.
					if r.str("phase") != "dot" || r.str("enhanced_code") != "2.0.0" || r.num("code") != 250 {
						t.Errorf("delivered record %v: want phase dot, 250 2.0.0", r)
					}
				}
			}
		}
		return n == 2
	})
	for _, r := range d.records() {
		if r.str("event") == "dsn" && r.str("dsn_for") == withID {
			t.Errorf("a DSN was sent for the message the DSN-capable receiver took: %v", r)
		}
	}
}
