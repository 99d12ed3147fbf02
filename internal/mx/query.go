package mx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxChain bounds CNAME hops, inside one answer and across re-queries.
const maxChain = 8

// answer is the outcome of one name/type lookup that the DNS did answer.
type answer struct {
	rrs   []dns.RR // records of the asked type at the end of the CNAME chain
	nx    bool     // the name (or the end of its CNAME chain) does not exist
	ttl   uint32   // least TTL of the chain and records; for a negative answer, the SOA's negative TTL
	extra []dns.RR // the additional section of the answer the records came from
}

// exchange asks the configured servers in turn for name/qtype until one
// answers NOERROR or NXDOMAIN. Any other outcome (SERVFAIL, REFUSED, a
// timeout, a network error, a reply to another question) moves on to the
// next server; when none is left the error lists what each said.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if r.lookupTime != nil {
		t0 := time.Now()
		resp, err := r.exchangeAll(ctx, name, qtype)
		result := "answer"
		if err != nil {
			result = "error"
		}
		r.lookupTime.WithLabelValues(dns.TypeToString[qtype], result).Observe(time.Since(t0).Seconds())
		return resp, err
	}
	return r.exchangeAll(ctx, name, qtype)
}

// exchangeAll is exchange without its measurement.
func (r *Resolver) exchangeAll(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	return r.x.Exchange(ctx, name, qtype, nil)
}

// lookupType resolves name/qtype, following CNAMEs in the answer and asking
// again for the chain's end when the server did not follow it itself. An
// error means the DNS could not answer (temporary).
func (r *Resolver) lookupType(ctx context.Context, name string, qtype uint16) (answer, error) {
	ttl := uint32(math.MaxUint32)
	qname := dns.CanonicalName(name)
	for range maxChain {
		msg, err := r.exchange(ctx, qname, qtype)
		if err != nil {
			return answer{}, err
		}
		rrs, cur, chainTTL := followChain(msg, qname, qtype)
		ttl = min(ttl, chainTTL)
		switch {
		case len(rrs) > 0:
			return answer{rrs: rrs, ttl: ttl, extra: msg.Extra}, nil
		case msg.Rcode == dns.RcodeNameError:
			return answer{nx: true, ttl: min(ttl, negativeTTL(msg))}, nil
		case cur == qname:
			return answer{ttl: min(ttl, negativeTTL(msg))}, nil
		}
		qname = cur // the chain ends at a name the server did not resolve for us
	}
	return answer{}, fmt.Errorf("query %s %s: CNAME chain longer than %d", name, dns.TypeToString[qtype], maxChain)
}

// followChain follows the CNAMEs in msg's answer from qname (canonical),
// at most maxChain hops, and returns the records of qtype at the end, the
// name it ended at, and the least TTL among the CNAMEs and records.
func followChain(msg *dns.Msg, qname string, qtype uint16) ([]dns.RR, string, uint32) {
	ttl := uint32(math.MaxUint32)
	cur := qname
	for range maxChain {
		next := ""
		for _, rr := range msg.Answer {
			if c, ok := rr.(*dns.CNAME); ok && rr.Header().Class == dns.ClassINET &&
				dns.CanonicalName(rr.Header().Name) == cur {
				next = dns.CanonicalName(c.Target)
				ttl = min(ttl, rr.Header().Ttl)
				break
			}
		}
		if next == "" {
			break
		}
		cur = next
	}
	var rrs []dns.RR
	for _, rr := range msg.Answer {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && dns.CanonicalName(h.Name) == cur {
			rrs = append(rrs, rr)
			ttl = min(ttl, h.Ttl)
		}
	}
	return rrs, cur, ttl
}

// negativeTTL is how long a negative answer may be cached (RFC 2308 §5):
// the lesser of the SOA record's TTL and its MINIMUM field, or 0 (the floor)
// without an SOA.
func negativeTTL(msg *dns.Msg) uint32 {
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return 0
}

