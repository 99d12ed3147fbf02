package tlspolicy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// TestSTSPolicyHostProhibited: the policy host's addresses get the MX
// hosts' check. Through the dialer seam (which records what it is asked
// and connects every permitted address to the loopback policy server): a
// private, a NAT64-embedded private or an IPv4-mapped private address is
// never asked for, nor loopback unless allowed; of a host with a private
// and a loopback address only the loopback one is dialled; an address in
// AllowedNetworks is. Errors name the address and its class.
func TestSTSPolicyHostProhibited(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	domains := []string{"private.test", "nat64.test", "mapped.test", "loop.test", "mixed.test", "allowed.test"}
	policies := map[string]string{}
	for _, d := range domains {
		policies[d] = enforceA
	}
	ps := startPolicyServer(t, ca, policies)
	dns := loopbacktest.StartDNS(t)
	for _, d := range domains {
		dns.Add(t, "_mta-sts."+d+`. 60 IN TXT "v=STSv1; id=1"`)
	}
	dns.Add(t,
		"mta-sts.private.test. 60 IN A 10.1.2.3",
		"mta-sts.nat64.test. 60 IN AAAA 64:ff9b::a01:203",
		"mta-sts.mapped.test. 60 IN AAAA ::ffff:192.168.1.1",
		"mta-sts.loop.test. 60 IN A 127.0.0.1",
		"mta-sts.mixed.test. 60 IN A 172.16.0.1", "mta-sts.mixed.test. 60 IN A 127.0.0.1",
		"mta-sts.allowed.test. 60 IN A 10.9.9.9")

	var mu sync.Mutex
	var asked []string
	seam := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		asked = append(asked, addr)
		mu.Unlock()
		return ps.dial(ctx, network, addr)
	}
	mk := func(allowLoopback bool) *STS {
		s, err := NewSTS(STSOptions{Servers: []string{dns.Addr}, DNSTimeout: 2 * time.Second, Roots: ca.Pool(),
			FetchTimeout: 5 * time.Second, Dial: seam, AllowLoopback: allowLoopback,
			AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	strict, lax := mk(false), mk(true)

	ctx := context.Background()
	for _, tc := range []struct {
		s      *STS
		domain string
		policy bool
		dialed string // the address the seam is asked for, "" for none
		err    string // in dialPolicyHost's error
	}{
		{strict, "private.test", false, "", "prohibited IP: 10.1.2.3 is private"},
		{lax, "private.test", false, "", "prohibited IP: 10.1.2.3 is private"},
		{lax, "nat64.test", false, "", "prohibited IP: 64:ff9b::a01:203 is NAT64 of 10.1.2.3 (private)"},
		{lax, "mapped.test", false, "", "prohibited IP: ::ffff:192.168.1.1 is private"},
		{strict, "loop.test", false, "", "prohibited IP: 127.0.0.1 is loopback"},
		{lax, "loop.test", true, "127.0.0.1:443", ""},
		{lax, "mixed.test", true, "127.0.0.1:443", ""},
		{strict, "allowed.test", true, "10.9.9.9:443", ""},
	} {
		mu.Lock()
		asked = nil
		mu.Unlock()
		name := tc.domain
		if tc.s == strict {
			name += " (loopback refused)"
		}
		if c, err := tc.s.dialPolicyHost(ctx, "tcp", "mta-sts."+tc.domain+":443"); tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: dial error %v, want %q", name, err, tc.err)
			}
		} else if err != nil {
			t.Errorf("%s: dial: %v", name, err)
		} else {
			c.Close()
		}
		p := tc.s.Lookup(ctx, tc.domain)
		if (p != nil) != tc.policy {
			t.Errorf("%s: policy %v, want one: %v", name, p, tc.policy)
		}
		mu.Lock()
		got := slices.Clone(asked)
		mu.Unlock()
		want := []string(nil)
		if tc.dialed != "" {
			want = []string{tc.dialed, tc.dialed} // the direct dial and the fetch
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the seam was asked for %q, want %q", name, got, want)
		}
	}
}
