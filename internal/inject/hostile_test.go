package inject

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// Hostile input over SMTP (issue 12, points 7 and 8): each case runs
// against the real listener and a real spool, checks the exact reply, that
// a second client is still served, and that the spool holds only what it
// should.

// stillServes checks the daemon serves a fresh client end to end, and
// returns the id of the message it stored.
func (e *testEnv) stillServes(t *testing.T) string {
	t.Helper()
	c := e.client(t, relayIP)
	id, err := send(c, "ok@example.com", []string{"ok@example.net"}, "Subject: ok\r\n\r\nok\r\n", nil)
	if err != nil {
		t.Fatalf("second client not served: %v", err)
	}
	return id
}

// wantStored checks the spool holds exactly ids.
func (e *testEnv) wantStored(t *testing.T, ids ...string) {
	t.Helper()
	got := e.stored(t)
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) {
		t.Fatalf("spool holds %v, want %v", got, ids)
	}
}

// readToEOF reads what is left on the connection: the session must have
// been closed by the server.
func (rc *rawConn) readToEOF() string {
	rc.t.Helper()
	b, err := io.ReadAll(rc.r)
	if err != nil {
		rc.t.Fatalf("read to EOF: %v (after %q)", err, b)
	}
	return string(b)
}

func TestHostileCommands(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		send string // written in one piece after EHLO
		want []string
	}{
		// RFC 5321 2.3.8 and smuggling: a command ends with CRLF only.
		{"bare LF", "NOOP\n", []string{"500 5.5.2 Command line must end with CRLF, not a bare LF"}},
		{"bare LF MAIL", "MAIL FROM:<a@example.com>\nRCPT TO:<b@example.net>\r\n", []string{
			"500 5.5.2 Command line must end with CRLF, not a bare LF",
			"503 5.5.1 Missing MAIL FROM command"}},
		{"bare CR", "NOOP\rRSET\r\n", []string{"500 5.5.2 Command line contains a bare CR or a NUL"}},
		{"NUL", "NO\x00OP\r\n", []string{"500 5.5.2 Command line contains a bare CR or a NUL"}},
		{"NUL in MAIL", "MAIL FROM:<a\x00b@example.com>\r\n", []string{"500 5.5.2 Command line contains a bare CR or a NUL"}},
		{"10000 characters", "NOOP " + strings.Repeat("x", 10000) + "\r\n", []string{"500 5.5.2 Line too long"}},
		{"10000 characters MAIL", "MAIL FROM:<" + strings.Repeat("x", 10000) + "@example.com>\r\n", []string{"500 5.5.2 Line too long"}},
		{"1 MB line", strings.Repeat("y", 1<<20) + "\r\n", []string{"500 5.5.2 Line too long"}},
		{"CRLF in HELO", "EHLO a\r\nBcc: x\r\n", []string{"250-mx.test Hello a", "500 5.5.2 Command not recognized"}},
	}
	e := startEnv(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := e.raw(t, relayIP)
			rc.cmd("EHLO client.test")
			rc.write(tt.send)
			for _, w := range tt.want {
				got := rc.reply()
				if first, _, _ := strings.Cut(got, "\n"); first != w {
					t.Fatalf("got %q, want %q", got, w)
				}
			}
			// The session goes on.
			if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
				t.Fatalf("NOOP after: %q", got)
			}
		})
	}
	id := e.stillServes(t)
	e.wantStored(t, id)
}

