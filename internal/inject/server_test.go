package inject

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/spool"
)

func TestAcceptStoresMessage(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	c := e.client(t, relayIP)

	sent := "From: app@example.com\r\n" +
		"To: a@example.net\r\n" +
		"Message-ID: <m1@example.com>\r\n" +
		"X-Binding-Group: bulk\r\n" +
		"Subject: hello\r\n" +
		"X-Binding:\r\n ip1\r\n" +
		"\r\n" +
		"Hello,\r\n.a line starting with a dot\r\nX-Binding: in the body stays\r\n"
	want := "From: app@example.com\r\n" +
		"To: a@example.net\r\n" +
		"Message-ID: <m1@example.com>\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"Hello,\r\n.a line starting with a dot\r\nX-Binding: in the body stays\r\n"

	id, err := send(c, "app@example.com", []string{"a@example.net", "b@example.org"}, sent, &smtp.MailOptions{Body: smtp.Body8BitMIME})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatalf("spool get %s: %v", id, err)
	}
	if m.Sender != "app@example.com" || m.ClientIP != relayIP || m.Helo != "client.test" ||
		m.MessageID != "<m1@example.com>" || m.Group != "bulk" || m.Binding != "ip1" ||
		!m.EightBit || m.SMTPUTF8 || m.AuthUser != "" {
		t.Errorf("stored message = %+v", m)
	}
	if len(m.Recipients) != 2 || m.Recipients[0].Addr != "a@example.net" || m.Recipients[1].Addr != "b@example.org" ||
		m.Recipients[0].State != spool.Pending || m.Recipients[1].State != spool.Pending {
		t.Errorf("stored recipients = %+v", m.Recipients)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatalf("spool body: %v", err)
	}
	// Two recipients: the Received field names neither.
	rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com"})
	if rest != want {
		t.Errorf("stored body after Received:\n got %q\nwant %q", rest, want)
	}
	if m.Size != int64(len(body)) {
		t.Errorf("stored size %d, body is %d bytes", m.Size, len(body))
	}
	select {
	case sub := <-e.subs:
		if sub.ID != id {
			t.Errorf("handed off %s, want %s", sub.ID, id)
		}
	default:
		t.Error("message not handed off")
	}
	if r := e.records("received", map[string]any{"queue_id": id, "message_id": "<m1@example.com>", "client_ip": relayIP, "size": len(body)}); len(r) != 1 {
		t.Errorf("received records for %s: %v", id, e.logs.All())
	}
	if err := c.Quit(); err != nil {
		t.Errorf("quit: %v", err)
	}
}

