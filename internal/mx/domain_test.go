package mx

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestNormalizeDomain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string // want "" means an error
	}{
		{"example.com", "example.com"},
		{"Example.COM.", "example.com"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"localhost", "localhost"},
		{"a-b.c-d.test", "a-b.c-d.test"},
		{"123.example", "123.example"},
		{strings.Repeat("a", 63) + ".test", strings.Repeat("a", 63) + ".test"},
		{"", ""},
		{".", ""},
		{"example.com..", ""},
		{".example.com", ""},
		{"a..b", ""},
		{"-a.test", ""},
		{"a-.test", ""},
		{"a_b.test", ""},
		{"a b.test", ""},
		{"bücher.example", ""},
		{"1.2.3.4", ""},
		{"example.123", ""},
		{"[127.0.0.1]", ""},
		{"a.test\x00", ""},
		{strings.Repeat("a", 64) + ".test", ""},
		{strings.Repeat("abcdefghi.", 25) + "test", ""}, // 254 octets
	} {
		got, err := NormalizeDomain(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("NormalizeDomain(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzNormalizeDomain checks that an accepted domain is canonical: lower
// case, no trailing dot, within the length limits, a fixed point, and
// packable as a DNS name.
func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"example.com", "Example.COM.", "a..b", "xn--bcher-kva.example", "1.2.3.4", "bücher.de", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := NormalizeDomain(s)
		if err != nil {
			return
		}
		if d != strings.ToLower(d) || strings.HasSuffix(d, ".") || len(d) == 0 || len(d) > 253 {
			t.Fatalf("NormalizeDomain(%q) = %q: not canonical", s, d)
		}
		if !strings.EqualFold(d, strings.TrimSuffix(s, ".")) {
			t.Fatalf("NormalizeDomain(%q) = %q: changed more than case and the dot", s, d)
		}
		again, err := NormalizeDomain(d)
		if err != nil || again != d {
			t.Fatalf("NormalizeDomain(%q) = %q, %v: not a fixed point", d, again, err)
		}
		if _, ok := dns.IsDomainName(d); !ok {
			t.Fatalf("NormalizeDomain(%q) = %q: miekg/dns rejects it", s, d)
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(d), dns.TypeMX)
		if _, err := m.Pack(); err != nil {
			t.Fatalf("query for %q does not pack: %v", d, err)
		}
	})
}

// FuzzParseRoute checks that an accepted route has exactly one of an
// address and a valid name, a non-zero port, and a normalised domain.
func FuzzParseRoute(f *testing.F) {
	for _, s := range [][2]string{
		{"a.test", "127.0.0.1:25"}, {"A.Test.", "[::1]:2525"}, {"a.test", "relay.test:587"},
		{"a.test", "relay.test"}, {"a.test", ":25"}, {"a.test", "[fe80::1%lo]:25"}, {"a..test", "x:1"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, domain, host string) {
		rt, err := parseRoute(Route{Domain: domain, Host: host})
		if err != nil {
			return
		}
		if rt.port == 0 {
			t.Fatalf("route %q %q: port 0 accepted", domain, host)
		}
		if rt.addr.IsValid() == (rt.name != "") {
			t.Fatalf("route %q %q: addr %v and name %q", domain, host, rt.addr, rt.name)
		}
		if d, err := NormalizeDomain(rt.domain); err != nil || d != rt.domain {
			t.Fatalf("route %q %q: domain %q not normalised", domain, host, rt.domain)
		}
		if rt.name != "" {
			if n, err := NormalizeDomain(rt.name); err != nil || n != rt.name {
				t.Fatalf("route %q %q: name %q not normalised", domain, host, rt.name)
			}
		}
	})
}

// FuzzFollowChain feeds arbitrary DNS messages (as a server might send) to
// the answer walker: it must not panic, must return only records of the
// asked type owned by the name it stopped at.
func FuzzFollowChain(f *testing.F) {
	seed := new(dns.Msg)
	seed.SetQuestion("a.test.", dns.TypeMX)
	for _, s := range []string{
		"a.test. 60 IN CNAME b.test.",
		"b.test. 60 IN CNAME a.test.",
		"b.test. 60 IN MX 10 mx.b.test.",
		"a.test. 60 IN MX 0 .",
	} {
		rr, err := dns.NewRR(s)
		if err != nil {
			f.Fatal(err)
		}
		seed.Answer = append(seed.Answer, rr)
	}
	packed, err := seed.Pack()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(packed)
	f.Fuzz(func(t *testing.T, b []byte) {
		msg := new(dns.Msg)
		if err := msg.Unpack(b); err != nil {
			return
		}
		rrs, cur, _ := followChain(msg, "a.test.", dns.TypeMX)
		for _, rr := range rrs {
			if rr.Header().Rrtype != dns.TypeMX || dns.CanonicalName(rr.Header().Name) != cur {
				t.Fatalf("followChain returned %v for %s", rr, cur)
			}
			if _, ok := rr.(*dns.MX); !ok {
				t.Fatalf("followChain returned %T as MX", rr)
			}
		}
	})
}
