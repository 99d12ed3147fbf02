package mx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/outcome"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// wantKind checks that err is an *Error of kind k whose outcome is in the
// DNS phase with the given enhanced code and temporariness.
func wantKind(t *testing.T, err error, k Kind, enh smtp.EnhancedCode, temp bool) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", k)
	}
	if got := KindOf(err); got != k {
		t.Fatalf("KindOf(%v) = %v, want %v", err, got, k)
	}
	o := outcome.As(err)
	if o == nil {
		t.Fatalf("outcome.As(%v) = nil", err)
	}
	if o.Phase != outcome.PhaseDNS || o.Enhanced != enh || o.Temporary != temp {
		t.Fatalf("outcome = phase %s enhanced %v temporary %v, want dns %v %v", o.Phase, o.Enhanced, o.Temporary, enh, temp)
	}
	if outcome.IsTemporary(err) != temp {
		t.Fatalf("outcome.IsTemporary(%v) = %v", err, !temp)
	}
}

func TestPreferenceOrder(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"pref.test. 300 IN MX 20 b.pref.test.",
		"pref.test. 300 IN MX 10 a.pref.test.",
		"pref.test. 300 IN MX 30 c.pref.test.",
		"a.pref.test. 300 IN A 127.0.0.1",
		"b.pref.test. 300 IN A 127.0.0.2",
		"c.pref.test. 300 IN A 127.0.0.3",
	)
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Port = 2525 })
	// Case and a trailing dot do not matter.
	hosts, err := r.Lookup(t.Context(), "PREF.Test.")
	if err != nil {
		t.Fatal(err)
	}
	want := []Host{
		{Name: "a.pref.test", Pref: 10, Addrs: []netip.AddrPort{ap("127.0.0.1:2525")}},
		{Name: "b.pref.test", Pref: 20, Addrs: []netip.AddrPort{ap("127.0.0.2:2525")}},
		{Name: "c.pref.test", Pref: 30, Addrs: []netip.AddrPort{ap("127.0.0.3:2525")}},
	}
	if fmt.Sprint(hosts) != fmt.Sprint(want) {
		t.Fatalf("hosts = %v, want %v", hosts, want)
	}
}

func TestEqualPreferencesShuffledPerLookup(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"eq.test. 300 IN MX 10 a.eq.test.",
		"eq.test. 300 IN MX 10 b.eq.test.",
		"eq.test. 300 IN MX 5 first.eq.test.",
		"eq.test. 300 IN MX 20 last.eq.test.",
		"a.eq.test. 300 IN A 127.0.0.1",
		"b.eq.test. 300 IN A 127.0.0.2",
		"first.eq.test. 300 IN A 127.0.0.3",
		"last.eq.test. 300 IN A 127.0.0.4",
	)
	r := newResolver(t, startDNS(t, z), nil)
	seen := map[string]bool{}
	// The answer is cached after the first lookup, so seeing both orders
	// shows the shuffle happens per lookup. 200 tries miss one order with
	// probability 2^-199.
	for i := 0; i < 200 && len(seen) < 2; i++ {
		hosts, err := r.Lookup(t.Context(), "eq.test")
		if err != nil {
			t.Fatal(err)
		}
		got := names(hosts)
		if got != "first.eq.test,a.eq.test,b.eq.test,last.eq.test" && got != "first.eq.test,b.eq.test,a.eq.test,last.eq.test" {
			t.Fatalf("order %s breaks preferences", got)
		}
		seen[got] = true
	}
	if len(seen) != 2 {
		t.Fatalf("saw only %v in 200 lookups", seen)
	}
	if n := z.count("eq.test", dns.TypeMX); n != 1 {
		t.Fatalf("MX queried %d times, want 1 (cached)", n)
	}
}