// TestRawSession checks replies byte for byte, a pipelined transaction,
// line-ending normalisation and dot-unstuffing.
func TestRawSession(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.write("EHLO client.test\r\nMAIL FROM:<app@example.com> SIZE=100\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
	ehlo := rc.reply()
	for _, ext := range []string{"250-PIPELINING", "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-STARTTLS", "250 AUTH PLAIN LOGIN", "250-SMTPUTF8", "250-CHUNKING", "250-DSN", fmt.Sprintf("SIZE %d", testMaxSize)} {
		if !strings.Contains(ehlo, ext) {
			t.Errorf("EHLO reply lacks %q:\n%s", ext, ehlo)
		}
	}
	for _, want := range []string{"250 2.0.0 Roger", "250 2.0.0 I'll make sure <a@example.net>", "250 2.0.0 I'll make sure <b@example.net>", "354 "} {
		if got := rc.reply(); !strings.HasPrefix(got, want) {
			t.Fatalf("pipelined reply %q, want prefix %q", got, want)
		}
	}
	// Bare LF and bare CR line ends, and a dot-stuffed line. go-smtp only
	// treats CRLF as a line end, so a dot after a bare LF is data (and a
	// bare-LF "\n.\n" never ends DATA: no smuggling).
	rc.write("Subject: raw\nX-Binding-Group: bulk\r\n\r\nline1\n.\nmore\r\n..dotted\r\nbare\rcr\r\n.\r\nQUIT\r\n")
	got := rc.reply()
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("end of data reply %q", got)
	}
	if got := rc.reply(); got != "221 2.0.0 Bye" {
		t.Errorf("QUIT reply %q", got)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com"})
	if want := "Subject: raw\r\n\r\nline1\r\n.\r\nmore\r\n.dotted\r\nbare\r\ncr\r\n"; rest != want {
		t.Errorf("stored body %q, want %q", rest, want)
	}
}

func TestRelayControl(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)

	// 127.0.0.9 is outside RelayNetworks (127.0.0.1/32): no relaying.
	c := e.client(t, outsideIP)
	if err := c.Mail("app@example.com", nil); err != nil {
		t.Fatalf("mail: %v", err)
	}
	wantSMTPError(t, "RCPT unauthenticated", c.Rcpt("a@example.net", nil), 550, "5.7.1")
	if r := e.records("rejected", map[string]any{"client_ip": outsideIP, "command": "RCPT", "code": 550, "enhanced_code": "5.7.1", "response": "Relaying denied"}); len(r) != 1 {
		t.Errorf("rejected records: %v", r)
	}

	// The same client after AUTH over STARTTLS may inject.
	c = e.client(t, outsideIP, true)
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("auth: %v", err)
	}
	id, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: x\r\n\r\nbody\r\n", nil)
	if err != nil {
		t.Fatalf("send after auth: %v", err)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.AuthUser != testUser || m.ClientIP != outsideIP {
		t.Errorf("stored auth user %q client %q", m.AuthUser, m.ClientIP)
	}
	if r := e.records("received", map[string]any{"queue_id": id, "auth_user": testUser}); len(r) != 1 {
		t.Errorf("received records: %v", r)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	tests := []struct {
		name     string
		startTLS bool
		client   sasl.Client
		ok       bool
	}{
		{"plain over TLS", true, sasl.NewPlainClient("", testUser, testPassword), true},
		{"login over TLS", true, sasl.NewLoginClient(testUser, testPassword), true},
		{"plain on loopback", false, sasl.NewPlainClient("", testUser, testPassword), true},
		{"login on loopback", false, sasl.NewLoginClient(testUser, testPassword), true},
		{"identity equal to user", false, sasl.NewPlainClient(testUser, testUser, testPassword), true},
		{"bad password over TLS", true, sasl.NewPlainClient("", testUser, "wrong"), false},
		{"bad password login", false, sasl.NewLoginClient(testUser, "wrong"), false},
		{"unknown user", false, sasl.NewPlainClient("", "mallory", testPassword), false},
		{"other identity", false, sasl.NewPlainClient("bob", testUser, testPassword), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := e.client(t, outsideIP, tt.startTLS)
			if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
				t.Errorf("AUTH advertised %v %q, want PLAIN LOGIN", ok, mechs)
			}
			err := c.Auth(tt.client)
			if tt.ok {
				if err != nil {
					t.Fatalf("auth: %v", err)
				}
				if _, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: x\r\n\r\nb\r\n", nil); err != nil {
					t.Errorf("send after auth: %v", err)
				}
				return
			}
			wantSMTPError(t, "auth", err, 535, "5.7.8")
			if se := err.(*smtp.SMTPError); se.Message != "Authentication credentials invalid" {
				t.Errorf("auth failure text %q", se.Message)
			}
			// Still not allowed to relay.
			if err := c.Mail("app@example.com", nil); err != nil {
				t.Fatal(err)
			}
			wantSMTPError(t, "RCPT after failed auth", c.Rcpt("a@example.net", nil), 550, "5.7.1")
		})
	}
	t.Run("rejected records", func(t *testing.T) {
		t.Parallel()
		c := e.client(t, outsideIP)
		wantSMTPError(t, "auth", c.Auth(sasl.NewPlainClient("", "nobody-"+t.Name(), "x")), 535, "5.7.8")
		if r := e.records("rejected", map[string]any{"command": "AUTH", "code": 535, "enhanced_code": "5.7.8"}); len(r) == 0 {
			t.Error("no rejected record for a failed AUTH")
		}
	})
}

func TestAuthNotConfigured(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.AuthUsers = nil; o.TLSConfig = nil })
	c := e.client(t, relayIP)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised with no users")
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised with no TLS config")
	}
	wantSMTPError(t, "auth", c.Auth(sasl.NewPlainClient("", testUser, testPassword)), 502, "5.7.0")
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	if got := rc.cmd("AUTH PLAIN"); got != "502 5.7.0 Authentication not available" {
		t.Errorf("AUTH reply %q", got)
	}
}