func TestHostileData(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	begin := func(t *testing.T) *rawConn {
		rc := e.raw(t, relayIP)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<app@example.com>")
		rc.cmd("RCPT TO:<a@example.net>")
		if got := rc.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
			t.Fatalf("DATA: %q", got)
		}
		return rc
	}
	var kept []string

	t.Run("NUL", func(t *testing.T) {
		rc := begin(t)
		if got := rc.cmd("Subject: x\r\n\r\na\x00b\r\n."); got != "554 5.6.0 Message contains NUL characters" {
			t.Fatalf("NUL in DATA: %q", got)
		}
	})
	t.Run("bare LF dot", func(t *testing.T) {
		// RFC 5321 2.3.8 and the SMTP smuggling lesson (CVE-2023-51764):
		// bare LF is repaired to CRLF as content, and "\n.\n" never ends
		// DATA, so the "second message" is part of the first.
		rc := begin(t)
		rc.write("Subject: x\n\nfirst\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.net>\nDATA\nsmuggled\r\n.\r\n")
		got := rc.reply()
		id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
		if !ok {
			t.Fatalf("end of data: %q", got)
		}
		kept = append(kept, id)
		body, err := e.sp.Body(id)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(body), "\r\nfirst\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n") {
			t.Errorf("stored body %q", body)
		}
		if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
			t.Errorf("NOOP after: %q", got)
		}
	})
	t.Run("junk after the dot", func(t *testing.T) {
		// The end of data and what follows in the same packet: the
		// pipelined commands are commands, junk is answered as junk.
		rc := begin(t)
		rc.write("Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\nJUNK junk\r\n\x00\x01\x02\r\nRSET\r\n")
		got := rc.reply()
		id, ok := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
		if !ok {
			t.Fatalf("end of data: %q", got)
		}
		kept = append(kept, id)
		for _, w := range []string{"250 2.0.0 Ok", "500 5.5.2 Command not recognized",
			"500 5.5.2 Command line contains a bare CR or a NUL", "250 2.0.0 Session reset"} {
			if got := rc.reply(); got != w {
				t.Fatalf("after the dot: %q, want %q", got, w)
			}
		}
		m, err := e.sp.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if body, _ := e.sp.Body(id); !strings.HasSuffix(string(body), "\r\n\r\nbody\r\n") || len(m.Recipients) != 1 {
			t.Errorf("stored %q for %v", body, m.Recipients)
		}
	})
	t.Run("commands after QUIT", func(t *testing.T) {
		rc := e.raw(t, relayIP)
		rc.write("EHLO client.test\r\nQUIT\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n")
		if got := rc.reply(); !strings.HasPrefix(got, "250-mx.test") {
			t.Fatalf("EHLO: %q", got)
		}
		if got := rc.reply(); got != "221 2.0.0 Bye" {
			t.Fatalf("QUIT: %q", got)
		}
		if rest := rc.readToEOF(); rest != "" {
			t.Fatalf("replies after QUIT: %q", rest)
		}
	})
	e.wantStored(t, append(kept, e.stillServes(t))...)
	if r := e.records("rejected", map[string]any{"command": "MAIL"}); len(r) != 0 {
		t.Errorf("a command after QUIT was processed: %v", r)
	}
}

// TestPipelinedRecipients sends 100,000 RCPTs in one pipelined stream:
// past max_recipients each gets 452 4.5.3, the transaction keeps the
// first ones only, and the server's memory for the session stays that of
// max_recipients recipients (reported, not asserted on timing).
func TestPipelinedRecipients(t *testing.T) {
	const n = 100_000
	// No log observer: it would keep 10⁵ "rejected" records in memory and
	// swamp the figures.
	e := startEnv(t, nil, func(o *Options) { o.Logger = zap.NewNop() })
	rc := e.raw(t, relayIP)
	rc.cmd("EHLO client.test")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() { // the writer; the test reads replies at the same time
		defer wg.Done()
		w := bufio.NewWriterSize(rc.c, 64<<10)
		w.WriteString("MAIL FROM:<app@example.com>\r\n")
		for i := range n {
			w.WriteString("RCPT TO:<r" + strconv.Itoa(i) + "@example.net>\r\n")
		}
		werr = w.Flush()
	}()
	if got := rc.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("MAIL: %q", got)
	}
	ok, full := 0, 0
	for i := range n {
		switch got := rc.reply(); {
		case strings.HasPrefix(got, "250 2.0.0 "):
			ok++
		case got == "452 4.5.3 Too many recipients":
			full++
		default:
			t.Fatalf("RCPT %d: %q", i, got)
		}
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("writing RCPTs: %v", werr)
	}
	runtime.ReadMemStats(&after)
	if ok != e.srv.opts.MaxRecipients || full != n-ok {
		t.Fatalf("%d accepted, %d refused 452; want %d and %d", ok, full, e.srv.opts.MaxRecipients, n-e.srv.opts.MaxRecipients)
	}
	t.Logf("%d pipelined RCPTs: %d bytes allocated in all (%.0f per RCPT, client's included), heap in use %+d bytes",
		n, after.TotalAlloc-before.TotalAlloc, float64(after.TotalAlloc-before.TotalAlloc)/n, int64(after.HeapInuse)-int64(before.HeapInuse))
	if got := rc.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
		t.Fatalf("DATA: %q", got)
	}
	got := rc.cmd("Subject: x\r\n\r\nbody\r\n.")
	id, found := strings.CutPrefix(got, "250 2.0.0 Ok: queued as ")
	if !found {
		t.Fatalf("end of data: %q", got)
	}
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Recipients) != e.srv.opts.MaxRecipients || m.Recipients[0].Addr != "r0@example.net" {
		t.Errorf("stored recipients %v", m.Recipients)
	}
	e.wantStored(t, id, e.stillServes(t))
}