// hostAddrs is what is known of one host name's addresses.
type hostAddrs struct {
	addrs []netip.Addr
	ttl   uint32
	temp  error // a lookup failed; addrs may still hold the other family's
}

// glue holds addresses from an MX answer's additional section, by canonical
// owner name. Only records whose owner is one of the MX targets and whose
// type and class are IN A / IN AAAA are taken, and a family present in glue
// is not asked for again; a family absent from it is still queried.
type glue map[string]*glueAddrs

type glueAddrs struct {
	a, aaaa []netip.Addr
	ttl     uint32
}

func buildGlue(extra []dns.RR, targets map[string]bool) glue {
	g := glue{}
	for _, rr := range extra {
		h := rr.Header()
		name := dns.CanonicalName(h.Name)
		if h.Class != dns.ClassINET || !targets[name] {
			continue
		}
		var addr netip.Addr
		var ok bool
		switch rr := rr.(type) {
		case *dns.A:
			addr, ok = netip.AddrFromSlice(rr.A.To4())
		case *dns.AAAA:
			addr, ok = netip.AddrFromSlice(rr.AAAA.To16())
		}
		if !ok {
			continue
		}
		ga := g[name]
		if ga == nil {
			ga = &glueAddrs{ttl: math.MaxUint32}
			g[name] = ga
		}
		if h.Rrtype == dns.TypeA {
			ga.a = append(ga.a, addr.Unmap())
		} else {
			ga.aaaa = append(ga.aaaa, addr)
		}
		ga.ttl = min(ga.ttl, h.Ttl)
	}
	return g
}

// resolveHost looks up name's A and AAAA records concurrently, taking
// either family from ga instead when ga has it. IPv4 addresses come first.
func (r *Resolver) resolveHost(ctx context.Context, name string, ga *glueAddrs) hostAddrs {
	type famResult struct {
		addrs []netip.Addr
		ttl   uint32
		err   error
	}
	var res [2]famResult
	var wg sync.WaitGroup
	for i, qtype := range [2]uint16{dns.TypeA, dns.TypeAAAA} {
		if ga != nil {
			g := ga.a
			if qtype == dns.TypeAAAA {
				g = ga.aaaa
			}
			if len(g) > 0 {
				res[i] = famResult{addrs: g, ttl: ga.ttl}
				continue
			}
		}
		wg.Go(func() {
			ans, err := r.lookupType(ctx, name, qtype)
			if err != nil {
				res[i].err = err
				return
			}
			res[i].ttl = ans.ttl
			for _, rr := range ans.rrs {
				var a netip.Addr
				switch rr := rr.(type) {
				case *dns.A:
					a, _ = netip.AddrFromSlice(rr.A.To4())
				case *dns.AAAA:
					a, _ = netip.AddrFromSlice(rr.AAAA.To16())
				}
				if a.IsValid() {
					res[i].addrs = append(res[i].addrs, a.Unmap())
				}
			}
		})
	}
	wg.Wait()
	// A family's negative answer bounds the TTL only when the host has no
	// address at all: an IPv4-only host must not be re-resolved every few
	// seconds because its zone's negative TTL for AAAA is short.
	out := hostAddrs{ttl: math.MaxUint32}
	negTTL := uint32(math.MaxUint32)
	seen := map[netip.Addr]bool{}
	var errs []error
	for _, fr := range res {
		if fr.err != nil {
			errs = append(errs, fr.err)
			continue
		}
		if len(fr.addrs) == 0 {
			negTTL = min(negTTL, fr.ttl)
			continue
		}
		out.ttl = min(out.ttl, fr.ttl)
		for _, a := range fr.addrs {
			if !seen[a] {
				seen[a] = true
				out.addrs = append(out.addrs, a)
			}
		}
	}
	if len(out.addrs) == 0 {
		out.ttl = negTTL
	}
	out.temp = errors.Join(errs...)
	return out
}
