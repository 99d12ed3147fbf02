package inject

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/spool"
)

// TestReplies: one command after EHLO (and setup), its exact reply, then a
// NOOP to show the session goes on; a refusal writes exactly one
// "rejected" record with the reply.
func TestReplies(t *testing.T) {
	t.Parallel()
	mail := "MAIL FROM:<app@example.com>"
	tests := []struct {
		name  string
		mods  func(*Options)
		noHi  bool // no EHLO first
		setup []string
		cmd   string
		reply string
	}{
		{name: "vrfy", cmd: "VRFY alice", reply: "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"},
		{name: "help", cmd: "HELP", reply: "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"},
		{name: "noop", cmd: "NOOP", reply: "250 2.0.0 Ok"},
		{name: "unknown", cmd: "FROB x", reply: "500 5.5.2 Command not recognized"},
		{name: "empty line", cmd: "", reply: "500 5.5.2 Command not recognized"},
		{name: "line over 512", cmd: "NOOP " + strings.Repeat("x", 506), reply: "500 5.5.2 Line too long"},
		{name: "line of 512", cmd: "NOOP " + strings.Repeat("x", 505), reply: "250 2.0.0 Ok"},
		{name: "line over the read block", cmd: "NOOP " + strings.Repeat("x", 40<<10), reply: "500 5.5.2 Line too long"},
		{name: "MAIL params within 4096", cmd: mail + " ENVID=" + strings.Repeat("e", 3000), reply: "501 5.5.4 Bad ENVID parameter"},
		{name: "MAIL line over 4096", cmd: mail + " ENVID=" + strings.Repeat("e", 4100), reply: "500 5.5.2 Line too long"},
		{name: "MAIL before EHLO", noHi: true, cmd: mail, reply: "503 5.5.1 Send EHLO or HELO first"},
		{name: "EHLO without name", cmd: "EHLO", reply: "501 5.5.4 Domain/address argument required"},
		{name: "BINARYMIME", cmd: mail + " BODY=BINARYMIME", reply: "555 5.5.4 BODY=BINARYMIME not supported"},
		{name: "bad BODY", cmd: mail + " BODY=9BIT", reply: "501 5.5.4 Bad BODY parameter"},
		{name: "SIZE over", cmd: mail + fmt.Sprintf(" SIZE=%d", testMaxSize+1), reply: "552 5.3.4 Message size exceeds fixed maximum message size"},
		{name: "SIZE at limit", cmd: mail + fmt.Sprintf(" SIZE=%d", testMaxSize), reply: "250 2.0.0 Roger, accepting mail from <app@example.com>"},
		{name: "bad RET", cmd: mail + " RET=ALL", reply: "501 5.5.4 Bad RET parameter"},
		{name: "bad ENVID xtext", cmd: mail + " ENVID=a+zz", reply: "501 5.5.4 Bad ENVID parameter"},
		{name: "duplicate param", cmd: mail + " SIZE=1 SIZE=2", reply: `501 5.5.4 Duplicate parameter "SIZE"`},
		{name: "AUTH param ignored", cmd: mail + " AUTH=<>", reply: "250 2.0.0 Roger, accepting mail from <app@example.com>"},
		{name: "source route ignored", cmd: "MAIL FROM:<@relay.example,@r2.example:app@example.com>", reply: "250 2.0.0 Roger, accepting mail from <app@example.com>"},
		{name: "NOTIFY NEVER with other", setup: []string{mail}, cmd: "RCPT TO:<a@example.net> NOTIFY=NEVER,SUCCESS", reply: "501 5.5.4 Bad NOTIFY parameter"},
		{name: "NOTIFY unknown", setup: []string{mail}, cmd: "RCPT TO:<a@example.net> NOTIFY=SOMETIMES", reply: "501 5.5.4 Bad NOTIFY parameter"},
		{name: "ORCPT without type", setup: []string{mail}, cmd: "RCPT TO:<a@example.net> ORCPT=a@example.net", reply: "501 5.5.4 Bad ORCPT parameter"},
		{name: "unknown RCPT param", setup: []string{mail}, cmd: "RCPT TO:<a@example.net> FOO=1", reply: `555 5.5.4 Unsupported parameter "FOO"`},
		{name: "null RCPT", setup: []string{mail}, cmd: "RCPT TO:<>", reply: "501 5.1.3 Bad recipient address syntax"},
		{name: "address literal", setup: []string{mail}, cmd: "RCPT TO:<u@[192.0.2.1]>", reply: "553 5.1.3 Address literals not accepted"},
		{name: "address literal allowed", mods: func(o *Options) { o.AllowAddressLiterals = true }, setup: []string{mail}, cmd: "RCPT TO:<u@[192.0.2.1]>", reply: "250 2.0.0 I'll make sure <u@[192.0.2.1]> gets this"},
		{name: "IDN without SMTPUTF8", setup: []string{mail}, cmd: "RCPT TO:<u@b\u00fccher.example>", reply: "553 5.6.7 Non-ASCII address requires SMTPUTF8"},
		{name: "IDN with SMTPUTF8", setup: []string{mail + " SMTPUTF8"}, cmd: "RCPT TO:<u@b\u00fccher.example>", reply: "250 2.0.0 I'll make sure <u@b\u00fccher.example> gets this"},
		{name: "invalid IDN", setup: []string{mail + " SMTPUTF8"}, cmd: "RCPT TO:<u@b\u00fccher-.example>", reply: `553 5.1.3 Recipient address rejected: invalid domain "b\u00fccher-.example"`},
		{name: "DATA with args", setup: []string{mail, "RCPT TO:<a@example.net>"}, cmd: "DATA x", reply: "501 5.5.4 Syntax error: no parameters allowed"},
		{name: "BDAT then DATA", setup: []string{mail, "RCPT TO:<a@example.net>", "BDAT 0"}, cmd: "DATA", reply: "503 5.5.1 DATA not permitted after BDAT"},
		{name: "AUTH in transaction", setup: []string{mail}, cmd: "AUTH PLAIN", reply: "503 5.5.1 AUTH not permitted during a mail transaction"},
		{name: "AUTH bad base64", cmd: "AUTH PLAIN !!!", reply: "501 5.5.2 Invalid base64 data"},
		{name: "AUTH unknown mechanism", cmd: "AUTH CRAM-MD5", reply: "504 5.7.4 Unrecognized authentication type"},
		{name: "AUTH without mechanism", cmd: "AUTH", reply: "501 5.5.4 Syntax: AUTH mechanism [initial-response]"},
		{name: "STARTTLS in transaction", setup: []string{mail}, cmd: "STARTTLS", reply: "503 5.5.1 STARTTLS not permitted during a mail transaction"},
		{name: "STARTTLS unconfigured", mods: func(o *Options) { o.TLSConfig = nil }, cmd: "STARTTLS", reply: "502 5.5.1 STARTTLS not available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mods []func(*Options)
			if tt.mods != nil {
				mods = append(mods, tt.mods)
			}
			e := startEnv(t, nil, mods...)
			rc := e.raw(t, relayIP)
			if !tt.noHi {
				rc.cmd("EHLO client.test")
			}
			for _, s := range tt.setup {
				if tt.noHi {
					break
				}
				if got := rc.cmd(s); got[0] != '2' {
					t.Fatalf("setup %q: %q", s, got)
				}
			}
			if got := rc.cmd(tt.cmd); got != tt.reply {
				t.Errorf("%.60q: reply %q, want %q", tt.cmd, got, tt.reply)
			}
			if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
				t.Errorf("NOOP after: %q", got)
			}
			code, enh, text := splitReply(tt.reply)
			recs := e.records("rejected", nil)
			if code < 400 {
				if len(recs) != 0 {
					t.Errorf("rejected records for a %d: %v", code, recs)
				}
				return
			}
			if len(recs) != 1 || fmt.Sprint(recs[0]["code"]) != fmt.Sprint(code) || recs[0]["enhanced_code"] != enh ||
				recs[0]["response"] != text || recs[0]["client_ip"] != relayIP {
				t.Errorf("rejected records %v, want one for %q", recs, tt.reply)
			}
		})
	}
}