// TestHugeHeaderLine sends a 10 MB header line under each long_lines
// policy. It is not parallel, so that the heap figures it reports are the
// listener's alone.
func TestHugeHeaderLine(t *testing.T) {
	body := []byte("Subject: " + strings.Repeat("a", 10<<20) + "\r\n\r\nbody\r\n.\r\n")
	for _, tt := range []struct {
		name   string
		policy LongLines
		want   string
	}{
		{"reject", LongLinesReject, "554 5.6.0 Message contains lines longer than 998 characters"},
		// conform refuses a header section past its bound before it
		// looks at the line.
		{"convert", LongLinesConvert, "552 5.3.4 header section too big"},
		{"over max size", LongLinesConvert, "552 5.3.4 Message size exceeds fixed maximum message size"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := startEnv(t, nil, func(o *Options) {
				o.LongLines = tt.policy
				o.MaxMessageSize = 20 << 20
				if tt.name == "over max size" {
					o.MaxMessageSize = 1 << 20
				}
			})
			rc := e.raw(t, relayIP)
			rc.cmd("EHLO client.test")
			rc.cmd("MAIL FROM:<app@example.com>")
			rc.cmd("RCPT TO:<a@example.net>")
			rc.cmd("DATA")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			if _, err := rc.c.Write(body); err != nil {
				t.Fatal(err)
			}
			got := rc.reply()
			runtime.ReadMemStats(&after)
			if got != tt.want {
				t.Fatalf("10 MB header line: %q, want %q", got, tt.want)
			}
			t.Logf("10 MB header line, %s: listener allocated %d bytes (heap in use %+d)",
				tt.name, after.TotalAlloc-before.TotalAlloc, int64(after.HeapInuse)-int64(before.HeapInuse))
			// Under long_lines: reject the line is read and dropped, never
			// held or stored: what the session allocates is a small part of
			// it (a bound on allocation, not on time).
			if alloc := after.TotalAlloc - before.TotalAlloc; tt.policy == LongLinesReject && alloc > uint64(len(body))/2 {
				t.Errorf("refusing a 10 MB line allocated %d bytes", alloc)
			}
			if got := rc.cmd("NOOP"); got != "250 2.0.0 Ok" {
				t.Fatalf("NOOP after: %q", got)
			}
			e.wantStored(t, e.stillServes(t))
		})
	}
}

// TestNoOpenRelay: from 127.0.0.9, outside relay_networks
// (127.0.0.1/32), unauthenticated, no address form gets through.
func TestNoOpenRelay(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	addrs := []string{
		"a@example.net",
		"a@EXAMPLE.NET",
		"postmaster",
		"postmaster@mx.test", // our own hostname: we have no local domains
		"a@localhost",
		`"a@b"@example.net`,
		`"a b"@example.net`,
		`"a\"b"@example.net`,
		"@relay.example:a@example.net",
		"@relay.example,@other.example:a@example.net",
		"a%example.net@mx.test",
		"a%example.net@example.org",
		"example.net!a@mx.test",
		"example.net!a",
		"a@[127.0.0.1]",
		"a@[127.0.0.9]",
		"a@[IPv6:::1]",
		"a@example.net.",
		"a@example.net..",
		"a@bücher.example",
		"ü@example.net",
		"a@xn--bcher-kva.example",
		"a@127.0.0.1",
	}
	c := e.client(t, outsideIP)
	if err := c.Mail("app@example.com", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	rc := e.raw(t, outsideIP)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<app@example.com> SMTPUTF8")
	for _, a := range addrs {
		if got := rc.cmd("RCPT TO:<" + a + ">"); got != "550 5.7.1 Relaying denied" {
			t.Errorf("RCPT TO:<%s>: %q", a, got)
		}
	}
	if got := rc.cmd("DATA"); got != "503 5.5.1 Missing RCPT TO command" {
		t.Errorf("DATA: %q", got)
	}
	// Through go-smtp as well, in its own quoting.
	for _, a := range addrs[:5] {
		wantSMTPError(t, "RCPT "+a, c.Rcpt(a, nil), 550, "5.7.1")
	}
	// A failed AUTH does not open the relay either.
	wantSMTPError(t, "auth", e.client(t, outsideIP).Auth(sasl.NewPlainClient("", testUser, "wrong")), 535, "5.7.8")
	e.wantStored(t, e.stillServes(t))
}

// TestAuthHeaderInjection: AUTH identities with CR LF never authenticate,
// so nothing but a configured user name (printable ASCII, checked when
// the users file is read) reaches a header or a log record.
func TestAuthHeaderInjection(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	for _, cl := range []sasl.Client{
		sasl.NewPlainClient("alice\r\nBcc: x@example.net", testUser, testPassword),
		sasl.NewPlainClient("", testUser+"\r\nBcc: x@example.net", testPassword),
		sasl.NewLoginClient(testUser+"\r\n", testPassword),
	} {
		c := e.client(t, outsideIP, true)
		wantSMTPError(t, "auth", c.Auth(cl), 535, "5.7.8")
	}
	rc := e.raw(t, outsideIP)
	rc.cmd("EHLO client.test")
	if got := rc.cmd("AUTH LOGIN"); !strings.HasPrefix(got, "334 ") {
		t.Fatalf("AUTH LOGIN: %q", got)
	}
	rc.write(base64.StdEncoding.EncodeToString([]byte(testUser)) + "\n")
	if got := rc.reply(); got != "500 5.5.2 Command line must end with CRLF, not a bare LF" {
		t.Errorf("AUTH line with bare LF: %q", got)
	}
	e.wantStored(t)
}

// TestAuthFailureDelayThenSuccess: failures from one client grow its
// delay, and the right password still works afterwards and clears them.
func TestAuthFailureDelayThenSuccess(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil)
	c := e.client(t, outsideIP, true)
	for range 4 {
		wantSMTPError(t, "auth", c.Auth(sasl.NewPlainClient("", testUser, "wrong")), 535, "5.7.8")
	}
	key := ipKey(netip.MustParseAddr(outsideIP)).Addr()
	e.srv.fails.mu.Lock()
	n := e.srv.fails.m[key].n
	e.srv.fails.mu.Unlock()
	if n != 4 {
		t.Errorf("failures recorded for %v: %d, want 4", key, n)
	}
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("right password after failures: %v", err)
	}
	e.srv.fails.mu.Lock()
	_, left := e.srv.fails.m[key]
	e.srv.fails.mu.Unlock()
	if left {
		t.Error("failures not forgotten after a success")
	}
}

