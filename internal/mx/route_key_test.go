package mx

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

func TestCanonical(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string // want "" means an error
	}{
		{"example.com", "example.com"},
		{"Example.COM.", "example.com"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"Bücher.Example.", "xn--bcher-kva.example"},
		{"BÜCHER.example", "xn--bcher-kva.example"},
		{"bücher。example", "xn--bcher-kva.example"}, // UTS #46 maps the ideographic full stop
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"例え.テスト", "xn--r8jz45g.xn--zckzah"},
		{"[192.0.2.1]", "[192.0.2.1]"},
		{"[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"},
		{"[ipv6:2001:db8::1]", "[IPv6:2001:db8::1]"},
		{"[IPv6:::ffff:192.0.2.1]", "[IPv6:::ffff:192.0.2.1]"},
		{"", ""},
		{"bü_cher.example", ""},      // STD3 rules: no underscore
		{"-bücher.example", ""},      // hyphen at a label's start
		{"bücher..example", ""},      // empty label
		{"\u200dbücher.example", ""}, // a joiner where CONTEXTJ forbids it
		{"[192.0.2.1", ""},
		{"[192.0.2.01]", ""},
		{"[2001:db8::1]", ""},
		{"[IPv6:192.0.2.1]", ""},
		{"[IPv6:fe80::1%eth0]", ""},
		{"[x-tag:whatever]", ""},
		{"[]", ""},
		{"1.2.3.4", ""},
	} {
		got, err := Canonical(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("Canonical(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Canonical(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzCanonical checks that a canonical domain is a fixed point, is ASCII,
// and is either a literal that parses back to the same address or a name
// NormalizeDomain accepts unchanged and the DNS library can pack.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{"bücher.example", "Example.COM.", "[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:1.2.3.4]", "xn--bcher-kva.example", "[", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Canonical(s)
		if err != nil {
			return
		}
		if !isASCII(d) {
			t.Fatalf("Canonical(%q) = %q: not ASCII", s, d)
		}
		again, err := Canonical(d)
		if err != nil || again != d {
			t.Fatalf("Canonical(%q) = %q, but Canonical(%q) = %q, %v", s, d, d, again, err)
		}
		if IsLiteral(d) {
			a, err := ParseLiteral(d)
			if err != nil || FormatLiteral(a) != d {
				t.Fatalf("literal %q from %q does not parse back: %v %v", d, s, a, err)
			}
			return
		}
		if n, err := NormalizeDomain(d); err != nil || n != d {
			t.Fatalf("Canonical(%q) = %q, not normalised: %q %v", s, d, n, err)
		}
		if _, ok := dns.IsDomainName(d); !ok {
			t.Fatalf("Canonical(%q) = %q: not a DNS name", s, d)
		}
	})
}

// TestLookupIDNByALabel: a U-label domain is looked up by its A-label, and
// that is the only name the DNS is asked about.
func TestLookupIDNByALabel(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"xn--bcher-kva.example. 300 IN MX 10 mx.xn--bcher-kva.example.",
		"mx.xn--bcher-kva.example. 300 IN A 127.0.0.9",
	)
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "Bücher.example")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.xn--bcher-kva.example 10 [127.0.0.9:25]]" {
		t.Fatalf("hosts = %s", got)
	}
	if n := z.count("xn--bcher-kva.example", dns.TypeMX); n != 1 {
		t.Errorf("A-label MX queried %d times, want 1", n)
	}
	if n, all := z.count("bücher.example", dns.TypeMX), z.total(); n != 0 || all != 3 {
		t.Errorf("U-label queried %d times, %d queries in all (want MX + A + AAAA)", n, all)
	}
	// A name that is no IDN is refused before any query.
	before := z.total()
	_, err = r.Lookup(t.Context(), "bü_cher.example")
	wantKind(t, err, KindBadDomain, smtp.EnhancedCode{5, 1, 2}, false)
	if z.total() != before {
		t.Errorf("a bad IDN was queried")
	}
}

// TestLookupAddressLiteral: a literal is its own one host on the MX port,
// with no DNS query, and the prohibited-address rule applies to it as to a
// DNS answer. 192.0.2.1 (TEST-NET-1) is only resolved, never dialled.
func TestLookupAddressLiteral(t *testing.T) {
	t.Parallel()
	z := newZone(t)
	addr := startDNS(t, z)
	allow := newResolver(t, addr, func(o *Options) { o.Port = 2525 })
	strict := newResolver(t, addr, func(o *Options) { o.Port = 2525; o.AllowLoopback = false })
	docs := newResolver(t, addr, func(o *Options) { o.Port = 2525; o.AllowLoopback = false; o.AllowedNetworks = docNets })

	for _, tc := range []struct {
		r      *Resolver
		domain string
		want   string // hosts, or "" for an error of kind k
		k      Kind
		enh    smtp.EnhancedCode
	}{
		{allow, "[127.0.0.1]", "[127.0.0.1 0 [127.0.0.1:2525]]", 0, smtp.EnhancedCode{}},
		{allow, "[IPv6:::1]", "[::1 0 [[::1]:2525]]", 0, smtp.EnhancedCode{}},
		{docs, "[192.0.2.1]", "[192.0.2.1 0 [192.0.2.1:2525]]", 0, smtp.EnhancedCode{}},
		{docs, "[IPv6:2001:DB8::1]", "[2001:db8::1 0 [[2001:db8::1]:2525]]", 0, smtp.EnhancedCode{}},
		{strict, "[192.0.2.1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[10.1.2.3]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{docs, "[10.1.2.3]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[IPv6:64:ff9b::10.1.2.3]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{allow, "[IPv6:fd00::1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[127.0.0.1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[IPv6:::1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[IPv6:::ffff:127.0.0.1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[0.0.0.0]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{strict, "[224.0.0.1]", "", KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}},
		{allow, "[127.0.0.256]", "", KindBadDomain, smtp.EnhancedCode{5, 1, 2}},
		{allow, "[::1]", "", KindBadDomain, smtp.EnhancedCode{5, 1, 2}},
		{allow, "[IPv6:127.0.0.1]", "", KindBadDomain, smtp.EnhancedCode{5, 1, 2}},
		{allow, "[127.0.0.1", "", KindBadDomain, smtp.EnhancedCode{5, 1, 2}},
		{allow, "[future:x]", "", KindBadDomain, smtp.EnhancedCode{5, 1, 2}},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			hosts, err := tc.r.Lookup(t.Context(), tc.domain)
			if tc.want == "" {
				wantKind(t, err, tc.k, tc.enh, false)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(hosts); got != tc.want {
				t.Fatalf("hosts = %s, want %s", got, tc.want)
			}
		})
	}
	if n := z.total(); n != 0 {
		t.Errorf("address literals made %d DNS queries, want none", n)
	}
}

func TestParseLiteralRoundTrip(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "::1", "fe80::1"} {
		a := netip.MustParseAddr(s)
		b, err := ParseLiteral(FormatLiteral(a))
		if err != nil || b != a {
			t.Errorf("%s: FormatLiteral %q parses back as %v, %v", s, FormatLiteral(a), b, err)
		}
		if !strings.HasPrefix(FormatLiteral(a), "[") {
			t.Errorf("%s: %q", s, FormatLiteral(a))
		}
	}
}
