package inject

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"
)

// addrKind says which envelope address is checked; the enhanced codes
// differ (RFC 3463: X.1.7 for the sender, X.1.3 for a recipient).
type addrKind int

const (
	senderAddr addrKind = iota
	recipientAddr
)

// Limits from RFC 5321 4.5.3.1.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxPath      = 254 // the 256-octet path less its angle brackets
)

// checkAddress checks a mailbox that go-smtp's parser accepted (it has a
// non-empty local part, an '@' and a non-empty domain, and quoted local
// parts arrive unquoted) and returns it in canonical form: the local part
// re-quoted when it is not a dot-atom, so the scheduler can send it as is.
//
// The decision between the two refusals:
//   - 501 X.1.y "Bad ... address syntax": the address itself is not a
//     mailbox: control characters, invalid UTF-8, over-long parts.
//   - 553 X.1.y "... address rejected: invalid domain": a well-formed
//     mailbox whose domain is not a host name or address literal mtad could
//     ever deliver to (bad label, trailing dot, numeric TLD, bad literal).
//   - 553 5.6.7: a non-ASCII address without SMTPUTF8 (RFC 6531 3.5).
func checkAddress(addr string, smtputf8 bool, kind addrKind) (string, *smtp.SMTPError) {
	syntaxErr := &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	domainErr := func(d string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Recipient address rejected: invalid domain " + quote(d)}
	}
	if kind == senderAddr {
		syntaxErr = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
		domainErr = func(d string) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Sender address rejected: invalid domain " + quote(d)}
		}
	}
	needUTF8 := &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "Non-ASCII address requires SMTPUTF8"}

	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", syntaxErr
	}
	local, domain := addr[:at], addr[at+1:]
	if len(local) > maxLocalPart || !utf8.ValidString(addr) {
		return "", syntaxErr
	}
	ascii := true
	for _, c := range []byte(local) {
		if c < 32 || c == 127 {
			return "", syntaxErr
		}
		if c >= 128 {
			ascii = false
		}
	}
	if !ascii && !smtputf8 {
		return "", needUTF8
	}

	if strings.HasPrefix(domain, "[") {
		if !validAddressLiteral(domain) {
			return "", domainErr(domain)
		}
	} else {
		asciiDomain := domain
		if !isASCII(domain) {
			if !smtputf8 {
				return "", needUTF8
			}
			a, err := idna.Lookup.ToASCII(domain)
			if err != nil {
				return "", domainErr(domain)
			}
			asciiDomain = a
		}
		if !validHostname(asciiDomain) {
			return "", domainErr(domain)
		}
	}

	canon := quoteLocal(local) + "@" + domain
	if len(canon) > maxPath {
		return "", syntaxErr
	}
	return canon, nil
}

// validHostname: LDH labels of 1-63 octets, no hyphen at either end, at
// most 253 octets, no trailing dot, and a top label that is not all digits
// (that would be an IPv4 address written without brackets).
func validHostname(d string) bool {
	if len(d) == 0 || len(d) > maxDomain-2 {
		return false
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	top := labels[len(labels)-1]
	return strings.Trim(top, "0123456789") != ""
}

// validAddressLiteral accepts "[1.2.3.4]" and "[IPv6:...]" (RFC 5321 4.1.3).
func validAddressLiteral(d string) bool {
	if len(d) < 3 || d[0] != '[' || d[len(d)-1] != ']' {
		return false
	}
	inner := d[1 : len(d)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		return err == nil && ip.Is6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(inner)
	return err == nil && ip.Is4()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 128 {
			return false
		}
	}
	return true
}

// quoteLocal returns local as a dot-atom if it is one, else as an RFC 5321
// quoted string. Non-ASCII octets count as atext (RFC 6531 extends atext).
func quoteLocal(local string) string {
	if isDotAtom(local) {
		return local
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(local) {
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, c := range []byte(s) {
		if c >= 128 || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", rune(c)) {
			return false
		}
	}
	return true
}

// errPathSyntax is a MAIL/RCPT argument that is not "<path> [params]".
var errPathSyntax = errorString("path syntax")

type errorString string

func (e errorString) Error() string { return string(e) }

// parsePath splits the argument after "FROM:" or "TO:" into the mailbox and
// the parameter text. The path is "<>" (returned as "") or "<mailbox>",
// optionally preceded by a source route "@a,@b:" that RFC 5321 4.1.2 says
// to ignore. A quoted local part is returned unquoted (checkAddress quotes
// it again in canonical form); its quoted-pairs are undone. Spaces before
// '<' are tolerated, as many clients send "MAIL FROM: <a@b>".
func parsePath(arg string) (addr, params string, err error) {
	arg = strings.TrimLeft(arg, " ")
	if len(arg) == 0 || arg[0] != '<' {
		return "", "", errPathSyntax
	}
	i := 1
	if i < len(arg) && arg[i] == '@' { // a source route: up to ':'
		c := strings.IndexByte(arg, ':')
		if c < 0 {
			return "", "", errPathSyntax
		}
		i = c + 1
	}
	var b strings.Builder
	quoted, closed := false, false
	for ; i < len(arg); i++ {
		c := arg[i]
		if quoted {
			switch c {
			case '\\':
				if i+1 >= len(arg) {
					return "", "", errPathSyntax
				}
				i++
				b.WriteByte(arg[i])
			case '"':
				quoted = false
			default:
				b.WriteByte(c)
			}
			continue
		}
		if c == '"' {
			quoted = true
			continue
		}
		if c == '>' {
			closed = true
			break
		}
		if c == '<' || c == ' ' {
			return "", "", errPathSyntax
		}
		b.WriteByte(c)
	}
	if !closed {
		return "", "", errPathSyntax
	}
	rest := arg[i+1:]
	if rest != "" && rest[0] != ' ' {
		return "", "", errPathSyntax
	}
	return b.String(), strings.TrimLeft(rest, " "), nil
}

// isAddressLiteral reports whether a checked address's domain is an
// address literal ("[192.0.2.1]", "[IPv6:...]").
func isAddressLiteral(addr string) bool {
	return strings.HasSuffix(addr, "]") && strings.Contains(addr[strings.LastIndexByte(addr, '@')+1:], "[")
}

// dedupKey is the form in which two recipients are the same mailbox: the
// local part exact (RFC 5321 2.4: it may be case-sensitive), the domain
// case-insensitive.
func dedupKey(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr
	}
	return addr[:at+1] + strings.ToLower(addr[at+1:])
}
