package inject

import (
	"crypto/tls"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestCheckAddress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr  string
		utf8  bool
		kind  addrKind
		canon string // when accepted
		code  int    // when refused
		enh   string
	}{
		{addr: "user@example.com", kind: recipientAddr, canon: "user@example.com"},
		{addr: "first.last+tag@sub.example.co.uk", kind: recipientAddr, canon: "first.last+tag@sub.example.co.uk"},
		{addr: "user@[192.0.2.1]", kind: recipientAddr, canon: "user@[192.0.2.1]"},
		{addr: "user@[IPv6:2001:db8::1]", kind: recipientAddr, canon: "user@[IPv6:2001:db8::1]"},
		{addr: "user@localhost", kind: recipientAddr, canon: "user@localhost"},
		// go-smtp hands quoted local parts over unquoted; they come back quoted.
		{addr: "john doe@example.com", kind: recipientAddr, canon: `"john doe"@example.com`},
		{addr: `a"b@example.com`, kind: recipientAddr, canon: `"a\"b"@example.com`},
		{addr: "a..b@example.com", kind: recipientAddr, canon: `"a..b"@example.com`},
		{addr: "a@b@example.com", kind: recipientAddr, canon: `"a@b"@example.com`},
		// Syntax: 501.
		{addr: "a\x01b@example.com", kind: recipientAddr, code: 501, enh: "5.1.3"},
		{addr: "a\x01b@example.com", kind: senderAddr, code: 501, enh: "5.1.7"},
		{addr: strings.Repeat("a", 65) + "@example.com", kind: recipientAddr, code: 501, enh: "5.1.3"},
		{addr: strings.Repeat("a", 64) + "@" + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".com", kind: recipientAddr, code: 501, enh: "5.1.3"},
		{addr: "\xff@example.com", utf8: true, kind: recipientAddr, code: 501, enh: "5.1.3"},
		{addr: "noat", kind: recipientAddr, code: 501, enh: "5.1.3"},
		// Parses, but the domain is no place to deliver to: 553.
		{addr: "user@-bad.example", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@bad-.example", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@exa_mple.com", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@example..com", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@example.com.", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@192.0.2.1", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@[192.0.2.300]", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@[IPv6:192.0.2.1]", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@[2001:db8::1]", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@" + strings.Repeat("a", 64) + ".com", kind: recipientAddr, code: 553, enh: "5.1.3"},
		{addr: "user@bad..example", kind: senderAddr, code: 553, enh: "5.1.7"},
		// Internationalised addresses need SMTPUTF8.
		{addr: "josé@example.com", kind: recipientAddr, code: 553, enh: "5.6.7"},
		{addr: "user@exämple.com", kind: recipientAddr, code: 553, enh: "5.6.7"},
		{addr: "josé@exämple.com", utf8: true, kind: recipientAddr, canon: "josé@exämple.com"},
		{addr: "user@ex\u00e4mple-.com", utf8: true, kind: recipientAddr, code: 553, enh: "5.1.3"},
	}
	for _, tt := range tests {
		canon, e := checkAddress(tt.addr, tt.utf8, tt.kind)
		if tt.code == 0 {
			if e != nil || canon != tt.canon {
				t.Errorf("checkAddress(%q, utf8=%v) = %q, %v; want %q, nil", tt.addr, tt.utf8, canon, e, tt.canon)
			}
			continue
		}
		if e == nil {
			t.Errorf("checkAddress(%q, utf8=%v) = %q, nil; want %d %s", tt.addr, tt.utf8, canon, tt.code, tt.enh)
			continue
		}
		if e.Code != tt.code || enhancedString(e.EnhancedCode) != tt.enh {
			t.Errorf("checkAddress(%q, utf8=%v) = %d %s %s; want %d %s", tt.addr, tt.utf8, e.Code, enhancedString(e.EnhancedCode), e.Message, tt.code, tt.enh)
		}
	}
}

func TestParseHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		out       string // body after strip
		msgID     string
		group     string
		binding   string
		wantError bool
	}{
		{
			name:  "no binding headers",
			in:    "Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n",
			out:   "Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n",
			msgID: "<a@b>",
		},
		{
			name:    "both stripped, folded value, case-insensitive names",
			in:      "From: a@b\r\nx-binding-group:\r\n  bulk \r\nSubject: s\r\nX-BINDING: ip1\r\n\r\nX-Binding: in-body\r\n",
			out:     "From: a@b\r\nSubject: s\r\n\r\nX-Binding: in-body\r\n",
			group:   "bulk",
			binding: "ip1",
		},
		{
			name:  "first header stripped",
			in:    "X-Binding-Group: g\r\nSubject: s\r\n\r\nb\r\n",
			out:   "Subject: s\r\n\r\nb\r\n",
			group: "g",
		},
		{
			name:  "last header stripped, no body",
			in:    "Subject: s\r\nX-Binding-Group: g\r\n",
			out:   "Subject: s\r\n",
			group: "g",
		},
		{
			name:  "repeated with the same value",
			in:    "X-Binding-Group: g\r\nX-Binding-Group: g\r\n\r\n",
			out:   "\r\n",
			group: "g",
		},
		{
			name:      "repeated with different values",
			in:        "X-Binding-Group: g\r\nX-Binding-Group: h\r\n\r\n",
			wantError: true,
		},
		{
			name: "header section ends at a non-field line",
			in:   "Subject: s\r\nnot a header\r\nX-Binding: b\r\n\r\n",
			out:  "Subject: s\r\nnot a header\r\nX-Binding: b\r\n\r\n",
		},
		{
			name: "no header section at all",
			in:   "  leading continuation\r\nX-Binding: b\r\n",
			out:  "  leading continuation\r\nX-Binding: b\r\n",
		},
		{
			name:  "obsolete space before colon",
			in:    "X-Binding-Group : g\r\n\r\n",
			out:   "\r\n",
			group: "g",
		},
		{
			name:  "lookalike names are kept",
			in:    "X-Binding-Groups: g\r\nX-Bindings: b\r\n\r\n",
			out:   "X-Binding-Groups: g\r\nX-Bindings: b\r\n\r\n",
			group: "",
		},
		{
			name:  "only the first Message-ID is kept",
			in:    "Message-ID: <1@x>\r\nMessage-ID: <2@x>\r\n\r\n",
			out:   "Message-ID: <1@x>\r\nMessage-ID: <2@x>\r\n\r\n",
			msgID: "<1@x>",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := []byte(tt.in)
			h, err := parseHeaders(body)
			if tt.wantError {
				if err == nil {
					t.Fatalf("parseHeaders: no error, want one")
				}
				return
			}
			if err != nil {
				t.Fatalf("parseHeaders: %v", err)
			}
			if h.messageID != tt.msgID || h.group != tt.group || h.binding != tt.binding {
				t.Errorf("got id=%q group=%q binding=%q; want %q %q %q", h.messageID, h.group, h.binding, tt.msgID, tt.group, tt.binding)
			}
			if got := string(h.strip(body)); got != tt.out {
				t.Errorf("strip:\n got %q\nwant %q", got, tt.out)
			}
		})
	}
}

func TestFailDelay(t *testing.T) {
	t.Parallel()
	base := 100 * time.Millisecond
	want := []time.Duration{0, base, 2 * base, 4 * base, 8 * base, 16 * base, 30 * base, 30 * base}
	for n := 1; n < len(want); n++ {
		if got := failDelay(base, n); got != want[n] {
			t.Errorf("failDelay(%v, %d) = %v, want %v", base, n, got, want[n])
		}
	}
	if got := failDelay(base, 1000); got != 30*base {
		t.Errorf("failDelay(n=1000) = %v, want %v", got, 30*base)
	}
}

func TestAuthFailuresTracker(t *testing.T) {
	t.Parallel()
	now := time.Unix(1700000000, 0)
	a := newAuthFailures(time.Second, func() time.Time { return now })
	ip1 := netip.MustParseAddr("192.0.2.1")
	ip2 := netip.MustParseAddr("192.0.2.2")
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if got := a.fail(ip1); got != want {
			t.Errorf("failure %d: delay %v, want %v", i+1, got, want)
		}
	}
	if got := a.fail(ip2); got != time.Second {
		t.Errorf("other client's first failure: %v, want 1s", got)
	}
	a.success(ip1)
	if got := a.fail(ip1); got != time.Second {
		t.Errorf("after success: %v, want 1s", got)
	}
	now = now.Add(failWindow + time.Second)
	if got := a.fail(ip2); got != time.Second {
		t.Errorf("after a quiet window: %v, want 1s", got)
	}
	// Bounded: many clients never grow the map past its cap.
	for i := range maxFailEntries + 500 {
		a.fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if n := len(a.m); n > maxFailEntries {
		t.Errorf("tracker holds %d entries, cap %d", n, maxFailEntries)
	}
	if d := newAuthFailures(0, time.Now).fail(ip1); d != 0 {
		t.Errorf("zero base: delay %v, want 0", d)
	}
}

