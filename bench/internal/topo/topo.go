// Package topo is the benchmark's map of the fake Internet: which test
// domains exist, which MX host each names and on which loopback address that
// host listens. The DNS server answers from it and the counting sink listens
// on its addresses, so the two can never disagree.
//
// Every domain gets an address of its own (dN.bench on 127.0.1.N+1,
// hot.bench on 127.0.2.1) so that an MTA which counts connections per
// destination IP, as Postfix does for [ip] next hops, sees 100 destinations
// exactly as mtad sees 100 domains. It must never hand out an address outside
// 127.0.0.0/8.
package topo

import (
	"fmt"
	"net/netip"
)

// HotDomain is the single destination of the one-domain workload.
const HotDomain = "hot.bench"

// MaxDomains is the most dN.bench domains Domains will generate: one /24 of
// loopback addresses, host parts 1..250.
const MaxDomains = 250

// Domain is one test destination.
type Domain struct {
	Name string     // e.g. "d7.bench"
	MX   string     // the MX host name, e.g. "mx.d7.bench"
	Addr netip.Addr // the A record of MX, a 127/8 address the sink listens on
}

// Domains returns d0.bench … d(n-1).bench followed by HotDomain. It fails
// when n is negative or above MaxDomains.
func Domains(n int) ([]Domain, error) {
	if n < 0 || n > MaxDomains {
		return nil, fmt.Errorf("topo: %d domains asked, want 0..%d", n, MaxDomains)
	}
	out := make([]Domain, 0, n+1)
	for i := range n {
		name := fmt.Sprintf("d%d.bench", i)
		out = append(out, Domain{Name: name, MX: "mx." + name, Addr: netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)})})
	}
	out = append(out, Domain{Name: HotDomain, MX: "mx." + HotDomain, Addr: netip.AddrFrom4([4]byte{127, 0, 2, 1})})
	return out, nil
}