func TestSizeLimit(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.MaxMessageSize = 1024 })
	c := e.client(t, relayIP)
	if size, ok := c.MaxMessageSize(); !ok || size != 1024 {
		t.Errorf("advertised SIZE %d %v, want 1024", size, ok)
	}
	// Declared too big at MAIL.
	wantSMTPError(t, "MAIL SIZE=2048", c.Mail("app@example.com", &smtp.MailOptions{Size: 2048}), 552, "5.3.4")

	// Actually too big at DATA.
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 100)
	_, err := send(c, "app@example.com", []string{"a@example.net"}, big, nil)
	wantSMTPError(t, "oversize DATA", err, 552, "5.3.4")
	if r := e.records("rejected", map[string]any{"command": "DATA", "code": 552, "enhanced_code": "5.3.4"}); len(r) != 1 {
		t.Errorf("rejected records: %v", r)
	}
	if ids := e.stored(t); len(ids) != 0 {
		t.Fatalf("oversize message stored: %v", ids)
	}
	// The session goes on.
	if _, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: small\r\n\r\nok\r\n", nil); err != nil {
		t.Fatalf("send after oversize: %v", err)
	}
	if ids := e.stored(t); len(ids) != 1 {
		t.Errorf("stored %v, want one message", ids)
	}
}

func TestTooManyRecipients(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.MaxRecipients = 3 })
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<app@example.com>")
	for i := range 3 {
		if got := rc.cmd(fmt.Sprintf("RCPT TO:<r%d@example.net>", i)); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("RCPT %d: %q", i, got)
		}
	}
	if got := rc.cmd("RCPT TO:<r3@example.net>"); got != "452 4.5.3 Too many recipients" {
		t.Errorf("4th RCPT: %q", got)
	}
	rc.cmd("DATA")
	got := rc.cmd("Subject: x\r\n\r\nbody\r\n.")
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("end of data: %q", got)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Recipients) != 3 {
		t.Errorf("stored %d recipients, want 3", len(m.Recipients))
	}
	if r := e.records("rejected", map[string]any{"command": "RCPT", "code": 452, "enhanced_code": "4.5.3"}); len(r) != 1 {
		t.Errorf("rejected records: %v", r)
	}
}

func TestMalformedCommands(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	// Every refusal is ours now and logged; the replies that changed from
	// go-smtp's: out of order is 503 (RFC 5321 4.3.2), unknown parameters
	// 555, a path without a domain is an address error, and a quoted local
	// part is echoed in canonical form.
	steps := []struct {
		cmd, reply string
		logged     bool
	}{
		{"RCPT TO:<a@example.net>", "503 5.5.1 Missing MAIL FROM command", true},
		{"MAIL FROM:<app@example.com", "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>", true},
		{"MAIL FROM:<app>", "501 5.1.7 Bad sender address syntax", true},
		{"MAIL FROM:<app@example.com> BOGUS=1", `555 5.5.4 Unsupported parameter "BOGUS"`, true},
		{"MAIL FROM:<app@bad..example>", `553 5.1.7 Sender address rejected: invalid domain "bad..example"`, true},
		{"MAIL FROM:<a\x01pp@example.com>", "501 5.1.7 Bad sender address syntax", true},
		{"MAIL FROM:<app@example.com>", "250 2.0.0 Roger, accepting mail from <app@example.com>", false},
		{"MAIL FROM:<app@example.com>", "503 5.5.1 Error: nested MAIL command", true},
		{"RCPT TO:<a@>", "501 5.1.3 Bad recipient address syntax", true},
		{"RCPT TO:<a\x01b@example.net>", "501 5.1.3 Bad recipient address syntax", true},
		{"RCPT TO:<user@-bad.example>", `553 5.1.3 Recipient address rejected: invalid domain "-bad.example"`, true},
		{"RCPT TO:<user@192.0.2.1>", `553 5.1.3 Recipient address rejected: invalid domain "192.0.2.1"`, true},
		{"RCPT TO:<user@[192.0.2.1]>", "553 5.1.3 Address literals not accepted", true},
		{"RCPT TO:<jos\u00e9@example.net>", "553 5.6.7 Non-ASCII address requires SMTPUTF8", true},
		{"DATA", "503 5.5.1 Missing RCPT TO command", true},
		{"RSET", "250 2.0.0 Session reset", false},
		{"MAIL FROM:<> SMTPUTF8", "250 2.0.0 Roger, accepting mail from <>", false},
		{"RCPT TO:<jos\u00e9@ex\u00e4mple.net>", "250 2.0.0 I'll make sure <jos\u00e9@ex\u00e4mple.net> gets this", false},
		{"RCPT TO:<\"john doe\"@example.net>", "250 2.0.0 I'll make sure <\"john doe\"@example.net> gets this", false},
		{"DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>", false},
	}
	logged := 0
	for _, s := range steps {
		if got := rc.cmd(s.cmd); got != s.reply {
			t.Errorf("%q: reply %q, want %q", s.cmd, got, s.reply)
		}
		if s.logged {
			logged++
		}
	}
	got := rc.cmd("Subject: utf8\r\n\r\nhi\r\n.")
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("end of data %q", got)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Sender != "" || !m.SMTPUTF8 || len(m.Recipients) != 2 ||
		m.Recipients[0].Addr != "jos\u00e9@ex\u00e4mple.net" || m.Recipients[1].Addr != `"john doe"@example.net` {
		t.Errorf("stored %+v", m)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	if rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "UTF8SMTP"}); rest != "Subject: utf8\r\n\r\nhi\r\n" {
		t.Errorf("stored body %q", rest)
	}
	if r := e.records("rejected", nil); len(r) != logged {
		t.Errorf("%d rejected records, want %d: %v", len(r), logged, r)
	}
}