func TestImplicitMX(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		// No MX: the domain's own addresses are its MX host.
		"nomx.test. 300 IN A 127.0.0.7",
		"nomx.test. 300 IN AAAA ::1",
		// MX present: the domain's own A record must not be used.
		"hasmx.test. 300 IN MX 10 mx.hasmx.test.",
		"hasmx.test. 300 IN A 127.0.0.66",
		"mx.hasmx.test. 300 IN A 127.0.0.8",
	)
	r := newResolver(t, startDNS(t, z), nil)

	hosts, err := r.Lookup(t.Context(), "nomx.test")
	if err != nil {
		t.Fatal(err)
	}
	want := []Host{{Name: "nomx.test", Pref: 0, Addrs: []netip.AddrPort{ap("127.0.0.7:25"), ap("[::1]:25")}}}
	if fmt.Sprint(hosts) != fmt.Sprint(want) {
		t.Fatalf("nomx.test = %v, want %v", hosts, want)
	}

	hosts, err = r.Lookup(t.Context(), "hasmx.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.hasmx.test 10 [127.0.0.8:25]]" {
		t.Fatalf("hasmx.test = %s", got)
	}
	if n := z.count("hasmx.test", dns.TypeA); n != 0 {
		t.Fatalf("hasmx.test A queried %d times: A fallback used despite MX", n)
	}
}

func TestMXWithoutAddresses(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"noaddr.test. 300 IN MX 10 gone.noaddr.test.",
		"noaddr.test. 300 IN MX 20 empty.noaddr.test.",
		"noaddr.test. 300 IN A 127.0.0.9", // must not be used: there are MX records
		"empty.noaddr.test. 300 IN TXT \"exists, no address\"",
	)
	r := newResolver(t, startDNS(t, z), nil)
	_, err := r.Lookup(t.Context(), "noaddr.test")
	wantKind(t, err, KindNoAddress, smtp.EnhancedCode{4, 4, 4}, true)
}

func TestNullMX(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"null.test. 300 IN MX 0 .",
		"null.test. 300 IN A 127.0.0.1",
		// "." mixed with a real MX: the real one wins.
		"mixed.test. 300 IN MX 0 .",
		"mixed.test. 300 IN MX 10 mx.mixed.test.",
		"mx.mixed.test. 300 IN A 127.0.0.2",
	)
	r := newResolver(t, startDNS(t, z), nil)
	_, err := r.Lookup(t.Context(), "null.test")
	wantKind(t, err, KindNullMX, smtp.EnhancedCode{5, 1, 10}, false)
	if n := z.count("null.test", dns.TypeA); n != 0 {
		t.Fatalf("null MX domain's A queried %d times", n)
	}
	hosts, err := r.Lookup(t.Context(), "mixed.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(hosts); got != "mx.mixed.test" {
		t.Fatalf("mixed.test = %s", got)
	}
}

func TestNonexistentDomain(t *testing.T) {
	t.Parallel()
	z := newZone(t, "txtonly.test. 300 IN TXT \"no mail here\"")
	r := newResolver(t, startDNS(t, z), nil)

	_, err := r.Lookup(t.Context(), "nx.test")
	wantKind(t, err, KindNXDomain, smtp.EnhancedCode{5, 1, 2}, false)
	if !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("error %q does not say the domain does not exist", err)
	}

	_, err = r.Lookup(t.Context(), "txtonly.test")
	wantKind(t, err, KindNXDomain, smtp.EnhancedCode{5, 1, 2}, false)
	if !strings.Contains(err.Error(), "no MX and no A/AAAA") {
		t.Fatalf("error %q does not say there are no records", err)
	}
}

func TestServerFailuresAreTemporary(t *testing.T) {
	t.Parallel()
	for _, rcode := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented} {
		t.Run(dns.RcodeToString[rcode], func(t *testing.T) {
			t.Parallel()
			z := newZone(t, "fail.test. 300 IN MX 10 mx.fail.test.")
			z.setRcode("fail.test", rcode)
			r := newResolver(t, startDNS(t, z), nil)
			_, err := r.Lookup(t.Context(), "fail.test")
			wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
			// Not cached: the next lookup asks again.
			_, err = r.Lookup(t.Context(), "fail.test")
			wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
			if n := z.count("fail.test", dns.TypeMX); n != 2 {
				t.Fatalf("MX queried %d times, want 2", n)
			}
		})
	}
}

