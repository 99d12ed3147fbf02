package inject

import (
	"bytes"
	"strings"
	"testing"
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