func TestMaxSessions(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.MaxSessions = 2 })
	// raw() reads the 220, so both sessions are counted once it returns.
	a := e.raw(t, relayIP)
	e.raw(t, relayIP)

	c := dialFrom(t, e.addr, relayIP)
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from refused session: %v", err)
	}
	if string(got) != "421 4.3.2 Too many sessions, try later\r\n" {
		t.Errorf("over the limit: %q", got)
	}
	if r := e.records("rejected", map[string]any{"command": "CONNECT", "code": 421, "enhanced_code": "4.3.2", "client_ip": relayIP}); len(r) != 1 {
		t.Errorf("rejected records: %v", r)
	}
	// The sessions within the limit work.
	a.cmd("EHLO client.test")
	if got := a.cmd("NOOP"); !strings.HasPrefix(got, "250 ") {
		t.Errorf("NOOP: %q", got)
	}
}

func TestUnknownBinding(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	c := e.client(t, relayIP)
	tests := []struct{ headers, reply string }{
		{"X-Binding-Group: nope\r\n", `Unknown binding group "nope"`},
		{"X-Binding: nope\r\n", `Unknown binding "nope"`},
		{"X-Binding-Group: bulk\r\nX-Binding: nope\r\n", `Unknown binding "nope"`},
		{"X-Binding-Group: bulk\r\nX-Binding-Group: other\r\n", `Conflicting X-Binding-Group headers "bulk" and "other"`},
	}
	for _, tt := range tests {
		_, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: x\r\n"+tt.headers+"\r\nbody\r\n", nil)
		wantSMTPError(t, tt.headers, err, 550, "5.7.0")
		if msg := err.(*smtp.SMTPError).Message; msg != tt.reply {
			t.Errorf("%q: reply %q, want %q", tt.headers, msg, tt.reply)
		}
	}
	if ids := e.stored(t); len(ids) != 0 {
		t.Errorf("refused messages stored: %v", ids)
	}
	if r := e.records("rejected", map[string]any{"command": "DATA", "code": 550, "enhanced_code": "5.7.0"}); len(r) != len(tests) {
		t.Errorf("rejected records: %v", r)
	}
	if _, err := send(c, "app@example.com", []string{"a@example.net"}, "X-Binding-Group: bulk\r\nX-Binding: ip2\r\n\r\nbody\r\n", nil); err != nil {
		t.Errorf("known group and binding: %v", err)
	}
}

