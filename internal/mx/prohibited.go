package mx

import (
	"fmt"
	"net/netip"
	"strings"
)

// Prohibited destinations. An MX host is whatever a domain's owner writes in
// its zone, so a hostile or careless domain can point mtad at this machine,
// at the sender's own private network (an SSRF: mtad speaking SMTP to an
// internal service), or at addresses that reach nothing. Every address found
// in DNS or in an address literal is classified here; one that is not global
// unicast is refused as KindProhibitedIP unless it is in the operator's
// allowed networks.
//
// The classes follow the IANA IPv4 and IPv6 Special-Purpose Address
// Registries (RFC 6890 and its updates), refusing every entry whose
// "Globally Reachable" is false or N/A, and, for IPv6, everything outside
// 2000::/3, the only block IANA allocates global unicast from. Where a
// registry entry has globally reachable sub-blocks (192.0.0.9/32 in
// 192.0.0.0/24, a few in 2001::/23) the whole entry is refused: no mail
// exchanger lives there.
//
// Addresses that embed an IPv4 address are judged by it as well:
// IPv4-mapped ::ffff:a.b.c.d is the IPv4 address itself (the resolver
// unmaps it), NAT64 64:ff9b::/96 (RFC 6052) reaches the embedded address
// through the translator, and 6to4 2002:AABB:CCDD::/48 (RFC 3056) reaches
// the embedded relay.

// special is one address block and the name of its class, used in errors.
type special struct {
	prefix netip.Prefix
	class  string
}

// local4 and local6 are the classes refused since the first version: they
// reach this machine, nothing, or everything. AllowLoopback (tests on one
// machine) lifts exactly these, as it always did.
var (
	local4 = []special{
		{netip.MustParsePrefix("255.255.255.255/32"), "limited broadcast"},
		{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
		{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
		{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
		{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	}
	local6 = []special{
		{netip.MustParsePrefix("::/128"), "unspecified"},
		{netip.MustParsePrefix("::1/128"), "loopback"},
		{netip.MustParsePrefix("fe80::/10"), "link-local"},
		{netip.MustParsePrefix("ff00::/8"), "multicast"},
	}
	// other4 and other6 are the rest of the special-purpose registries;
	// only delivery.allowed_networks lifts them.
	other4 = []special{
		{netip.MustParsePrefix("10.0.0.0/8"), "private"},
		{netip.MustParsePrefix("172.16.0.0/12"), "private"},
		{netip.MustParsePrefix("192.168.0.0/16"), "private"},
		{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
		{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
		{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
		{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
		{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
		{netip.MustParsePrefix("192.88.99.0/24"), "deprecated 6to4 relay anycast"},
		{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	}
	other6 = []special{
		{netip.MustParsePrefix("fc00::/7"), "private (unique local)"},
		{netip.MustParsePrefix("fec0::/10"), "deprecated site-local"},
		{netip.MustParsePrefix("100::/64"), "discard-only"},
		{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
		{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
		{netip.MustParsePrefix("3fff::/20"), "documentation"},
		{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments"},
	}
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	global6   = netip.MustParsePrefix("2000::/3")
)

// classify returns the class of a prohibited address ("" when a is global
// unicast) and whether it is of the local classes AllowLoopback lifts.
func classify(a netip.Addr) (class string, local bool) {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return "invalid", false
	}
	locals, others := local4, other4
	if a.Is6() {
		locals, others = local6, other6
	}
	for _, s := range locals {
		if s.prefix.Contains(a) {
			return s.class, true
		}
	}
	for _, s := range others {
		if s.prefix.Contains(a) {
			return s.class, false
		}
	}
	if a.Is4() {
		return "", false
	}
	if v4, via, ok := embedded4(a); ok {
		if c, _ := classify(v4); c != "" {
			return via + " of " + v4.String() + " (" + c + ")", false
		}
		return "", false
	}
	if !global6.Contains(a) {
		return "reserved (outside 2000::/3)", false
	}
	return "", false
}

// embedded4 returns the IPv4 address a NAT64 or 6to4 address reaches.
func embedded4(a netip.Addr) (netip.Addr, string, bool) {
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:16])), "NAT64", true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), "6to4", true
	}
	return netip.Addr{}, "", false
}

// Refusal says why mtad must not connect to a ("10.1.2.3 is private"),
// or returns "" when it may: an address outside global unicast is refused
// unless allowLoopback lifts its class (the local ones: loopback,
// link-local, ...) or it is in allowed (delivery.allowed_networks). The
// resolver judges MX addresses by it, and internal/tlspolicy the MTA-STS
// policy host's, which a domain's owner names just as freely.
func Refusal(a netip.Addr, allowLoopback bool, allowed []netip.Prefix) string {
	class, local := classify(a)
	switch {
	case class == "":
		return ""
	case local:
		// Loopback, unspecified, link-local, multicast and broadcast are
		// lifted by allow_loopback_mx alone: an allowed_networks entry
		// as wide as 0.0.0.0/0 must not make mtad mail itself.
		if allowLoopback {
			return ""
		}
	case allowedBy(allowed, a):
		return ""
	}
	return a.String() + " is " + class
}

// allowedBy reports whether a, or the IPv4 address it embeds, is inside one
// of nets.
func allowedBy(nets []netip.Prefix, a netip.Addr) bool {
	if len(nets) == 0 {
		return false
	}
	a = a.Unmap().WithZone("")
	v4, _, embeds := embedded4(a)
	for _, p := range nets {
		if p.Contains(a) || (embeds && p.Contains(v4)) {
			return true
		}
	}
	return false
}

// ParseNetworks parses the CIDR prefixes of delivery.allowed_networks. A
// prefix must be in canonical form (no host bits set: "10.1.0.0/16", not
// "10.1.2.3/16", which is more likely a typo than a wish) and an IPv4
// network is written in IPv4 form, not as ::ffff:a.b.c.d/n. Errors name the
// entry by index.
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for i, s := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("[%d] %q: not a CIDR prefix (like 10.0.0.0/8 or fd00::/8): %w", i, s, err)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("[%d] %q: write an IPv4 network in IPv4 form", i, s)
		}
		if m := p.Masked(); m != p {
			return nil, fmt.Errorf("[%d] %q: has host bits set; the network is %s", i, s, m)
		}
		out = append(out, p)
	}
	return out, nil
}
