package inject

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/spool"
)

// mailParams are the MAIL FROM parameters mtad understands.
type mailParams struct {
	size     int64 // SIZE=, 0 = not given
	eightBit bool  // BODY=8BITMIME
	utf8     bool  // SMTPUTF8
	ret      spool.Ret
	envID    string
}

// rcptParams are the RCPT TO parameters (RFC 3461 4).
type rcptParams struct {
	notify spool.Notify // 0 = not given
	orcpt  string       // "addr-type;address", xtext decoded
}

func paramErr(msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: msg}
}

func unknownParam(k string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Unsupported parameter " + quote(k)}
}

// splitParam splits "KEY=value" into the upper-cased key and the value.
func splitParam(p string) (key, val string, hasVal bool) {
	key, val, hasVal = strings.Cut(p, "=")
	return strings.ToUpper(key), val, hasVal
}

// parseMailParams parses the esmtp-params of MAIL (RFC 5321 4.1.2). Each
// parameter may be given once.
func parseMailParams(s string) (mailParams, *smtp.SMTPError) {
	var mp mailParams
	seen := map[string]bool{}
	for _, p := range strings.Fields(s) {
		k, v, hasVal := splitParam(p)
		if seen[k] {
			return mp, paramErr("Duplicate parameter " + quote(k))
		}
		seen[k] = true
		switch k {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if !hasVal || err != nil || n < 0 {
				return mp, paramErr("Bad SIZE parameter")
			}
			mp.size = n
		case "BODY":
			switch strings.ToUpper(v) {
			case "7BIT":
			case "8BITMIME":
				mp.eightBit = true
			case "BINARYMIME":
				// Not offered: RFC 3030 says a server without BINARYMIME
				// refuses it as an unsupported parameter value.
				return mp, &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "BODY=BINARYMIME not supported"}
			default:
				return mp, paramErr("Bad BODY parameter")
			}
		case "SMTPUTF8":
			if hasVal {
				return mp, paramErr("SMTPUTF8 takes no value")
			}
			mp.utf8 = true
		case "RET":
			switch strings.ToUpper(v) {
			case "FULL":
				mp.ret = spool.RetFull
			case "HDRS":
				mp.ret = spool.RetHdrs
			default:
				return mp, paramErr("Bad RET parameter")
			}
		case "ENVID":
			d, ok := xtextDecode(v)
			if !hasVal || !ok || len(d) > 100 || !printableASCII(d) {
				return mp, paramErr("Bad ENVID parameter")
			}
			mp.envID = d
		case "AUTH":
			// RFC 4954 5: accepted and ignored, mtad does not relay the
			// identity on; only its syntax is checked.
			if _, ok := xtextDecode(v); !hasVal || (!ok && v != "<>") {
				return mp, paramErr("Bad AUTH parameter")
			}
		default:
			return mp, unknownParam(k)
		}
	}
	return mp, nil
}

// parseRcptParams parses the RCPT parameters: NOTIFY and ORCPT.
func parseRcptParams(s string, utf8 bool) (rcptParams, *smtp.SMTPError) {
	var rp rcptParams
	seen := map[string]bool{}
	for _, p := range strings.Fields(s) {
		k, v, hasVal := splitParam(p)
		if seen[k] {
			return rp, paramErr("Duplicate parameter " + quote(k))
		}
		seen[k] = true
		switch k {
		case "NOTIFY":
			n, ok := parseNotify(v)
			if !hasVal || !ok {
				return rp, paramErr("Bad NOTIFY parameter")
			}
			rp.notify = n
		case "ORCPT":
			typ, addr, ok := strings.Cut(v, ";")
			var d string
			var okx bool
			if strings.EqualFold(typ, "utf-8") {
				typ = "utf-8"
				d, okx = utf8AddrDecode(addr, utf8)
			} else {
				d, okx = xtextDecode(addr)
			}
			if !hasVal || !ok || !okx || typ == "" || d == "" || len(d) > 500 {
				return rp, paramErr("Bad ORCPT parameter")
			}
			// A utf-8 address may be non-ASCII without SMTPUTF8: its
			// escapes are how RFC 6533 carries it then.
			if !printableASCII(typ) || (!utf8 && typ != "utf-8" && !printableASCII(d)) ||
				strings.ContainsFunc(d, unicode.IsControl) {
				return rp, paramErr("Bad ORCPT parameter")
			}
			rp.orcpt = typ + ";" + d
		default:
			return rp, unknownParam(k)
		}
	}
	return rp, nil
}

// parseNotify parses "NEVER" or a comma list of SUCCESS, FAILURE, DELAY
// (RFC 3461 4.1: NEVER must appear alone).
func parseNotify(v string) (spool.Notify, bool) {
	if strings.EqualFold(v, "NEVER") {
		return spool.NotifyNever, true
	}
	var n spool.Notify
	for _, w := range strings.Split(v, ",") {
		var bit spool.Notify
		switch strings.ToUpper(w) {
		case "SUCCESS":
			bit = spool.NotifySuccess
		case "FAILURE":
			bit = spool.NotifyFailure
		case "DELAY":
			bit = spool.NotifyDelay
		default:
			return 0, false
		}
		if n&bit != 0 {
			return 0, false
		}
		n |= bit
	}
	return n, n != 0
}

// xtextDecode decodes RFC 3461 4 xtext: printable ASCII but '+' and '=',
// with "+XX" (upper-case hex) for any octet.
func xtextDecode(s string) (string, bool) {
	if strings.IndexByte(s, '+') < 0 {
		for i := 0; i < len(s); i++ {
			if s[i] < 33 || s[i] > 126 || s[i] == '=' {
				return "", false
			}
		}
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) || !upperHex(s[i+1]) || !upperHex(s[i+2]) {
				return "", false
			}
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
		case c < 33 || c > 126 || c == '=':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// utf8AddrDecode decodes an ORCPT address of type utf-8 (RFC 6533 3):
// utf-8-addr-xtext, ASCII with "\x{HEX}" for any other character, or in
// an SMTPUTF8 transaction (unitext) utf-8-addr-unitext, which may also
// hold UTF-8 as it is. '+', '=' and '\' appear only escaped.
func utf8AddrDecode(s string, unitext bool) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			rest, ok := strings.CutPrefix(s[i+1:], "x{")
			end := strings.IndexByte(rest, '}')
			if !ok || end < 1 || end > 6 {
				return "", false
			}
			v, err := strconv.ParseUint(rest[:end], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return "", false
			}
			b.WriteRune(rune(v))
			i += 1 + 2 + end + 1
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRuneInString(s[i:])
			if !unitext || r == utf8.RuneError {
				return "", false
			}
			b.WriteString(s[i : i+n])
			i += n
		case c < 33 || c > 126 || c == '+' || c == '=':
			return "", false
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), true
}

func upperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 32 || s[i] > 126 {
			return false
		}
	}
	return true
}