// TestSpoolFailure makes the real spool's disk fail under it.
func TestSpoolFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		err   error
		code  int
		enh   string
		reply string
	}{
		{"disk full", syscall.ENOSPC, 452, "4.3.1", "Insufficient system storage"},
		{"io error", syscall.EIO, 451, "4.3.0", "Temporary local problem, try again later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var failing atomic.Bool
			fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
				if failing.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
					return tt.err
				}
				return nil
			}))
			e := startEnv(t, openSpool(t, fs))
			c := e.client(t, relayIP)
			before, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: before\r\n\r\nkept\r\n", nil)
			if err != nil {
				t.Fatalf("send before failure: %v", err)
			}
			failing.Store(true)
			for i := range 2 { // the failing write, then the spool refusing writes
				_, err = send(c, "app@example.com", []string{"a@example.net"}, "Subject: during\r\n\r\nlost\r\n", nil)
				wantSMTPError(t, fmt.Sprintf("send %d during failure", i), err, tt.code, tt.enh)
				if msg := err.(*smtp.SMTPError).Message; msg != tt.reply {
					t.Errorf("reply %q, want %q", msg, tt.reply)
				}
			}
			if r := e.records("rejected", map[string]any{"command": "DATA", "code": tt.code, "enhanced_code": tt.enh}); len(r) != 2 {
				t.Errorf("rejected records: %v", r)
			}
			failing.Store(false)
			body, err := e.sp.Body(before)
			if err != nil {
				t.Fatalf("earlier message after failure: %v", err)
			}
			rest := splitReceived(t, body, wantTrace{id: before, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"})
			if rest != "Subject: before\r\n\r\nkept\r\n" {
				t.Errorf("earlier message after failure: %q", rest)
			}
		})
	}
}

// TestShutdownDrains: Shutdown lets a transaction in DATA finish, closes
// idle sessions, and returns when all is done.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	// With "QUIT" the client sends its next command in the same write as
	// the end of data: the 250 must still go out before the close.
	for _, next := range []string{"", "QUIT\r\n"} {
		t.Run(fmt.Sprintf("next=%q", next), func(t *testing.T) {
			t.Parallel()
			testShutdownDrains(t, next)
		})
	}
}