// TestAuthPolicy is the AUTH offer/refusal decision. The end-to-end tests
// can only come from 127/8, which is loopback, so the non-loopback rows are
// tested here.
func TestAuthPolicy(t *testing.T) {
	t.Parallel()
	users := map[string][]byte{"u": []byte("x")}
	loop := netip.MustParseAddr("127.0.0.9")
	loop6 := netip.MustParseAddr("::1")
	remote := netip.MustParseAddr("192.0.2.7")
	tlsConf := &tls.Config{}
	tests := []struct {
		name    string
		users   map[string][]byte
		tlsConf *tls.Config
		isTLS   bool
		ip      netip.Addr
		inTxn   bool
		offered bool
		refusal *smtpErr
	}{
		{name: "no users", users: nil, tlsConf: tlsConf, isTLS: true, ip: remote, refusal: &smtpErr{502, "5.7.0"}},
		{name: "loopback plain", users: users, ip: loop, offered: true},
		{name: "loopback6 plain", users: users, ip: loop6, offered: true},
		{name: "remote TLS", users: users, tlsConf: tlsConf, isTLS: true, ip: remote, offered: true},
		{name: "remote plain, STARTTLS offered", users: users, tlsConf: tlsConf, ip: remote, refusal: &smtpErr{538, "5.7.11"}},
		{name: "remote plain, no TLS at all", users: users, ip: remote, refusal: &smtpErr{502, "5.7.0"}},
		{name: "in a transaction", users: users, ip: loop, inTxn: true, offered: true, refusal: &smtpErr{503, "5.5.1"}},
	}
	for _, tt := range tests {
		s := &Server{}
		s.auth.Store(&authState{users: tt.users})
		s.tlsConf.Store(tt.tlsConf)
		if got := s.authOffered(tt.isTLS, tt.ip); got != tt.offered {
			t.Errorf("%s: authOffered = %v, want %v", tt.name, got, tt.offered)
		}
		e := s.authRefusal(tt.isTLS, tt.ip, tt.inTxn)
		switch {
		case tt.refusal == nil && e != nil:
			t.Errorf("%s: refused %d %v, want allowed", tt.name, e.Code, e.EnhancedCode)
		case tt.refusal != nil && (e == nil || e.Code != tt.refusal.code || enhancedString(e.EnhancedCode) != tt.refusal.enh):
			t.Errorf("%s: refusal %v, want %v", tt.name, e, tt.refusal)
		}
	}
}

type smtpErr struct {
	code int
	enh  string
}

func TestLoadUsers(t *testing.T) {
	t.Parallel()
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	hash := string(h)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("good", "# users\n\nalice "+hash+"\n  bob\t"+hash+"  \n")
	users, err := LoadUsers(good)
	if err != nil {
		t.Fatalf("LoadUsers: %v", err)
	}
	if len(users) != 2 || string(users["alice"]) != hash || string(users["bob"]) != hash {
		t.Errorf("LoadUsers = %v", users)
	}
	empty := write("empty", "# nobody\n")
	if users, err := LoadUsers(empty); err != nil || len(users) != 0 {
		t.Errorf("LoadUsers(empty) = %v, %v; want empty map", users, err)
	}

	bad := []struct{ content, want string }{
		{"alice\n", ":1: want \"user bcrypt-hash\""},
		{"# c\nalice " + hash + " extra\n", ":2: want"},
		{"alice notahash\n", ":1: user \"alice\": not a bcrypt hash"},
		{"alice " + hash + "\n\nalice " + hash + "\n", ":3: user \"alice\" listed twice"},
		{"al\x01ice " + hash + "\n", ":1: user name must be printable"},
	}
	for i, b := range bad {
		p := write("bad"+string(rune('a'+i)), b.content)
		_, err := LoadUsers(p)
		if err == nil || !strings.Contains(err.Error(), p+b.want) {
			t.Errorf("LoadUsers(%q) error = %v, want it to contain %q", b.content, err, p+b.want)
		}
	}
	if _, err := LoadUsers(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadUsers(missing file): no error")
	}
}