func splitReply(r string) (code int, enh, text string) {
	fmt.Sscanf(r, "%d", &code)
	rest := r[4:]
	enh, text, _ = strings.Cut(rest, " ")
	return code, enh, text
}

// TestBodyReplies: the verdict at the end of DATA and BDAT for each kind
// of body, exactly one rejected record per refusal, nothing stored, and
// the session goes on.
func TestBodyReplies(t *testing.T) {
	t.Parallel()
	hops := func(n int) string {
		return strings.Repeat("Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n", n)
	}
	const size = 4096
	// exact is a body of exactly size octets in lines of 80 (no long line,
	// which would be re-encoded); over is one octet more.
	exact := "Subject: s\r\n\r\n"
	for len(exact)+80 <= size {
		exact += strings.Repeat("x", 78) + "\r\n"
	}
	exact += strings.Repeat("x", size-len(exact)-2) + "\r\n"
	over := exact[:len(exact)-2] + "x\r\n"
	// exactLF is the same size with bare LF line ends (but the last):
	// max_message_size counts what the client sent, not the CRs added.
	exactLF := "Subject: s\r\n\r\n"
	for len(exactLF)+79 <= size-80 {
		exactLF += strings.Repeat("y", 78) + "\n"
	}
	exactLF += strings.Repeat("y", size-len(exactLF)-2) + "\r\n"
	long := "Subject: s\r\n\r\n" + strings.Repeat("l", 999) + "\r\n"
	tests := []struct {
		name  string
		mods  func(*Options)
		body  string
		reply string // "" = 250 queued
		// stored checks what was stored after the Received field; nil
		// means it must be the body as sent.
		stored func(t *testing.T, rest string)
	}{
		{name: "exactly the limit", body: exact},
		{name: "one over the limit", body: over, reply: "552 5.3.4 Message size exceeds fixed maximum message size"},
		{name: "exactly the limit in bare LF lines", body: exactLF, stored: func(t *testing.T, rest string) {
			if want := strings.ReplaceAll(strings.ReplaceAll(exactLF, "\r\n", "\n"), "\n", "\r\n"); rest != want {
				t.Errorf("stored %d octets, want the body with CRLF line ends (%d)", len(rest), len(want))
			}
		}},
		{name: "NUL", body: "Subject: s\r\n\r\na\x00b\r\n", reply: "554 5.6.0 Message contains NUL characters"},
		{name: "long line rejected", mods: func(o *Options) { o.LongLines = LongLinesReject }, body: long, reply: "554 5.6.0 Message contains lines longer than 998 characters"},
		{name: "long line converted", body: long, stored: func(t *testing.T, rest string) {
			// Re-encoded as quoted-printable, decoding to what was sent.
			for _, l := range strings.Split(rest, "\r\n") {
				if len(l) > 998 {
					t.Errorf("stored line of %d octets", len(l))
				}
			}
			msg, err := mail.ReadMessage(strings.NewReader(rest))
			if err != nil {
				t.Fatal(err)
			}
			if cte := msg.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" || msg.Header.Get("Subject") != "s" {
				t.Errorf("stored header %v", msg.Header)
			}
			dec, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
			if err != nil || string(dec) != strings.Repeat("l", 999)+"\r\n" {
				t.Errorf("stored body decodes to %q (%v)", dec, err)
			}
		}},
		{name: "long header line unfoldable", body: "Subject: " + strings.Repeat("h", 1000) + "\r\n\r\nb\r\n", reply: "554 5.6.0 header line too long and cannot be folded"},
		{name: "998 octets", mods: func(o *Options) { o.LongLines = LongLinesReject }, body: "Subject: s\r\n\r\n" + strings.Repeat("l", 998) + "\r\n"},
		{name: "50 Received", body: hops(50) + "Subject: s\r\n\r\nb\r\n"},
		{name: "51 Received", body: hops(51) + "Subject: s\r\n\r\nb\r\n", reply: "554 5.4.6 Too many hops (mail loop?)"},
		{name: "unknown binding", body: "X-Binding: nope\r\n\r\nb\r\n", reply: `550 5.7.0 Unknown binding "nope"`},
	}
	for _, tt := range tests {
		for _, bdat := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bdat=%v", tt.name, bdat), func(t *testing.T) {
				t.Parallel()
				mods := []func(*Options){func(o *Options) { o.MaxMessageSize = size }}
				if tt.mods != nil {
					mods = append(mods, tt.mods)
				}
				e := startEnv(t, nil, mods...)
				rc := e.raw(t, relayIP)
				rc.cmd("EHLO client.test")
				rc.cmd("MAIL FROM:<app@example.com>")
				rc.cmd("RCPT TO:<a@example.net>")
				var got string
				if bdat {
					rc.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(tt.body), tt.body))
					got = rc.reply()
				} else {
					rc.cmd("DATA")
					rc.write(strings.ReplaceAll(tt.body, "\r\n.", "\r\n..") + ".\r\n")
					got = rc.reply()
				}
				if tt.reply == "" {
					id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
					if !ok {
						t.Fatalf("reply %q, want 250", got)
					}
					body, err := e.sp.Body(id)
					if err != nil {
						t.Fatal(err)
					}
					rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"})
					if tt.stored != nil {
						tt.stored(t, rest)
					} else if rest != tt.body {
						t.Errorf("stored %q, want %q", rest, tt.body)
					}
				} else {
					if got != tt.reply {
						t.Errorf("reply %q, want %q", got, tt.reply)
					}
					if ids := e.stored(t); len(ids) != 0 {
						t.Errorf("refused message stored: %v", ids)
					}
					cmd := "DATA"
					if bdat {
						cmd = "BDAT"
					}
					code, enh, text := splitReply(tt.reply)
					if r := e.records("rejected", map[string]any{"command": cmd, "code": code, "enhanced_code": enh, "response": text}); len(r) != 1 || len(e.records("rejected", nil)) != 1 {
						t.Errorf("rejected records: %v", e.records("rejected", nil))
					}
				}
				if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
					t.Errorf("NOOP after: %q", got)
				}
			})
		}
	}
}

