package mx

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// docNets allows the documentation ranges, which the tests use as stand-ins
// for public addresses: they are only ever resolved, never dialled.
var docNets = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr  string
		class string // "" = usable
		local bool
	}{
		{"127.0.0.1", "loopback", true}, {"127.255.0.9", "loopback", true},
		{"0.0.0.0", "this network", true}, {"0.1.2.3", "this network", true},
		{"255.255.255.255", "limited broadcast", true}, {"224.0.0.1", "multicast", true},
		{"239.1.2.3", "multicast", true}, {"169.254.1.1", "link-local", true},
		{"::1", "loopback", true}, {"::", "unspecified", true}, {"::ffff:127.0.0.1", "loopback", true},
		{"fe80::1", "link-local", true}, {"fe80::1%eth0", "link-local", true},
		{"ff02::1", "multicast", true}, {"ff0e::1", "multicast", true},

		{"10.0.0.1", "private", false}, {"172.16.0.1", "private", false}, {"172.31.255.255", "private", false},
		{"192.168.1.1", "private", false}, {"100.64.0.1", "shared address space", false},
		{"100.127.255.255", "shared address space", false}, {"192.0.0.8", "IETF protocol assignments", false},
		{"192.0.2.1", "documentation", false}, {"198.51.100.7", "documentation", false},
		{"203.0.113.9", "documentation", false}, {"198.18.0.1", "benchmarking", false},
		{"198.19.255.255", "benchmarking", false}, {"192.88.99.1", "deprecated 6to4 relay anycast", false},
		{"240.0.0.1", "reserved", false}, {"255.255.255.254", "reserved", false},
		{"::ffff:10.1.2.3", "private", false}, {"::ffff:192.0.2.1", "documentation", false},
		{"fd00::1", "private (unique local)", false}, {"fc00::1", "private (unique local)", false},
		{"fec0::1", "deprecated site-local", false}, {"100::1", "discard-only", false},
		{"2001:db8::1", "documentation", false}, {"3fff::1", "documentation", false},
		{"2001::1", "IETF protocol assignments", false}, {"2001:2::1", "IETF protocol assignments", false},
		{"64:ff9b:1::1", "local-use NAT64", false},
		{"::127.0.0.1", "reserved (outside 2000::/3)", false}, {"4000::1", "reserved (outside 2000::/3)", false},
		{"5f00::1", "reserved (outside 2000::/3)", false},
		{"64:ff9b::10.1.2.3", "NAT64 of 10.1.2.3 (private)", false},
		{"64:ff9b::127.0.0.1", "NAT64 of 127.0.0.1 (loopback)", false},
		{"64:ff9b::192.168.0.1", "NAT64 of 192.168.0.1 (private)", false},
		{"2002:c0a8:0101::1", "6to4 of 192.168.1.1 (private)", false},

		{"8.8.8.8", "", false}, {"172.32.0.1", "", false}, {"100.128.0.1", "", false},
		{"192.0.3.1", "", false}, {"::ffff:8.8.8.8", "", false}, {"2a00:1450::1", "", false},
		{"64:ff9b::8.8.8.8", "", false}, {"2002:0808:0808::1", "", false}, {"2620:4f:8000::1", "", false},
	} {
		class, local := classify(netip.MustParseAddr(tc.addr))
		if class != tc.class || local != tc.local {
			t.Errorf("classify(%s) = %q, %v; want %q, %v", tc.addr, class, local, tc.class, tc.local)
		}
	}
}

