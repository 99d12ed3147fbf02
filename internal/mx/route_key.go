package mx

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// Canonical returns the form of a recipient domain that mail is routed by:
// the scheduler's queue key and what Lookup resolves.
//
//   - An address literal (RFC 5321 §4.1.3) keeps its brackets and is
//     rewritten in one spelling per address, "[192.0.2.1]" or
//     "[IPv6:2001:db8::1]", so "[IPv6:2001:DB8:0::1]" and
//     "[ipv6:2001:db8::1]" share one queue.
//   - An internationalised domain (any non-ASCII octet) becomes its A-label
//     by UTS #46 with the Lookup profile (the mapping browsers and other
//     MTAs use for look-ups), so "Bücher.example" is routed as
//     "xn--bcher-kva.example". The address itself is sent as written: only
//     the route changes.
//   - Every domain is then checked by NormalizeDomain (lower case, no
//     trailing dot, LDH labels within the length limits).
//
// Its errors say what is wrong with the domain; they are permanent (the
// domain will never become routable by retrying).
func Canonical(domain string) (string, error) {
	if IsLiteral(domain) {
		a, err := ParseLiteral(domain)
		if err != nil {
			return "", err
		}
		return FormatLiteral(a), nil
	}
	d := strings.TrimSuffix(domain, ".")
	if !isASCII(d) {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return "", fmt.Errorf("domain %q is not a valid internationalised domain name: %w", domain, err)
		}
		d = a
	}
	return NormalizeDomain(d)
}

// IsLiteral reports whether a domain is written as an address literal: it
// starts with '['. Whether the literal is well formed is ParseLiteral's
// business.
func IsLiteral(domain string) bool { return strings.HasPrefix(domain, "[") }

// ParseLiteral parses an RFC 5321 §4.1.3 address literal: "[192.0.2.1]"
// (a dotted quad, no leading zeros) or "[IPv6:2001:db8::1]" (the tag in any
// case). Any other tag, an IPv6 address without the tag, an IPv4 one with
// it, and a zone are refused. An IPv4-mapped IPv6 literal stays IPv6, as
// written.
func ParseLiteral(s string) (netip.Addr, error) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, fmt.Errorf("address literal %q is not enclosed in brackets", s)
	}
	inner := s[1 : len(s)-1]
	if tag, rest, ok := strings.Cut(inner, ":"); ok && !strings.Contains(tag, ".") {
		if tag == "" {
			return netip.Addr{}, fmt.Errorf("address literal %q: an IPv6 address needs the IPv6: tag", s)
		}
		if !strings.EqualFold(tag, "IPv6") {
			return netip.Addr{}, fmt.Errorf("address literal %q: tag %q is not IPv6", s, tag)
		}
		a, err := netip.ParseAddr(rest)
		switch {
		case err != nil:
			return netip.Addr{}, fmt.Errorf("address literal %q: %w", s, err)
		case !a.Is6():
			return netip.Addr{}, fmt.Errorf("address literal %q: %s is not an IPv6 address", s, rest)
		case a.Zone() != "":
			return netip.Addr{}, fmt.Errorf("address literal %q: a zone is not allowed", s)
		}
		return a, nil
	}
	a, err := netip.ParseAddr(inner)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address literal %q: %w", s, err)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("address literal %q: an IPv6 address needs the IPv6: tag", s)
	}
	return a, nil
}

// FormatLiteral writes a as the canonical address literal ParseLiteral
// reads back.
func FormatLiteral(a netip.Addr) string {
	if a.Is4() {
		return "[" + a.String() + "]"
	}
	return "[IPv6:" + a.String() + "]"
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