// TestNoSmuggling: "\n.\n" and "\r.\r" inside DATA are content, so a
// second transaction hidden behind them stays in the first message.
func TestNoSmuggling(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<app@example.com>")
	rc.cmd("RCPT TO:<a@example.net>")
	rc.cmd("DATA")
	rc.write("Subject: s\r\n\r\nhi\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r.\rRSET\r\n.\r\n")
	got := rc.reply()
	id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatalf("reply %q", got)
	}
	if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
		t.Fatalf("NOOP: %q (a smuggled command was run)", got)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"})
	if want := "Subject: s\r\n\r\nhi\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\nRSET\r\n"; rest != want {
		t.Errorf("stored %q, want %q", rest, want)
	}
	if ids := e.stored(t); len(ids) != 1 {
		t.Errorf("stored %v", ids)
	}
}

// TestPipelinedWrites: after EHLO, a pipelined MAIL, 2 RCPT, DATA and the
// body cost the server two writes (250 250 250 354, then 250).
func TestPipelinedWrites(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	before := e.srv.writes.Load()
	rc.write("MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
	for range 4 {
		rc.reply()
	}
	rc.write("Subject: p\r\n\r\nbody\r\n.\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "250 2.0.0 Ok: queued as ") {
		t.Fatalf("end of data: %q", got)
	}
	if n := e.srv.writes.Load() - before; n != 2 {
		t.Errorf("%d writes for a pipelined transaction, want 2", n)
	}
}

// TestDSNAndDuplicates: RFC 3461 parameters are stored, xtext decoded; a
// recipient given twice (domain case differing) is stored once.
func TestDSNAndDuplicates(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	for _, c := range []string{
		"MAIL FROM:<app@example.com> RET=HDRS ENVID=q+2B1 BODY=7BIT",
		"RCPT TO:<a@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bx@example.net",
		"RCPT TO:<a@EXAMPLE.net> NOTIFY=NEVER",
		"RCPT TO:<A@example.net>",
		"RCPT TO:<b@example.net> NOTIFY=never",
	} {
		if got := rc.cmd(c); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("%s: %q", c, got)
		}
	}
	rc.cmd("DATA")
	id, ok := strings.CutPrefix(rc.cmd("Subject: d\r\n\r\nb\r\n."), "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatal("not queued")
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Ret != spool.RetHdrs || m.EnvID != "q+1" {
		t.Errorf("RET %v ENVID %q", m.Ret, m.EnvID)
	}
	want := []spool.Recipient{
		{Addr: "a@example.net", Notify: spool.NotifySuccess | spool.NotifyDelay, ORcpt: "rfc822;a+x@example.net"},
		{Addr: "A@example.net"},
		{Addr: "b@example.net", Notify: spool.NotifyNever},
	}
	if len(m.Recipients) != len(want) {
		t.Fatalf("recipients %+v", m.Recipients)
	}
	for i, w := range want {
		r := m.Recipients[i]
		if r.Addr != w.Addr || r.Notify != w.Notify || r.ORcpt != w.ORcpt {
			t.Errorf("recipient %d = %+v, want %+v", i, r, w)
		}
	}
}

// TestHeloProtocol: after HELO the Received field says SMTP.
func TestHeloProtocol(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	if got := rc.cmd("HELO old.client"); got != "250 mx.test Hello old.client" {
		t.Errorf("HELO: %q", got)
	}
	rc.cmd("MAIL FROM:<app@example.com>")
	rc.cmd("RCPT TO:<a@example.net>")
	rc.cmd("DATA")
	id, ok := strings.CutPrefix(rc.cmd("Subject: h\r\n\r\nb\r\n."), "250 2.0.0 Ok: queued as ")
	if !ok {
		t.Fatal("not queued")
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "old.client", proto: "SMTP", from: "app@example.com", rcpt: "a@example.net"})
}