func TestMXHostServfailIsTemporary(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"hostfail.test. 300 IN MX 10 mx.hostfail.test.",
		"mx.hostfail.test. 300 IN A 127.0.0.1",
	)
	z.setRcode("mx.hostfail.test", dns.RcodeServerFailure)
	r := newResolver(t, startDNS(t, z), nil)
	_, err := r.Lookup(t.Context(), "hostfail.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
}

func TestPartialHostFailureCachedBriefly(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"part.test. 600 IN MX 10 bad.part.test.",
		"part.test. 600 IN MX 20 good.part.test.",
		"bad.part.test. 600 IN A 127.0.0.1",
		"good.part.test. 600 IN A 127.0.0.2",
	)
	z.setRcode("bad.part.test", dns.RcodeServerFailure)
	clk := newClock()
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Now = clk.now })
	hosts, err := r.Lookup(t.Context(), "part.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(hosts); got != "good.part.test" {
		t.Fatalf("part.test = %s", got)
	}
	// The host that failed is looked for again after the TTL floor, not
	// after the records' 600 s.
	clk.advance(minTTL)
	if _, err := r.Lookup(t.Context(), "part.test"); err != nil {
		t.Fatal(err)
	}
	if n := z.count("part.test", dns.TypeMX); n != 2 {
		t.Fatalf("MX queried %d times, want 2", n)
	}
}