func TestHashPassword(t *testing.T) {
	t.Parallel()
	// The default cost takes seconds under the race detector; the code
	// path is the same at the minimum cost.
	h, err := hashPassword("s3cret", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := parseUsers("x", []byte("u "+h+"\n"))
	if err != nil {
		t.Fatalf("hash not accepted by the users file parser: %v", err)
	}
	if !compareHash(users["u"], "s3cret") || compareHash(users["u"], "wrong") {
		t.Error("hash does not verify the password it was made from")
	}
	if _, err := HashPassword(""); err == nil {
		t.Error("HashPassword(\"\"): no error")
	}
}

func TestSASLServers(t *testing.T) {
	t.Parallel()
	type call struct{ identity, user, pass string }
	var got []call
	auth := func(identity, user, pass string) error {
		got = append(got, call{identity, user, pass})
		return nil
	}
	// PLAIN without an initial response: an empty challenge first.
	p := &plainServer{auth: auth}
	if ch, done, err := p.Next(nil); err != nil || done || len(ch) != 0 {
		t.Fatalf("plain Next(nil) = %q, %v, %v", ch, done, err)
	}
	if _, done, err := p.Next([]byte("\x00alice\x00pw")); err != nil || !done {
		t.Fatalf("plain Next(response) = %v, %v", done, err)
	}
	// A malformed PLAIN response is checked as user "", which never passes.
	p = &plainServer{auth: auth}
	p.Next([]byte("garbage"))
	// LOGIN with the user name as initial response.
	l := &loginServer{auth: auth}
	if ch, done, _ := l.Next([]byte("bob")); done || string(ch) != "Password:" {
		t.Fatalf("login Next(user) = %q, %v", ch, done)
	}
	if _, done, err := l.Next([]byte("pw2")); !done || err != nil {
		t.Fatalf("login Next(pw) = %v, %v", done, err)
	}
	// LOGIN without it.
	l = &loginServer{auth: auth}
	if ch, _, _ := l.Next(nil); string(ch) != "Username:" {
		t.Fatalf("login Next(nil) = %q", ch)
	}
	l.Next([]byte("carol"))
	l.Next([]byte("pw3"))
	if _, _, err := l.Next([]byte("more")); err == nil {
		t.Error("login: response after the end accepted")
	}
	want := []call{{"", "alice", "pw"}, {"", "", ""}, {"", "bob", "pw2"}, {"", "carol", "pw3"}}
	if len(got) != len(want) {
		t.Fatalf("auth calls = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("auth call %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestAppendReceived(t *testing.T) {
	t.Parallel()
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("", -7*3600))
	const dateLine = "\tFri, 02 Jan 2026 03:04:05 -0700\r\n"
	base := traceInfo{
		helo: "client.example", ip: netip.MustParseAddr("192.0.2.1"), host: "mx.example",
		id: "ID1", from: "app@example.com", rcpts: []string{"a@example.net"}, date: date,
	}
	tests := []struct {
		name string
		mod  func(*traceInfo)
		want string
	}{
		{"one recipient", func(*traceInfo) {},
			"Received: from client.example (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with ESMTP id ID1\r\n" +
				"\t(envelope-from <app@example.com>) for <a@example.net>;\r\n" + dateLine},
		{"two recipients, null sender, TLS", func(ti *traceInfo) {
			ti.rcpts, ti.from, ti.tls = []string{"a@example.net", "b@example.net"}, "", true
		},
			"Received: from client.example (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with ESMTPS id ID1\r\n" +
				"\t(envelope-from <>);\r\n" + dateLine},
		{"IPv6, address literal HELO, AUTH", func(ti *traceInfo) {
			ti.ip, ti.helo, ti.auth = netip.MustParseAddr("2001:db8::1"), "[IPv6:2001:db8::1]", true
		},
			"Received: from [IPv6:2001:db8::1] (unknown [IPv6:2001:db8::1])\r\n" +
				"\tby mx.example (mtad) with ESMTPA id ID1\r\n" +
				"\t(envelope-from <app@example.com>) for <a@example.net>;\r\n" + dateLine},
		{"no address, no HELO", func(ti *traceInfo) { ti.ip, ti.helo = netip.Addr{}, "" },
			"Received: from unknown (unknown)\r\n" +
				"\tby mx.example (mtad) with ESMTP id ID1\r\n" +
				"\t(envelope-from <app@example.com>) for <a@example.net>;\r\n" + dateLine},
		{"hostile HELO cut to 255 octets", func(ti *traceInfo) {
			ti.helo = "a\r\nb(c);d\"e f\x00\xff" + strings.Repeat("x", 300)
		},
			"Received: from a??b?c??d?e?f??" + strings.Repeat("x", 255-15) + " (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with ESMTP id ID1\r\n" +
				"\t(envelope-from <app@example.com>) for <a@example.net>;\r\n" + dateLine},
		{"comment characters escaped only in the comment", func(ti *traceInfo) {
			ti.from, ti.rcpts[0] = `"a(b)\\c"@example.com`, `"x)y"@example.net`
		},
			"Received: from client.example (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with ESMTP id ID1\r\n" +
				"\t(envelope-from <\"a\\(b\\)\\\\\\\\c\"@example.com>) for <\"x)y\"@example.net>;\r\n" + dateLine},
		{"control and non-ASCII without SMTPUTF8 replaced", func(ti *traceInfo) {
			ti.from, ti.rcpts[0] = "a\r\nb@example.com", "jos\u00e9@example.net"
		},
			"Received: from client.example (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with ESMTP id ID1\r\n" +
				"\t(envelope-from <a??b@example.com>) for <jos?@example.net>;\r\n" + dateLine},
		{"SMTPUTF8 keeps printable UTF-8 only", func(ti *traceInfo) {
			ti.utf8, ti.tls, ti.auth = true, true, true
			ti.from, ti.rcpts[0] = "jos\u00e9\u2028\u202e\x85@example.com", "\u00fc@ex\u00e4mple.net"
		},
			"Received: from client.example (unknown [192.0.2.1])\r\n" +
				"\tby mx.example (mtad) with UTF8SMTPSA id ID1\r\n" +
				"\t(envelope-from <jos\u00e9???@example.com>) for <\u00fc@ex\u00e4mple.net>;\r\n" + dateLine},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ti := base
			ti.rcpts = append([]string(nil), base.rcpts...)
			tt.mod(&ti)
			if got := string(appendReceived([]byte("prefix"), ti)); got != "prefix"+tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, "prefix"+tt.want)
			}
		})
	}
}