// TestTLSFloor: a client that speaks at most TLS 1.1 is refused on
// STARTTLS and on the implicit-TLS listener, though the configuration
// passed in sets no MinVersion; TLS 1.2 works.
func TestTLSFloor(t *testing.T) {
	t.Parallel()
	e := startEnv(t, nil, func(o *Options) {
		o.TLSListen = []string{"127.0.0.1:0"}
		// A configuration asking for TLS 1.0 gets TLS 1.2 all the same.
		o.TLSConfig = o.TLSConfig.Clone()
		o.TLSConfig.MinVersion = tls.VersionTLS10
	})
	old := e.tls.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	conn := dialFrom(t, e.addr, relayIP)
	defer conn.Close()
	// go-smtp's client hands the handshake to the first exchange.
	if c, err := smtp.NewClientStartTLS(conn, old); err == nil {
		if err := c.Hello("client.test"); err == nil {
			t.Fatal("STARTTLS with TLS 1.1 succeeded")
		}
	}
	implicit := e.srv.Addrs()[1].String()
	tc, err := tls.Dial("tcp", implicit, old)
	if err == nil {
		tc.Close()
		t.Fatal("implicit TLS with TLS 1.1 succeeded")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("TLS 1.1 handshake error %q, want a protocol version alert", err)
	}
	v12 := e.tls.Clone()
	v12.MaxVersion = tls.VersionTLS12
	tc, err = tls.Dial("tcp", implicit, v12)
	if err != nil {
		t.Fatalf("TLS 1.2: %v", err)
	}
	tc.Close()
	e.stillServes(t)
}

// TestWideRelayWarning: relay networks past loopback are named once in a
// warning at start; loopback ones are not.
func TestWideRelayWarning(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		nets []string
		want []string
	}{
		{[]string{"127.0.0.1/32", "::1/128", "127.0.0.0/8"}, nil},
		{[]string{"127.0.0.1/32", "10.0.0.0/8", "::/0", "127.0.0.0/7"}, []string{"10.0.0.0/8", "::/0", "127.0.0.0/7"}},
	} {
		e := startEnv(t, nil, func(o *Options) {
			o.RelayNetworks = nil
			for _, n := range tt.nets {
				o.RelayNetworks = append(o.RelayNetworks, netip.MustParsePrefix(n))
			}
		})
		var got []string
		for _, le := range e.logs.FilterMessageSnippet("relay_networks wider than loopback").All() {
			got = append(got, fmt.Sprint(le.ContextMap()["relay_networks"]))
		}
		switch {
		case tt.want == nil && len(got) != 0:
			t.Errorf("%v: warned %v", tt.nets, got)
		case tt.want != nil && (len(got) != 1 || got[0] != fmt.Sprint(tt.want)):
			t.Errorf("%v: warned %v, want once %v", tt.nets, got, tt.want)
		}
	}
}
