package inject

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

// FuzzParseHeaders: any body parses without panic, stripping only removes
// bytes, and the stripped body has no binding fields left to find.
func FuzzParseHeaders(f *testing.F) {
	f.Add([]byte("Subject: s\r\nX-Binding-Group: g\r\n\r\nbody\r\n"))
	f.Add([]byte("X-Binding:\r\n b\r\nMessage-ID: <a@b>\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := append([]byte(nil), body...)
		h, err := parseHeaders(body)
		if err != nil {
			return
		}
		if !bytes.Equal(body, orig) {
			t.Fatal("parseHeaders changed its input")
		}
		last := 0
		for _, d := range h.drop {
			if d[0] < last || d[1] <= d[0] || d[1] > len(body) {
				t.Fatalf("bad drop ranges %v for %d bytes", h.drop, len(body))
			}
			last = d[1]
		}
		if len(h.messageID) > maxHeaderValue || len(h.group) > maxHeaderValue || len(h.binding) > maxHeaderValue {
			t.Fatal("header value over the bound")
		}
		out := h.strip(body)
		removed := 0
		for _, d := range h.drop {
			removed += d[1] - d[0]
		}
		if len(out) != len(orig)-removed {
			t.Fatalf("strip: %d bytes out of %d, %d removed", len(out), len(orig), removed)
		}
		h2, err := parseHeaders(out)
		if err != nil || h2.group != "" || h2.binding != "" || len(h2.drop) != 0 {
			t.Fatalf("stripped body still has binding fields: %+v %v\n%q", h2, err, out)
		}
		if h2.messageID != h.messageID {
			t.Fatalf("stripping changed the Message-ID: %q to %q", h.messageID, h2.messageID)
		}
	})
}

// FuzzLoadUsers: the users file parser never panics and accepts only
// printable names with bcrypt hashes.
func FuzzLoadUsers(f *testing.F) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("# c\nalice " + string(h) + "\n"))
	f.Add([]byte("alice\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := parseUsers("users", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "inject: load users: users") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for u, hash := range users {
			if u == "" || strings.ContainsAny(u, " \t\r\n") {
				t.Fatalf("bad user name %q accepted", u)
			}
			if _, err := bcrypt.Cost(hash); err != nil {
				t.Fatalf("user %q: bad hash accepted: %v", u, err)
			}
		}
	})
}

// FuzzCheckAddress: any address is either refused with a 5xx or accepted
// in a canonical form that fits the RFC 5321 limits.
func FuzzCheckAddress(f *testing.F) {
	f.Add("user@example.com", false)
	f.Add("john doe@[IPv6:::1]", true)
	f.Fuzz(func(t *testing.T, addr string, smtputf8 bool) {
		canon, e := checkAddress(addr, smtputf8, recipientAddr)
		if e != nil {
			if e.Code/100 != 5 {
				t.Fatalf("refusal %d is not permanent", e.Code)
			}
			return
		}
		if len(canon) > maxPath || !utf8.ValidString(canon) || !strings.Contains(canon, "@") {
			t.Fatalf("accepted %q as %q", addr, canon)
		}
		if !smtputf8 && !isASCII(canon) {
			t.Fatalf("non-ASCII %q accepted without SMTPUTF8", canon)
		}
	})
}

// FuzzReceived: whatever HELO and whatever addresses checkAddress lets
// through, the Received field is four CRLF lines of at most 998 octets,
// folded with a TAB, ASCII unless SMTPUTF8, with balanced comments and
// quoted strings, exactly one ';' outside them, and the date after it.
func FuzzReceived(f *testing.F) {
	f.Add("client.example", "app@example.com", "a@example.net", false, false, false, false)
	f.Add("ev(il);\"x\ry", `"a(b)\\c;d"@example.com`, `"x) y;"@example.net`, true, true, false, false)
	f.Add("[IPv6:::1]", "", "jos\u00e9@ex\u00e4mple.net", true, false, true, true)
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, helo, from, rcpt string, tls, auth, smtputf8, two bool) {
		if from != "" {
			c, e := checkAddress(from, smtputf8, senderAddr)
			if e != nil {
				c = "app@example.com"
			}
			from = c
		}
		rcpt, e := checkAddress(rcpt, smtputf8, recipientAddr)
		if e != nil {
			rcpt = "a@example.net"
		}
		rcpts := []string{rcpt}
		if two {
			rcpts = append(rcpts, "b@example.net")
		}
		ti := traceInfo{helo: helo, ip: netip.MustParseAddr("2001:db8::1"), host: "mx.test", tls: tls, auth: auth,
			utf8: smtputf8, id: "ID1", from: from, rcpts: rcpts, date: date}
		out := string(appendReceived(nil, ti))

		if !utf8.ValidString(out) || !smtputf8 && !isASCII(out) {
			t.Fatalf("bad encoding: %q", out)
		}
		lines := strings.Split(out, "\r\n")
		if len(lines) != 5 || lines[4] != "" {
			t.Fatalf("not four CRLF lines: %q", out)
		}
		lines = lines[:4]
		for i, l := range lines {
			if len(l) > 998 || strings.ContainsAny(l, "\r\n") || (i > 0) != strings.HasPrefix(l, "\t") {
				t.Fatalf("bad line %d %q", i+1, l)
			}
		}
		tok := strings.TrimPrefix(lines[0], "Received: from ")
		tok, _, _ = strings.Cut(tok, " ")
		if tok != traceToken(helo) || strings.Trim(tok, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:[]?") != "" {
			t.Fatalf("HELO %q written as %q", helo, tok)
		}
		if lines[1] != "\tby mx.test (mtad) with "+withProtocol(smtputf8, tls, auth)+" id ID1" {
			t.Fatalf("by line %q", lines[1])
		}
		semi := topLevelSemicolons(t, strings.Join(lines, ""))
		if len(semi) != 1 || !strings.HasSuffix(lines[2], ";") {
			t.Fatalf("';' outside comments and quotes at %v: %q", semi, out)
		}
		if d, err := time.Parse(time.RFC1123Z, lines[3][1:]); err != nil || !d.Equal(date) {
			t.Fatalf("date line %q: %v", lines[3], err)
		}
	})
}

// topLevelSemicolons scans an unfolded field value by RFC 5322 rules
// (comments nest, quoted-pairs in comments and quoted strings) and returns
// the offsets of the ';' outside comments and quoted strings. It fails the
// test if a comment or quoted string is left open or closed unopened.
func topLevelSemicolons(t *testing.T, v string) []int {
	t.Helper()
	var semi []int
	depth, quoted := 0, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case (depth > 0 || quoted) && c == '\\':
			i++
		case quoted:
			quoted = c != '"'
		case c == '(':
			depth++
		case c == ')':
			if depth--; depth < 0 {
				t.Fatalf("')' closes no comment at %d: %q", i, v)
			}
		case depth > 0:
		case c == '"':
			quoted = true
		case c == ';':
			semi = append(semi, i)
		}
	}
	if depth != 0 || quoted {
		t.Fatalf("unclosed comment or quoted string: %q", v)
	}
	return semi
}
