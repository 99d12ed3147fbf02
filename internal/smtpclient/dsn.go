package smtpclient

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxEnvID is RFC 3461 §4.4's limit on ENVID: 100 characters.
const maxEnvID = 100

// appendXtext appends s as xtext (RFC 3461 §4): printable ASCII except
// "+" and "=" as it is, every other octet as "+" and two upper-case hex
// digits.
func appendXtext(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch > ' ' && ch < 0x7f && ch != '+' && ch != '=' {
			b = append(b, ch)
			continue
		}
		b = append(b, '+', hex[ch>>4], hex[ch&0xf])
	}
	return b
}

// AppendUTF8AddrXtext appends addr as RFC 6533's utf-8-addr-xtext: a
// character that xtext would escape ("+", "=", "\", space, controls) and
// every non-ASCII one as "\x{HEX}" of its code point. It is pure ASCII, so
// it is also valid utf-8-addr-unitext in an SMTPUTF8 transaction.
func AppendUTF8AddrXtext(b []byte, addr string) []byte {
	for _, r := range addr {
		if r > ' ' && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b = append(b, byte(r))
			continue
		}
		b = append(b, `\x{`...)
		if r < 0x10 {
			b = append(b, '0') // HEXPOINT has two digits at least
		}
		b = append(b, strings.ToUpper(strconv.FormatInt(int64(r), 16))...)
		b = append(b, '}')
	}
	return b
}

// appendRcptDSN appends a recipient's NOTIFY and ORCPT parameters, each
// only when it is well formed (a value the spool holds was checked at
// injection; one that is not is dropped rather than sent malformed).
func appendRcptDSN(b []byte, d RcptDSN) []byte {
	if d.Notify != "" && validNotify(d.Notify) {
		b = append(b, " NOTIFY="...)
		b = append(b, d.Notify...)
	}
	if d.ORcpt == "" {
		return b
	}
	typ, addr, ok := strings.Cut(d.ORcpt, ";")
	if !ok || addr == "" || !validAddrType(typ) || !utf8.ValidString(addr) {
		return b
	}
	switch {
	case strings.EqualFold(typ, "utf-8") || !isASCII(addr):
		// RFC 6533 §3: an address that is not ASCII is of type utf-8,
		// whatever it was called when it came in.
		b = append(b, " ORCPT=utf-8;"...)
		return AppendUTF8AddrXtext(b, addr)
	default:
		b = append(b, " ORCPT="...)
		b = append(b, typ...)
		b = append(b, ';')
		return appendXtext(b, addr)
	}
}

// validNotify reports whether s is "NEVER" or a list of distinct SUCCESS,
// FAILURE and DELAY (RFC 3461 §4.1).
func validNotify(s string) bool {
	if s == "NEVER" {
		return true
	}
	seen := 0
	for _, k := range strings.Split(s, ",") {
		bit := 0
		switch k {
		case "SUCCESS":
			bit = 1
		case "FAILURE":
			bit = 2
		case "DELAY":
			bit = 4
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

// validAddrType reports whether s is an RFC 3461 addr-type: an atom of
// letters, digits and "-" (rfc822, utf-8, x400, ...).
func validAddrType(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// printableASCII reports whether s is all printable US-ASCII, as RFC 3461
// §4.4 requires of ENVID.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