func TestServerNotAnswering(t *testing.T) {
	t.Parallel()
	silent := silentServer(t)
	r := newResolver(t, silent, func(o *Options) { o.Timeout = 100 * time.Millisecond })
	_, err := r.Lookup(t.Context(), "silent.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)

	// With a second server that answers, the lookup succeeds.
	z := newZone(t, "silent.test. 300 IN A 127.0.0.1")
	r = newResolver(t, silent, func(o *Options) {
		o.Timeout = 100 * time.Millisecond
		o.Servers = append(o.Servers, startDNS(t, z))
	})
	if _, err := r.Lookup(t.Context(), "silent.test"); err != nil {
		t.Fatalf("lookup with a second, answering server: %v", err)
	}
}

func TestContextEnded(t *testing.T) {
	t.Parallel()
	z := newZone(t, "ctx.test. 300 IN A 127.0.0.1")
	r := newResolver(t, startDNS(t, z), nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := r.Lookup(ctx, "ctx.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v does not wrap context.Canceled", err)
	}
}

func TestProhibitedAddresses(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"mixed.test. 300 IN MX 10 lo.mixed.test.",
		"mixed.test. 300 IN MX 20 pub.mixed.test.",
		"lo.mixed.test. 300 IN A 127.0.0.1",
		"lo.mixed.test. 300 IN AAAA ::ffff:127.0.0.2", // v4-mapped loopback
		"pub.mixed.test. 300 IN A 192.0.2.1",
		"pub.mixed.test. 300 IN A 0.0.0.0",
		"pub.mixed.test. 300 IN AAAA 2001:db8::1",
		"pub.mixed.test. 300 IN AAAA fe80::1",

		"lo.test. 300 IN MX 10 a.lo.test.",
		"lo.test. 300 IN MX 10 b.lo.test.",
		"a.lo.test. 300 IN A 127.0.0.1",
		"b.lo.test. 300 IN A 224.0.0.1",
		"b.lo.test. 300 IN AAAA ::",

		"implicit.test. 300 IN A 127.0.0.1",
	)
	addr := startDNS(t, z)

	strict := newResolver(t, addr, func(o *Options) { o.AllowLoopback = false; o.AllowedNetworks = docNets })
	hosts, err := strict.Lookup(t.Context(), "mixed.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[pub.mixed.test 20 [192.0.2.1:25 [2001:db8::1]:25]]" {
		t.Fatalf("filtered mixed.test = %s", got)
	}
	_, err = strict.Lookup(t.Context(), "lo.test")
	wantKind(t, err, KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}, false)
	_, err = strict.Lookup(t.Context(), "implicit.test")
	wantKind(t, err, KindProhibitedIP, smtp.EnhancedCode{5, 4, 4}, false)

	loose := newResolver(t, addr, func(o *Options) { o.AllowedNetworks = docNets })
	hosts, err = loose.Lookup(t.Context(), "mixed.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[lo.mixed.test 10 [127.0.0.1:25 127.0.0.2:25] pub.mixed.test 20 [192.0.2.1:25 0.0.0.0:25 [2001:db8::1]:25 [fe80::1]:25]]" {
		t.Fatalf("unfiltered mixed.test = %s", got)
	}
}

func TestAAAA(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"six.test. 300 IN MX 10 v6.six.test.",
		"six.test. 300 IN MX 20 dual.six.test.",
		"v6.six.test. 300 IN AAAA ::1",
		"dual.six.test. 300 IN AAAA 2001:db8::25",
		"dual.six.test. 300 IN A 192.0.2.25",
	)
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.AllowLoopback = false; o.AllowedNetworks = docNets })
	hosts, err := r.Lookup(t.Context(), "six.test")
	if err != nil {
		t.Fatal(err)
	}
	// ::1 is loopback and filtered, so only dual remains, IPv4 first.
	if got := fmt.Sprint(hosts); got != "[dual.six.test 20 [192.0.2.25:25 [2001:db8::25]:25]]" {
		t.Fatalf("six.test = %s", got)
	}
	r = newResolver(t, startDNS(t, z), func(o *Options) { o.AllowedNetworks = docNets })
	hosts, err = r.Lookup(t.Context(), "six.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[v6.six.test 10 [[::1]:25] dual.six.test 20 [192.0.2.25:25 [2001:db8::25]:25]]" {
		t.Fatalf("six.test = %s", got)
	}
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"relay.example.test. 300 IN A 127.0.0.5",
		"relay.example.test. 300 IN AAAA ::1",
		"routed.test. 300 IN MX 10 mx.routed.test.",
		"mx.routed.test. 300 IN A 192.0.2.1",
	)
	r := newResolver(t, startDNS(t, z), func(o *Options) {
		o.AllowLoopback = false // routes are exempt
		o.Routes = []Route{
			{Domain: "Literal.Test", Host: "127.0.0.1:2525"},
			{Domain: "v6literal.test.", Host: "[::1]:2526"},
			{Domain: "routed.test", Host: "relay.example.test:587"},
			{Domain: "broken.test", Host: "nowhere.example.test:25"},
		}
	})

	hosts, err := r.Lookup(t.Context(), "literal.TEST")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[127.0.0.1 0 [127.0.0.1:2525]]" {
		t.Fatalf("literal.test = %s", got)
	}
	hosts, err = r.Lookup(t.Context(), "v6literal.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[::1 0 [[::1]:2526]]" {
		t.Fatalf("v6literal.test = %s", got)
	}
	if n := z.total(); n != 0 {
		t.Fatalf("IP literal routes made %d queries", n)
	}

	hosts, err = r.Lookup(t.Context(), "routed.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[relay.example.test 0 [127.0.0.5:587 [::1]:587]]" {
		t.Fatalf("routed.test = %s", got)
	}
	if n := z.count("routed.test", dns.TypeMX); n != 0 {
		t.Fatalf("routed domain's MX queried %d times", n)
	}

	_, err = r.Lookup(t.Context(), "broken.test")
	wantKind(t, err, KindNoAddress, smtp.EnhancedCode{4, 4, 4}, true)

	// A subdomain is not matched by its parent's route.
	_, err = r.Lookup(t.Context(), "sub.literal.test")
	wantKind(t, err, KindNXDomain, smtp.EnhancedCode{5, 1, 2}, false)
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"route without port", Options{Routes: []Route{{Domain: "a.test", Host: "relay.test"}}}, "host:port"},
		{"route port zero", Options{Routes: []Route{{Domain: "a.test", Host: "relay.test:0"}}}, "1-65535"},
		{"route port too big", Options{Routes: []Route{{Domain: "a.test", Host: "relay.test:65536"}}}, "1-65535"},
		{"route bad host", Options{Routes: []Route{{Domain: "a.test", Host: "re lay.test:25"}}}, "re lay"},
		{"route bad domain", Options{Routes: []Route{{Domain: "a..test", Host: "relay.test:25"}}}, "empty label"},
		{"duplicate route", Options{Routes: []Route{{Domain: "a.test", Host: "1.2.3.4:25"}, {Domain: "A.test.", Host: "1.2.3.5:25"}}}, "two routes"},
		{"zone", Options{Routes: []Route{{Domain: "a.test", Host: "[fe80::1%eth0]:25"}}}, "zone"},
		{"bad server", Options{Servers: []string{"127.0.0.1"}}, "host:port"},
		{"bad port", Options{Servers: []string{"127.0.0.1:53"}, Port: 70000}, "port"},
		{"negative cache", Options{Servers: []string{"127.0.0.1:53"}, CacheSize: -1}, "cache size"},
		{"negative timeout", Options{Servers: []string{"127.0.0.1:53"}, Timeout: -time.Second}, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestBadDomain(t *testing.T) {
	t.Parallel()
	r := newResolver(t, silentServer(t), nil)
	for _, d := range []string{"", ".", "a..b", "-a.test", "a-.test", "a_b.test", "ex_ämple.test", "1.2.3.4", "[127.0.0.1", "[::1]", strings.Repeat("a", 64) + ".test"} {
		_, err := r.Lookup(t.Context(), d)
		wantKind(t, err, KindBadDomain, smtp.EnhancedCode{5, 1, 2}, false)
	}
}

func TestCacheRespectsTTL(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"ttl.test. 600 IN MX 10 mx.ttl.test.",
		"mx.ttl.test. 30 IN A 127.0.0.1",
		"zero.test. 0 IN A 127.0.0.2",
		"huge.test. 86400 IN MX 10 mx.huge.test.",
		"mx.huge.test. 86400 IN A 127.0.0.3",
		"implicit.test. 300 IN A 127.0.0.4",
	)
	clk := newClock()
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Now = clk.now })
	lookup := func(d string) {
		t.Helper()
		if _, err := r.Lookup(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		domain string
		ttl    time.Duration // the least TTL of the chain, clamped
	}{
		{"ttl.test", 30 * time.Second},
		{"zero.test", minTTL},
		{"huge.test", maxTTL},
		// An implicit MX stands on the negative answer for MX, kept for
		// the test SOA's negative TTL, so a newly added MX is seen soon.
		{"implicit.test", 10 * time.Second},
	} {
		lookup(tc.domain)
		clk.advance(tc.ttl - time.Second)
		lookup(tc.domain)
		if n := z.count(tc.domain, dns.TypeMX); n != 1 {
			t.Fatalf("%s: MX queried %d times within the TTL, want 1", tc.domain, n)
		}
		clk.advance(time.Second)
		lookup(tc.domain)
		if n := z.count(tc.domain, dns.TypeMX); n != 2 {
			t.Fatalf("%s: MX queried %d times after the TTL, want 2", tc.domain, n)
		}
	}
}