// TestClientLimits: per-address sessions, session lifetime, command count
// and password-check slots, each answered 421 4.7.0 (454 4.7.0 for AUTH)
// with a rejected record.
func TestClientLimits(t *testing.T) {
	t.Parallel()
	t.Run("sessions per ip", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil, func(o *Options) { o.MaxSessionsPerIP = 1 })
		a := e.raw(t, relayIP)
		c := dialFrom(t, e.addr, relayIP)
		defer c.Close()
		buf := make([]byte, 200)
		n, _ := c.Read(buf)
		if got := string(buf[:n]); got != "421 4.7.0 Too many sessions from your address, try later\r\n" {
			t.Errorf("second session from the address: %q", got)
		}
		// Another address is not affected, nor the first session.
		b := e.raw(t, outsideIP)
		if got := b.cmd("NOOP"); got != "250 2.0.0 Ok" {
			t.Errorf("other address: %q", got)
		}
		if got := a.cmd("NOOP"); got != "250 2.0.0 Ok" {
			t.Errorf("first session: %q", got)
		}
		if r := e.records("rejected", map[string]any{"command": "CONNECT", "code": 421, "enhanced_code": "4.7.0"}); len(r) != 1 {
			t.Errorf("rejected records: %v", r)
		}
	})
	t.Run("ipv6 per /64", func(t *testing.T) {
		t.Parallel()
		a, b := ipKey(netip.MustParseAddr("2001:db8::1")), ipKey(netip.MustParseAddr("2001:db8::ffff:1"))
		c := ipKey(netip.MustParseAddr("2001:db8:0:1::1"))
		if a != b || a == c || ipKey(netip.MustParseAddr("192.0.2.1")) == ipKey(netip.MustParseAddr("192.0.2.2")) {
			t.Errorf("keys %v %v %v", a, b, c)
		}
	})
	t.Run("session time", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil, func(o *Options) { o.MaxSessionTime = time.Nanosecond })
		rc := e.raw(t, relayIP)
		if got := rc.cmd("EHLO client.test"); got != "421 4.7.0 Session too long, closing connection" {
			t.Errorf("reply %q", got)
		}
		if _, err := rc.r.ReadByte(); err == nil {
			t.Error("session not closed")
		}
		if r := e.records("rejected", map[string]any{"command": "EHLO", "code": 421, "enhanced_code": "4.7.0"}); len(r) != 1 {
			t.Errorf("rejected records: %v", r)
		}
	})
	t.Run("commands", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil, func(o *Options) { o.MaxCommands = 3 })
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<app@example.com>")
		rc.cmd("RCPT TO:<a@example.net>")
		// The 4th command is inside a transaction: it finishes.
		if got := rc.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
			t.Fatalf("DATA: %q", got)
		}
		if got := rc.cmd("Subject: x\r\n\r\nb\r\n."); !strings.HasPrefix(got, "250 2.0.0 Ok: queued as ") {
			t.Fatalf("end of data: %q", got)
		}
		if got := rc.cmd("NOOP"); got != "421 4.7.0 Too many commands, closing connection" {
			t.Errorf("NOOP over the limit: %q", got)
		}
		if r := e.records("rejected", map[string]any{"command": "NOOP", "code": 421, "enhanced_code": "4.7.0"}); len(r) != 1 {
			t.Errorf("rejected records: %v", r)
		}
	})
	t.Run("junk counts", func(t *testing.T) {
		t.Parallel()
		// Over-long and unknown lines count toward the limit: junk cannot
		// keep a session alive.
		e := startEnv(t, nil, func(o *Options) { o.MaxCommands = 3 })
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		rc.cmd("XYZZY")
		rc.cmd(strings.Repeat("N", 600))
		if got := rc.cmd(strings.Repeat("N", 600)); got != "421 4.7.0 Too many commands, closing connection" {
			t.Errorf("4th command, over-long: %q", got)
		}
	})
	t.Run("session time in a transaction", func(t *testing.T) {
		t.Parallel()
		// A transaction gets txnGrace past the limit, not for ever.
		e := startEnv(t, nil, func(o *Options) { o.MaxSessionTime = time.Minute })
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<app@example.com>")
		e.srv.mu.Lock()
		for c := range e.srv.conns {
			c.start.Add(-int64(time.Minute + txnGrace/2))
		}
		e.srv.mu.Unlock()
		if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
			t.Errorf("NOOP within the grace: %q", got)
		}
		e.srv.mu.Lock()
		for c := range e.srv.conns {
			c.start.Add(-int64(txnGrace))
		}
		e.srv.mu.Unlock()
		if got := rc.cmd("NOOP"); got != "421 4.7.0 Session too long, closing connection" {
			t.Errorf("NOOP past the grace: %q", got)
		}
	})
	t.Run("ESMTP after HELO", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil)
		rc := e.raw(t, relayIP)
		rc.cmd("HELO client.test")
		if got := rc.cmd("MAIL FROM:<app@example.com> BODY=8BITMIME"); got != "555 5.5.4 Parameters not recognized: no extensions after HELO" {
			t.Errorf("MAIL with a parameter after HELO: %q", got)
		}
		rc.cmd("MAIL FROM:<app@example.com>")
		rc.cmd("RCPT TO:<a@example.net>")
		rc.write("BDAT 3 LAST\r\nx\r\n")
		if got := rc.reply(); got != "503 5.5.1 BDAT not offered after HELO" {
			t.Errorf("BDAT after HELO: %q", got)
		}
		if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
			t.Errorf("NOOP after: %q", got)
		}
	})
	t.Run("BDAT far over the size", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil, func(o *Options) { o.MaxMessageSize = 1000 })
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<app@example.com>")
		rc.cmd("RCPT TO:<a@example.net>")
		rc.write("BDAT 999999999999 LAST\r\n")
		if got := rc.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
			t.Errorf("BDAT of 10^12 octets: %q", got)
		}
		if _, err := rc.r.ReadByte(); err == nil {
			t.Error("session not closed")
		}
	})
	t.Run("auth checks", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, nil, func(o *Options) { o.MaxAuthChecks = 1 })
		e.srv.authWait = 50 * time.Millisecond
		e.srv.authSlots <- struct{}{} // a check that does not end
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		if got := rc.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA=="); got != "454 4.7.0 Too many authentications in progress, try again later" {
			t.Errorf("AUTH with no slot: %q", got)
		}
		<-e.srv.authSlots
		if got := rc.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA=="); got != "235 2.7.0 Authentication succeeded" {
			t.Errorf("AUTH with a slot: %q", got)
		}
		if r := e.records("rejected", map[string]any{"command": "AUTH", "code": 454}); len(r) != 1 {
			t.Errorf("rejected records: %v", r)
		}
	})
}