// TestORCPTUTF8: an ORCPT of type utf-8 (RFC 6533) is decoded from its
// "\x{HEX}" escapes, takes raw UTF-8 only in an SMTPUTF8 transaction, and
// is stored as "utf-8;address"; rfc822 keeps xtext.
func TestORCPTUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		param string
		utf8  bool
		want  string // "" = refused
	}{
		{`ORCPT=utf-8;u\x{E9}@example.net`, false, "utf-8;u\u00e9@example.net"},
		{`ORCPT=UTF-8;u\x{1F600}@example.net`, false, "utf-8;u\U0001F600@example.net"},
		{"ORCPT=utf-8;u\u00e9@example.net", true, "utf-8;u\u00e9@example.net"},
		{"ORCPT=utf-8;u\u00e9@example.net", false, ""},
		{`ORCPT=utf-8;a\x{2B}b@example.net`, false, "utf-8;a+b@example.net"},
		{`ORCPT=utf-8;a+b@example.net`, false, ""},
		{`ORCPT=utf-8;a\x{}@example.net`, false, ""},
		{`ORCPT=utf-8;a\x{D800}@example.net`, false, ""},
		{`ORCPT=utf-8;a\y@example.net`, false, ""},
		{"ORCPT=rfc822;a+2Bb@example.net", false, "rfc822;a+b@example.net"},
		// No control character, which would end up in a DSN's fields.
		{`ORCPT=utf-8;a\x{A}b@example.net`, true, ""},
		{"ORCPT=rfc822;a+0D+0Ab@example.net", true, ""},
	}
	for _, tt := range tests {
		rp, e := parseRcptParams(tt.param, tt.utf8)
		switch {
		case tt.want == "" && e == nil:
			t.Errorf("%q (utf8 %v): accepted as %q, want 501", tt.param, tt.utf8, rp.orcpt)
		case tt.want == "" && e.Code != 501:
			t.Errorf("%q: %v, want 501", tt.param, e)
		case tt.want != "" && (e != nil || rp.orcpt != tt.want):
			t.Errorf("%q (utf8 %v): %q, %v; want %q", tt.param, tt.utf8, rp.orcpt, e, tt.want)
		}
	}
}