func TestNegativeCache(t *testing.T) {
	t.Parallel()
	z := newZone(t, "null.test. 120 IN MX 0 .")
	clk := newClock()
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Now = clk.now })
	for _, tc := range []struct {
		domain string
		kind   Kind
		ttl    time.Duration
	}{
		{"nx.test", KindNXDomain, 10 * time.Second}, // the test SOA's negative TTL
		{"null.test", KindNullMX, 120 * time.Second},
	} {
		for _, advance := range []time.Duration{0, tc.ttl - time.Second, time.Second} {
			clk.advance(advance)
			_, err := r.Lookup(t.Context(), tc.domain)
			if KindOf(err) != tc.kind {
				t.Fatalf("%s: %v, want %v", tc.domain, err, tc.kind)
			}
		}
		if n := z.count(tc.domain, dns.TypeMX); n != 2 {
			t.Fatalf("%s: MX queried %d times over three lookups across the TTL, want 2", tc.domain, n)
		}
	}
}

func TestCacheBound(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"one.test. 300 IN A 127.0.0.1",
		"two.test. 300 IN A 127.0.0.2",
		"three.test. 300 IN A 127.0.0.3",
	)
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.CacheSize = 2 })
	for _, d := range []string{"one.test", "two.test", "one.test", "three.test", "one.test", "two.test"} {
		if _, err := r.Lookup(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		r.mu.Lock()
		n := r.cache.len()
		r.mu.Unlock()
		if n > 2 {
			t.Fatalf("cache holds %d domains, bound is 2", n)
		}
	}
	// one was used most recently when three came in, so two was evicted.
	for d, want := range map[string]int{"one.test": 1, "two.test": 2, "three.test": 1} {
		if n := z.count(d, dns.TypeMX); n != want {
			t.Errorf("%s: MX queried %d times, want %d", d, n, want)
		}
	}
}