func TestAllowedBy(t *testing.T) {
	t.Parallel()
	nets, err := ParseNetworks([]string{"10.20.0.0/16", "fd00:1::/32"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"10.20.1.1": true, "::ffff:10.20.1.1": true, "64:ff9b::10.20.1.1": true, "2002:0a14:0101::1": true,
		"fd00:1::5": true, "10.21.0.1": false, "fd00:2::1": false, "127.0.0.1": false,
	} {
		if got := allowedBy(nets, netip.MustParseAddr(addr)); got != want {
			t.Errorf("allowedBy(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseNetworks(t *testing.T) {
	t.Parallel()
	got, err := ParseNetworks([]string{"10.0.0.0/8", " fd00::/8 ", "192.0.2.25/32"})
	if err != nil || fmt.Sprint(got) != "[10.0.0.0/8 fd00::/8 192.0.2.25/32]" {
		t.Fatalf("ParseNetworks = %v, %v", got, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.0", `[0] "10.0.0.0": not a CIDR prefix`},
		{"10.0.0.0/33", `[0] "10.0.0.0/33": not a CIDR prefix`},
		{"10.1.2.3/8", `[0] "10.1.2.3/8": has host bits set; the network is 10.0.0.0/8`},
		{"::ffff:10.0.0.0/104", "write an IPv4 network in IPv4 form"},
		{"fe80::/10%eth0", "not a CIDR prefix"},
		{"", `[0] "": not a CIDR prefix`},
	} {
		_, err := ParseNetworks([]string{tc.in})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseNetworks(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
	if _, err := ParseNetworks([]string{"10.0.0.0/8", "x"}); err == nil || !strings.HasPrefix(err.Error(), `[1] "x"`) {
		t.Errorf("second entry bad: %v", err)
	}
}

// TestProhibitedRanges resolves MX hosts whose A/AAAA records are in every
// prohibited class through the test DNS server: the resolver drops them and
// names the address and class in its error, keeps a host's usable
// addresses, and lets delivery.allowed_networks lift a range. Nothing is
// dialled: mx never connects, so no such address is ever reached.
func TestProhibitedRanges(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"private.test. 300 IN MX 10 mx.private.test.",
		"mx.private.test. 300 IN A 10.1.2.3",
		"mx.private.test. 300 IN AAAA fd00::25",
		"shared.test. 300 IN MX 10 mx.shared.test.",
		"mx.shared.test. 300 IN A 100.64.1.1",
		"mapped.test. 300 IN MX 10 mx.mapped.test.",
		"mx.mapped.test. 300 IN AAAA ::ffff:192.168.1.1",
		"nat64.test. 300 IN MX 10 mx.nat64.test.",
		"mx.nat64.test. 300 IN AAAA 64:ff9b::a01:203",
		"reserved.test. 300 IN MX 10 mx.reserved.test.",
		"mx.reserved.test. 300 IN A 240.1.2.3",
		"mx.reserved.test. 300 IN AAAA 100::1",
		"bench.test. 300 IN A 198.18.0.9", // implicit MX
		"mixed.test. 300 IN MX 10 a.mixed.test.",
		"mixed.test. 300 IN MX 20 b.mixed.test.",
		"a.mixed.test. 300 IN A 172.16.5.5",
		"b.mixed.test. 300 IN A 192.168.0.9",
		"b.mixed.test. 300 IN AAAA 2001:db8::9",
	)
	addr := startDNS(t, z)
	strict := newResolver(t, addr, func(o *Options) { o.AllowLoopback = false })
	// AllowLoopback lifts only loopback and the like, never private ranges.
	loopOK := newResolver(t, addr, nil)
	for _, tc := range []struct{ domain, why string }{
		{"private.test", "mx.private.test 10.1.2.3 is private"},
		{"shared.test", "mx.shared.test 100.64.1.1 is shared address space"},
		{"mapped.test", "mx.mapped.test 192.168.1.1 is private"},
		{"nat64.test", "mx.nat64.test 64:ff9b::a01:203 is NAT64 of 10.1.2.3 (private)"},
		{"reserved.test", "mx.reserved.test 240.1.2.3 is reserved"},
		{"bench.test", "198.18.0.9 is benchmarking"},
		{"mixed.test", "a.mixed.test 172.16.5.5 is private"},
	} {
		for _, r := range []*Resolver{strict, loopOK} {
			_, err := r.Lookup(t.Context(), tc.domain)
			wantKind(t, err, KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}, false)
			if err != nil && !strings.Contains(err.Error(), tc.why) {
				t.Errorf("%s: error %q does not say %q", tc.domain, err, tc.why)
			}
		}
	}

	nets, err := ParseNetworks([]string{"10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	allowed := newResolver(t, addr, func(o *Options) { o.AllowLoopback = false; o.AllowedNetworks = nets })
	for domain, want := range map[string]string{
		// The private v6 address stays out: only 10/8 was allowed.
		"private.test": "[mx.private.test 10 [10.1.2.3:25]]",
		"mapped.test":  "[mx.mapped.test 10 [192.168.1.1:25]]",
		"nat64.test":   "[mx.nat64.test 10 [[64:ff9b::a01:203]:25]]",
		"mixed.test":   "[b.mixed.test 20 [192.168.0.9:25 [2001:db8::9]:25]]",
	} {
		hosts, err := allowed.Lookup(t.Context(), domain)
		if err != nil {
			t.Errorf("%s: %v", domain, err)
			continue
		}
		if got := fmt.Sprint(hosts); got != want {
			t.Errorf("%s = %s, want %s", domain, got, want)
		}
	}
	_, err = allowed.Lookup(t.Context(), "shared.test")
	wantKind(t, err, KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}, false)
}

// TestRoutesToPrivate: a static route is the operator's explicit choice of
// destination, so its addresses, literal or resolved, are not filtered
// even without allowed networks.
func TestRoutesToPrivate(t *testing.T) {
	t.Parallel()
	z := newZone(t, "relay.corp.test. 300 IN A 10.9.8.7", "relay.corp.test. 300 IN AAAA fd00::7")
	r := newResolver(t, startDNS(t, z), func(o *Options) {
		o.AllowLoopback = false
		o.Routes = []Route{
			{Domain: "lit.test", Host: "192.168.5.5:25"},
			{Domain: "named.test", Host: "relay.corp.test:2525"},
		}
	})
	for domain, want := range map[string]string{
		"lit.test":   "[192.168.5.5 0 [192.168.5.5:25]]",
		"named.test": "[relay.corp.test 0 [10.9.8.7:2525 [fd00::7]:2525]]",
	} {
		hosts, err := r.Lookup(t.Context(), domain)
		if err != nil {
			t.Fatalf("%s: %v", domain, err)
		}
		if got := fmt.Sprint(hosts); got != want {
			t.Errorf("%s = %s, want %s", domain, got, want)
		}
	}
}

// FuzzClassify checks, for any address, that the IPv4-mapped form of an
// IPv4 address is classified like it, that a NAT64 address is prohibited
// exactly when its embedded address is, and that an allowed network
// containing the address lifts it.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"\x0a\x01\x02\x03", "\x08\x08\x08\x08", "\x7f\x00\x00\x01", "\xff\xff\xff\xff",
		"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
		"\x00\x64\xff\x9b\x00\x00\x00\x00\x00\x00\x00\x00\x0a\x01\x02\x03"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		class, local := classify(a)
		if local && class == "" {
			t.Fatalf("%s: local without a class", a)
		}
		if a.Is4() {
			if c, l := classify(netip.AddrFrom16(a.As16())); c != class || l != local {
				t.Fatalf("%s: mapped form is %q %v, plain %q %v", a, c, l, class, local)
			}
			b4 := a.As4()
			n64 := netip.AddrFrom16([16]byte{0, 0x64, 0xff, 0x9b, 12: b4[0], 13: b4[1], 14: b4[2], 15: b4[3]})
			if c, _ := classify(n64); (c == "") != (class == "") {
				t.Fatalf("%s: NAT64 form %s is %q, plain %q", a, n64, c, class)
			}
		}
		if !allowedBy([]netip.Prefix{netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())}, a) {
			t.Fatalf("%s: not allowed by its own /%d", a, a.Unmap().BitLen())
		}
	})
}

// TestRefusalLoopbackNeedsItsSwitch: loopback and the other local ranges
// are lifted by allow_loopback_mx alone, never by an allowed_networks
// entry, however wide; private ranges are lifted by allowed_networks.
func TestRefusalLoopbackNeedsItsSwitch(t *testing.T) {
	t.Parallel()
	all := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	for _, tc := range []struct {
		addr          string
		allowLoopback bool
		nets          []netip.Prefix
		refused       bool
	}{
		{"127.0.0.1", false, all, true},
		{"127.0.0.1", false, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, true},
		{"::1", false, all, true},
		{"0.0.0.0", false, all, true},
		{"127.0.0.1", true, nil, false},
		{"10.1.2.3", false, all, false},
		{"10.1.2.3", false, nil, true},
		{"10.1.2.3", true, nil, true},
	} {
		got := Refusal(netip.MustParseAddr(tc.addr), tc.allowLoopback, tc.nets)
		if (got != "") != tc.refused {
			t.Errorf("Refusal(%s, loopback %v, %v) = %q, refused want %v", tc.addr, tc.allowLoopback, tc.nets, got, tc.refused)
		}
	}
}