// busyHandoffT is a Handoff that says it is busy.
type busyHandoffT struct{ chanHandoff }

func (busyHandoffT) Busy() bool { return true }

func TestBusyHandoff(t *testing.T) {
	t.Parallel()
	sp := openSpool(t, nil)
	srv, err := New(Options{
		Listen:         []string{"127.0.0.1:0"},
		RelayNetworks:  []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Hostname:       "mx.test",
		MaxMessageSize: 1024,
		Logger:         zap.NewNop(),
	}, sp, nil, busyHandoffT{make(chanHandoff, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	e := &testEnv{addr: srv.Addrs()[0].String()}
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	if got := rc.cmd("MAIL FROM:<app@example.com>"); got != "451 4.3.2 System busy, try again later" {
		t.Errorf("MAIL while busy: %q", got)
	}
	if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
		t.Errorf("NOOP after: %q", got)
	}
}

// TestImplicitTLS: on a TLSListen address the handshake comes first, no
// STARTTLS is offered, AUTH is, and the Received field says ESMTPS.
func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.TLSListen = []string{"127.0.0.1:0"} })
	addr := e.srv.Addrs()[1].String()
	tc, err := tls.Dial("tcp", addr, e.tls)
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	c := smtp.NewClient(tc)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered under implicit TLS")
	}
	if ok, _ := c.Extension("AUTH"); !ok {
		t.Error("AUTH not offered under TLS")
	}
	id, err := send(c, "app@example.com", []string{"a@example.net"}, "Subject: t\r\n\r\nb\r\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTPS", from: "app@example.com", rcpt: "a@example.net"})
	// A plain client on the TLS port gets no greeting.
	if _, err := New(Options{TLSListen: []string{"127.0.0.1:0"}, Hostname: "h", MaxMessageSize: 1}, e.sp, nil, nil); err == nil {
		t.Error("TLSListen without a certificate accepted")
	}
}