func testShutdownDrains(t *testing.T, next string) {
	e := startEnv(t, nil)
	busy := e.raw(t, relayIP)
	busy.cmd("EHLO client.test")
	busy.cmd("MAIL FROM:<app@example.com>")
	busy.cmd("RCPT TO:<a@example.net>")
	if got := busy.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
		t.Fatalf("DATA: %q", got)
	}
	busy.write("Subject: in flight\r\n\r\nfirst half\r\n")
	idle := e.raw(t, relayIP)
	idle.cmd("EHLO client.test")

	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(context.Background()) }()
	<-e.srv.closing // Shutdown has begun

	// The idle session is closed without a reply.
	if b, err := io.ReadAll(idle.r); err != nil || len(b) != 0 {
		t.Errorf("idle session: read %q, %v; want EOF", b, err)
	}
	// The transaction completes and is acknowledged.
	busy.write("second half\r\n.\r\n" + next)
	got := busy.reply()
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("in-flight DATA during shutdown: %q", got)
	}
	if body, err := e.sp.Body(id); err != nil {
		t.Errorf("stored body of %s: %v", id, err)
	} else if rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"}); rest != "Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n" {
		t.Errorf("stored %q", rest)
	}
	// Then that session is closed too, and Shutdown returns.
	if b, err := io.ReadAll(busy.r); err != nil || len(b) != 0 {
		t.Errorf("after its transaction: read %q, %v; want EOF", b, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if c, err := net.Dial("tcp", e.addr); err == nil {
		c.Close()
		t.Error("listener still accepting after Shutdown")
	}
}

// TestShutdownDeadline: when ctx ends, sessions still in a transaction
// are cut off and Shutdown says so.
func TestShutdownDeadline(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	busy := e.raw(t, relayIP)
	busy.cmd("EHLO client.test")
	busy.cmd("MAIL FROM:<app@example.com>")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want context.Canceled", err)
	}
	if _, err := io.ReadAll(busy.r); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("cut session: %v", err)
	}
	if ids := e.stored(t); len(ids) != 0 {
		t.Errorf("stored %v", ids)
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.ReadTimeout = 100 * time.Millisecond })
	rc := e.raw(t, relayIP)
	if got := rc.reply(); got != "421 4.4.2 Idle timeout, bye bye" {
		t.Errorf("after idling: %q", got)
	}
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	srv, err := New(Options{
		Listen:         []string{"127.0.0.1:0", e.addr},
		Hostname:       "mx.test",
		MaxMessageSize: 1024,
	}, e.sp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err == nil || !strings.Contains(err.Error(), e.addr) {
		t.Fatalf("Start on a busy address: %v", err)
	}
	if len(srv.Addrs()) != 0 {
		t.Errorf("addresses left bound: %v", srv.Addrs())
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown of an unstarted server: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	sp := openSpool(t, nil)
	good := Options{Listen: []string{"127.0.0.1:0"}, Hostname: "h", MaxMessageSize: 1}
	if _, err := New(good, sp, nil, nil); err != nil {
		t.Fatalf("good options: %v", err)
	}
	bad := []func(*Options){
		func(o *Options) { o.Listen = nil },
		func(o *Options) { o.Hostname = " " },
		func(o *Options) { o.MaxMessageSize = 0 },
		func(o *Options) { o.MaxSessions = -1 },
		func(o *Options) { o.AuthUsers = map[string][]byte{"u": []byte("not a hash")} },
	}
	for i, mod := range bad {
		o := good
		mod(&o)
		if _, err := New(o, sp, nil, nil); err == nil {
			t.Errorf("bad options %d accepted", i)
		}
	}
	if _, err := New(good, nil, nil, nil); err == nil {
		t.Error("nil store accepted")
	}
}

// TestPythonClient injects with Python's smtplib: an outside client, so
// the server is not only tested against go-smtp's client.
func TestPythonClient(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	e := startEnv(t, nil)
	host, port, _ := strings.Cut(e.addr, ":")
	const script = `
import smtplib, ssl, sys
host, port, mode, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
src = ("127.0.0.1", 0) if mode == "plain" else ("127.0.0.9", 0)
s = smtplib.SMTP(host, port, local_hostname="py.test", timeout=10, source_address=src)
s.ehlo()
if mode != "plain":
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    try:
        s.login("alice", "secret" if mode == "auth" else "wrong")
    except smtplib.SMTPAuthenticationError as e:
        print(e.smtp_code, e.smtp_error.decode())
        s.quit()
        sys.exit(0)
s.mail("app@example.com")
s.rcpt("a@example.net")
code, resp = s.data(b"Subject: from python\r\nX-Binding-Group: bulk\r\n\r\nhello\r\n")
print(code, resp.decode())
s.quit()
`
	run := func(t *testing.T, mode string) string {
		out, err := exec.Command("python3", "-c", script, host, port, mode, e.ca).CombinedOutput()
		if err != nil {
			t.Fatalf("python %s: %v\n%s", mode, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, mode := range []string{"plain", "auth"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			out := run(t, mode)
			id, ok := strings.CutPrefix(out, "250 2.0.0 Ok: queued as ")
			if !ok {
				t.Fatalf("python %s: %q", mode, out)
			}
			m, err := e.sp.Get(id)
			if err != nil {
				t.Fatalf("python %s: %v", mode, err)
			}
			body, err := e.sp.Body(id)
			if err != nil {
				t.Fatalf("python %s: body: %v", mode, err)
			}
			tr := wantTrace{id: id, ip: relayIP, helo: "py.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"}
			if mode == "auth" {
				tr.ip, tr.proto = outsideIP, "ESMTPSA"
			}
			rest := splitReceived(t, body, tr)
			if m.Helo != "py.test" || m.Group != "bulk" || rest != "Subject: from python\r\n\r\nhello\r\n" {
				t.Errorf("python %s stored %+v body %q", mode, m, rest)
			}
			if mode == "auth" && (m.AuthUser != testUser || m.ClientIP != outsideIP) {
				t.Errorf("python auth stored user %q ip %q", m.AuthUser, m.ClientIP)
			}
		})
	}
	t.Run("badauth", func(t *testing.T) {
		t.Parallel()
		if out := run(t, "badauth"); out != "535 5.7.8 Authentication credentials invalid" {
			t.Errorf("python bad auth: %q", out)
		}
	})
}

// TestBDAT: go-smtp advertises CHUNKING; BDAT goes through the same Data
// path (headers stripped, CRLF ending added) and the same size limit.
func TestBDAT(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.MaxMessageSize = 100 })
	rc := e.raw(t, relayIP)
	if ehlo := rc.cmd("EHLO client.test"); !strings.Contains(ehlo, "CHUNKING") {
		t.Fatalf("EHLO: %q", ehlo)
	}
	rc.cmd("MAIL FROM:<app@example.com>")
	rc.cmd("RCPT TO:<a@example.net>")
	part1 := "Subject: chunks\r\nX-Binding: ip1\r\n"
	part2 := "\r\nno final newline"
	rc.write(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	if got := rc.reply(); got != "250 2.0.0 Continue" {
		t.Fatalf("BDAT 1: %q", got)
	}
	rc.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	got := rc.reply()
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("BDAT LAST: %q", got)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	// The Received field does not count against the client's size limit.
	rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"})
	if m.Binding != "ip1" || rest != "Subject: chunks\r\n\r\nno final newline\r\n" {
		t.Errorf("stored %+v body %q", m, rest)
	}
	rc.cmd("MAIL FROM:<app@example.com>")
	rc.cmd("RCPT TO:<a@example.net>")
	big := strings.Repeat("x", 101)
	rc.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(big), big))
	if got := rc.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
		t.Errorf("oversize BDAT: %q", got)
	}
}

