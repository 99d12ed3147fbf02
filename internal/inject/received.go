package inject

import (
	"net/netip"
	"time"
	"unicode"
	"unicode/utf8"
)

// traceInfo is what the Received field (RFC 5321 4.4) records about one
// transaction.
type traceInfo struct {
	helo  string     // the EHLO/HELO argument as the client sent it
	smtp  bool       // the client greeted with HELO, not EHLO
	ip    netip.Addr // the client's address; the zero Addr if unknown
	host  string     // our own name, passed through traceToken already
	tls   bool       // the session is under STARTTLS
	auth  bool       // the client authenticated
	utf8  bool       // an SMTPUTF8 transaction (RFC 6531)
	id    string     // the queue id
	from  string     // the canonical reverse-path, "" for the null sender
	rcpts []string   // the canonical recipients
	date  time.Time
}

// maxTraceToken bounds the HELO name and our hostname in the field: a domain
// is at most 255 octets, and a HELO argument may be far longer.
const maxTraceToken = maxDomain

// appendReceived appends the Received field to dst, folded as
//
//	Received: from HELO (unknown [IP])
//		by HOST (mtad) with PROTOCOL id ID
//		(envelope-from <SENDER>) for <RCPT>;
//		DATE
//
// with "for" only when there is exactly one recipient: every recipient
// gets the same body, so naming one of several would be wrong for the rest
// and naming all would show each one the others (Bcc included). "unknown"
// stands for the reverse DNS name, which mtad does not look up.
//
// The HELO argument is client-supplied and is anything up to the
// first space (bare CR, parentheses, ';', non-ASCII), so it passes through
// traceToken. The addresses have passed checkAddress; in the comment their
// '(' ')' '\' become quoted-pairs so the comment cannot end early, and any
// control character (or non-ASCII outside SMTPUTF8) is replaced, as a
// second line of defence. Each line stays far below 998 octets: HELO and
// host are bounded here and addresses by maxPath.
func appendReceived(dst []byte, t traceInfo) []byte {
	dst = append(dst, "Received: from "...)
	dst = appendTraceToken(dst, t.helo)
	dst = append(dst, " (unknown"...)
	if t.ip.IsValid() {
		dst = append(dst, " ["...)
		if t.ip.Is6() {
			dst = append(dst, "IPv6:"...) // RFC 5321 4.1.3 address literal
		}
		dst = t.ip.AppendTo(dst)
		dst = append(dst, ']')
	}
	dst = append(dst, ")\r\n\tby "...)
	dst = appendTraceToken(dst, t.host)
	dst = append(dst, " (mtad) with "...)
	if t.smtp {
		dst = append(dst, "SMTP"...) // HELO: no extensions, so no S, A or UTF8
	} else {
		dst = append(dst, withProtocol(t.utf8, t.tls, t.auth)...)
	}
	dst = append(dst, " id "...)
	dst = appendTraceToken(dst, t.id)
	dst = append(dst, "\r\n\t(envelope-from <"...)
	dst = appendTraceAddr(dst, t.from, t.utf8, true)
	dst = append(dst, ">)"...)
	if len(t.rcpts) == 1 {
		dst = append(dst, " for <"...)
		dst = appendTraceAddr(dst, t.rcpts[0], t.utf8, false)
		dst = append(dst, '>')
	}
	dst = append(dst, ";\r\n\t"...)
	dst = t.date.AppendFormat(dst, time.RFC1123Z)
	return append(dst, "\r\n"...)
}

// withProtocol is the "with" keyword after EHLO: ESMTP, or UTF8SMTP for an
// SMTPUTF8 transaction (RFC 6531 3.7.3), with S for TLS and A for AUTH (RFC
// 3848). After HELO it is plain SMTP (appendReceived).
func withProtocol(utf8, tls, auth bool) string {
	p := "ESMTP"
	if utf8 {
		p = "UTF8SMTP"
	}
	if tls {
		p += "S"
	}
	if auth {
		p += "A"
	}
	return p
}

// traceToken returns v as appendTraceToken writes it.
func traceToken(v string) string { return string(appendTraceToken(nil, v)) }

// appendTraceToken appends v, cut to maxTraceToken octets, keeping only the
// characters of a domain name or address literal (letters, digits, "-._:[]")
// and writing '?' for any other octet. A valid HELO is written unchanged;
// an invalid one cannot fold the line, open a comment or quoted string, or
// supply the ';' that precedes the date. "" becomes "unknown".
func appendTraceToken(dst []byte, v string) []byte {
	if v == "" {
		return append(dst, "unknown"...)
	}
	if len(v) > maxTraceToken {
		v = v[:maxTraceToken]
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']' {
			dst = append(dst, c)
		} else {
			dst = append(dst, '?')
		}
	}
	return dst
}

// appendTraceAddr appends a canonical address, with '(' ')' '\' escaped
// when it goes inside a comment. Printable ASCII and space are kept (a
// quoted local part may hold any of them); non-ASCII is kept only for
// SMTPUTF8, where RFC 6532 allows UTF-8 in header fields, and then only
// printable runes, so no NEL, line separator or bidi control slips in.
// Anything else is written as '?'.
func appendTraceAddr(dst []byte, a string, utf8OK, comment bool) []byte {
	for i := 0; i < len(a); {
		c := a[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c < ' ' || c == 0x7f:
				dst = append(dst, '?')
			case comment && (c == '(' || c == ')' || c == '\\'):
				dst = append(dst, '\\', c)
			default:
				dst = append(dst, c)
			}
			continue
		}
		r, n := utf8.DecodeRuneInString(a[i:])
		if utf8OK && r != utf8.RuneError && unicode.IsPrint(r) {
			dst = append(dst, a[i:i+n]...)
		} else {
			dst = append(dst, '?')
		}
		i += n
	}
	return dst
}