// TestStartTLSDropsPlaintext: commands sent in the clear behind STARTTLS
// are not run under TLS (CVE-2011-0411).
func TestStartTLSDropsPlaintext(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	rc.write("STARTTLS\r\nNOOP\r\n")
	if got := rc.reply(); got != "220 2.0.0 Ready to start TLS" {
		t.Fatalf("STARTTLS: %q", got)
	}
	tc := tls.Client(rc.c, e.tls)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	rc.r.Reset(tc)
	rc.c = tc
	// Had the NOOP sent in the clear been kept, its reply would come first
	// here. MAIL before EHLO also shows the session was reset.
	if got := rc.cmd("MAIL FROM:<app@example.com>"); got != "503 5.5.1 Send EHLO or HELO first" {
		t.Errorf("MAIL under TLS before EHLO: %q", got)
	}
	if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
		t.Errorf("NOOP: %q", got)
	}
}

// TestLargeBodyStreams: a body of several spool chunks arrives intact.
func TestLargeBodyStreams(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) { o.MaxMessageSize = 8 << 20 })
	c := e.client(t, relayIP)
	var b strings.Builder
	b.WriteString("Subject: big\r\nX-Binding: ip1\r\n\r\n")
	for i := 0; b.Len() < 5<<20; i++ {
		fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("abcdefgh", 9))
	}
	sent := b.String()
	id, err := send(c, "app@example.com", []string{"a@example.net"}, sent, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := e.sp.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	rest := splitReceived(t, body, wantTrace{id: id, ip: relayIP, helo: "client.test", proto: "ESMTP", from: "app@example.com", rcpt: "a@example.net"})
	if want := strings.Replace(sent, "X-Binding: ip1\r\n", "", 1); rest != want {
		t.Errorf("stored body differs: %d bytes, want %d", len(rest), len(want))
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != int64(len(body)) || m.Binding != "ip1" {
		t.Errorf("size %d (body %d), binding %q", m.Size, len(body), m.Binding)
	}
}

// TestBDATSizeWithoutFinalCRLF: a BDAT body of exactly max_message_size
// whose last line has no CRLF is accepted (the CRLF mtad adds is not the
// client's), one octet more is not.
func TestBDATSizeWithoutFinalCRLF(t *testing.T) {
	t.Parallel()
	const size = 2048
	e := startEnv(t, nil, func(o *Options) { o.MaxMessageSize = size })
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	body := "Subject: s\r\n\r\n" + strings.Repeat("z", 70) + "\r\n"
	for len(body)+72 < size {
		body += strings.Repeat("z", 70) + "\r\n"
	}
	body += strings.Repeat("z", size-len(body)) // no CRLF at the end
	for _, tt := range []struct{ body, want string }{
		{body, "250 2.0.0 Ok: queued as "},
		{body + "z", "552 5.3.4 "},
	} {
		rc.cmd("MAIL FROM:<app@example.com>")
		rc.cmd("RCPT TO:<a@example.net>")
		rc.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(tt.body), tt.body))
		if got := rc.reply(); !strings.HasPrefix(got, tt.want) {
			t.Errorf("BDAT of %d octets: %q, want %q...", len(tt.body), got, tt.want)
		}
		rc.cmd("RSET")
	}
}

// TestJunkVerbLogged: the rejected record of an unknown or over-long line
// names at most 16 octets of its verb.
func TestJunkVerbLogged(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	if got := rc.cmd(strings.Repeat("x", 600)); got != "500 5.5.2 Line too long" {
		t.Errorf("reply %q", got)
	}
	if r := e.records("rejected", map[string]any{"command": strings.Repeat("X", 16)}); len(r) != 1 {
		t.Errorf("rejected records: %v", e.records("rejected", nil))
	}
}