// TestReceivedProtocol: the "with" keyword of the Received field says TLS
// (S), AUTH (A) and SMTPUTF8 (RFC 3848, RFC 6531 3.7.3), and "for" names
// the recipient when there is only one.
func TestReceivedProtocol(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	tests := []struct {
		name     string
		local    string
		startTLS bool
		auth     bool
		utf8     bool
		proto    string
	}{
		{"plain", relayIP, false, false, false, "ESMTP"},
		{"auth on loopback", outsideIP, false, true, false, "ESMTPA"},
		{"starttls", relayIP, true, false, false, "ESMTPS"},
		{"starttls and auth", outsideIP, true, true, false, "ESMTPSA"},
		{"smtputf8 starttls and auth", outsideIP, true, true, true, "UTF8SMTPSA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := e.client(t, tt.local, tt.startTLS)
			if tt.auth {
				if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
					t.Fatalf("auth: %v", err)
				}
			}
			rcpt, mo := "a@example.net", (*smtp.MailOptions)(nil)
			if tt.utf8 {
				rcpt, mo = "jos\u00e9@ex\u00e4mple.net", &smtp.MailOptions{UTF8: true}
			}
			const sent = "Subject: p\r\n\r\nbody\r\n"
			id, err := send(c, "app@example.com", []string{rcpt}, sent, mo)
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			body, err := e.sp.Body(id)
			if err != nil {
				t.Fatal(err)
			}
			rest := splitReceived(t, body, wantTrace{id: id, ip: tt.local, helo: "client.test", proto: tt.proto, from: "app@example.com", rcpt: rcpt})
			if rest != sent {
				t.Errorf("body after Received %q, want %q", rest, sent)
			}
		})
	}
}

// TestReceivedHostileValues: go-smtp takes a HELO argument as anything up
// to the first space (bare CR, NUL, parentheses, ';', quotes, non-ASCII),
// and quoted local parts may hold comment and separator characters. None of
// it may end a line of the Received field, end its comment early or supply
// the ';' before the date.
func TestReceivedHostileValues(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	// A bare CR or NUL in the name refuses the command (session.go); the
	// other characters reach the Received field, sanitised there.
	for _, helo := range []string{"EHLO ev\ril", "EHLO ev\x00il"} {
		if got := rc.cmd(helo); got != "500 5.5.2 Command line contains a bare CR or a NUL" {
			t.Fatalf("%q: %q", helo, got)
		}
	}
	if got := rc.cmd("EHLO ev(il);\"x?y\x01z\u00e9\tBcc:(<>)\\ ignored"); !strings.HasPrefix(got, "250-") {
		t.Fatalf("EHLO: %q", got)
	}
	for _, cmd := range []string{`MAIL FROM:<"a(b)\\c;d"@example.com>`, `RCPT TO:<"x) y;"@example.net>`} {
		if got := rc.cmd(cmd); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("%s: %q", cmd, got)
		}
	}
	rc.cmd("DATA")
	got := rc.cmd("Subject: hostile\r\n\r\nbody\r\n.")
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("end of data: %q", got)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Helo != "ev(il);\"x?y\x01z\u00e9\tBcc:(<>)\\" {
		t.Errorf("stored HELO %q", m.Helo) // kept as sent; only the field is sanitised
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	rest := splitReceived(t, body, wantTrace{
		id:    id,
		ip:    relayIP,
		helo:  "ev?il???x?y?z???Bcc:?????",
		proto: "ESMTP",
		from:  `"a\(b\)\\\\c;d"@example.com`,
		rcpt:  `"x) y;"@example.net`,
	})
	if rest != "Subject: hostile\r\n\r\nbody\r\n" {
		t.Errorf("body after Received %q", rest)
	}
}