func TestTruncatedUDPRetriedOverTCP(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"big.test. 300 IN MX 10 mx.big.test.",
		"mx.big.test. 300 IN A 127.0.0.1",
	)
	z.truncateUDP = true
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "big.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.big.test 10 [127.0.0.1:25]]" {
		t.Fatalf("big.test = %s", got)
	}
	if z.tcpCount() == 0 {
		t.Fatal("no query came over TCP")
	}
}

func TestGlue(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"glue.test. 300 IN MX 10 mx.glue.test.",
		"mx.glue.test. 300 IN A 127.0.0.1",
		"mx.glue.test. 300 IN AAAA ::1",
		"badglue.test. 300 IN MX 10 mx.badglue.test.",
		"mx.badglue.test. 300 IN A 127.0.0.2",
	)
	z.setExtra(t, "glue.test", dns.TypeMX, "mx.glue.test. 300 IN A 127.0.0.11")
	// Glue for a name that is not the MX target must be ignored.
	z.setExtra(t, "badglue.test", dns.TypeMX, "other.badglue.test. 300 IN A 127.0.0.66")
	r := newResolver(t, startDNS(t, z), nil)

	hosts, err := r.Lookup(t.Context(), "glue.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.glue.test 10 [127.0.0.11:25 [::1]:25]]" {
		t.Fatalf("glue.test = %s", got)
	}
	if n := z.count("mx.glue.test", dns.TypeA); n != 0 {
		t.Fatalf("A queried %d times despite glue", n)
	}
	if n := z.count("mx.glue.test", dns.TypeAAAA); n != 1 {
		t.Fatalf("AAAA queried %d times, want 1 (no AAAA glue)", n)
	}

	hosts, err = r.Lookup(t.Context(), "badglue.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.badglue.test 10 [127.0.0.2:25]]" {
		t.Fatalf("badglue.test = %s", got)
	}
}

func TestCNAME(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"alias.test. 300 IN CNAME real.test.",
		"real.test. 300 IN MX 10 mx.real.test.",
		"mx.real.test. 300 IN CNAME host.real.test.",
		"host.real.test. 300 IN A 127.0.0.1",
		"loop1.test. 300 IN CNAME loop2.test.",
		"loop2.test. 300 IN CNAME loop1.test.",
	)
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "alias.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.real.test 10 [127.0.0.1:25]]" {
		t.Fatalf("alias.test = %s", got)
	}
	_, err = r.Lookup(t.Context(), "loop1.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
}

func TestConcurrentLookupsCoalesce(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"busy.test. 300 IN MX 10 mx.busy.test.",
		"mx.busy.test. 300 IN A 127.0.0.1",
	)
	release := make(chan struct{})
	z.blockQuery("busy.test", dns.TypeMX, release)
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Timeout = 10 * time.Second })
	const n = 8
	joined := make(chan struct{}, n)
	r.onJoin = func() { joined <- struct{}{} }

	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	lookup := func(i int) {
		wg.Go(func() {
			hosts, err := r.Lookup(t.Context(), "busy.test")
			results[i], errs[i] = fmt.Sprint(hosts), err
		})
	}
	lookup(0)
	<-z.started // the first lookup's MX query is at the server
	for i := 1; i < n; i++ {
		lookup(i)
	}
	for i := 1; i < n; i++ {
		<-joined
	}
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || results[i] != "[mx.busy.test 10 [127.0.0.1:25]]" {
			t.Fatalf("lookup %d = %s, %v", i, results[i], errs[i])
		}
	}
	if c := z.count("busy.test", dns.TypeMX); c != 1 {
		t.Fatalf("MX queried %d times by %d concurrent lookups, want 1", c, n)
	}
}

func TestJoinerRetriesWhenLeaderCancelled(t *testing.T) {
	t.Parallel()
	z := newZone(t, "slow.test. 300 IN A 127.0.0.1")
	release := make(chan struct{})
	z.blockQuery("slow.test", dns.TypeMX, release)
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Timeout = 10 * time.Second })
	joined := make(chan struct{}, 1)
	r.onJoin = func() { joined <- struct{}{} }

	leaderCtx, cancelLeader := context.WithCancel(t.Context())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := r.Lookup(leaderCtx, "slow.test")
		leaderErr <- err
	}()
	<-z.started
	joinerErr := make(chan error, 1)
	var joinerHosts []Host
	go func() {
		var err error
		joinerHosts, err = r.Lookup(t.Context(), "slow.test")
		joinerErr <- err
	}()
	<-joined
	cancelLeader()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader error = %v, want context.Canceled", err)
	}
	// The joiner asks again itself; let its query through.
	close(release)
	if err := <-joinerErr; err != nil {
		t.Fatalf("joiner error = %v", err)
	}
	if got := names(joinerHosts); got != "slow.test" {
		t.Fatalf("joiner hosts = %s", got)
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k, want := range map[Kind]string{
		0: "none", KindTemp: "temporary", KindNXDomain: "nxdomain", KindNullMX: "null-mx",
		KindNoAddress: "no-address", KindProhibitedIP: "prohibited-ip", KindBadDomain: "bad-domain", 99: "kind(99)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
	if KindOf(errors.New("other")) != 0 || KindOf(nil) != 0 {
		t.Error("KindOf of a foreign error is not 0")
	}
}

func TestReturnedHostsAreTheCallers(t *testing.T) {
	t.Parallel()
	z := newZone(t, "own.test. 300 IN A 127.0.0.1")
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "own.test")
	if err != nil {
		t.Fatal(err)
	}
	hosts[0].Addrs[0] = ap("192.0.2.99:1")
	hosts[0].Name = "changed"
	again, err := r.Lookup(t.Context(), "own.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(again); got != "[own.test 0 [127.0.0.1:25]]" {
		t.Fatalf("cache changed through a returned slice: %s", got)
	}
}

func BenchmarkLookupCached(b *testing.B) {
	z := newZone(b,
		"bench.test. 300 IN MX 10 a.bench.test.",
		"bench.test. 300 IN MX 10 b.bench.test.",
		"a.bench.test. 300 IN A 127.0.0.1",
		"b.bench.test. 300 IN A 127.0.0.2",
	)
	r := newResolver(b, startDNS(b, z), nil)
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Lookup(ctx, "bench.test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
