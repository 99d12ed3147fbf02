// Package mx owns finding where mail for a domain goes: the MX records in
// preference order (equal preferences shuffled on every lookup), the
// implicit MX of RFC 5321 §5.1 when a domain has no MX at all, null MX
// (RFC 7505), the addresses of every MX host (A and AAAA), static routes
// that send a domain to a configured smarthost, and a bounded TTL cache in
// front of it all. A domain is routed by its canonical form (Canonical):
// an internationalised name by its A-label, and an address literal
// ("[192.0.2.1]") as that one address, without any DNS query.
//
// What one resolution fans out to is bounded: at most Options.MaxMXHosts
// MX hosts resolved, Options.MaxAddrsPerHost addresses kept per host, and
// Options.MaxAddrs addresses returned by one Lookup, so a domain publishing
// 100 MX records or hosts with 50 addresses each costs a bounded number of
// queries and, downstream, of connection attempts. Queries go through one
// Exchanger, which shares each query's time among the DNS servers and
// moves a server that stopped answering to the back for a while (see
// Exchanger for the algorithm).
//
// Every failure is an *Error that wraps an *outcome.Error in the DNS phase,
// so the scheduler decides retry or bounce without knowing this package; its
// Kind tells the connection pool which CONN_ERR to report.
//
// It must never connect to a mail server, and never hand out an address
// from public DNS that is not global unicast (loopback, private, shared,
// link-local, multicast, documentation, reserved: see prohibited.go)
// unless the operator allowed its network, or a test allowed loopback. It
// imports no mtad package but outcome.
package mx

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Route sends all mail for Domain (matched exactly, case-insensitively) to
// Host, a "host:port" smarthost: an IP literal ("192.0.2.1:25",
// "[2001:db8::1]:587") or a name resolved with A/AAAA on the same servers.
// A route bypasses MX entirely, and its addresses are never filtered: a
// route is the operator's explicit choice of where the domain's mail goes,
// as deliberate as delivery.allowed_networks, so a smarthost on a private
// network (10.0.0.25:25) or on loopback needs no second permission.
type Route struct {
	Domain string
	Host   string
}

// Options configures a Resolver. The zero value reads /etc/resolv.conf and
// uses the defaults noted on each field.
type Options struct {
	// Servers are the recursive DNS servers, "host:port", asked in order
	// until one answers. Empty means those of /etc/resolv.conf.
	Servers []string
	// Timeout bounds each query (default 5s), shared among the servers
	// (see Exchanger): each server asked gets the time left divided by the
	// servers still to ask, and a truncated UDP answer's TCP retry comes
	// out of its server's share.
	Timeout time.Duration
	// MaxMXHosts bounds the MX hosts resolved per domain (default 10): the
	// lowest preferences first, equal preferences shuffled before the cut
	// so a domain with 100 MX records at one preference is not always
	// served by the same alphabetically-first few.
	MaxMXHosts int
	// MaxAddrsPerHost bounds the addresses kept per MX host (default 4),
	// IPv4 and IPv6 alternated when both must be cut, so a host with many
	// addresses of one family does not crowd out the other.
	MaxAddrsPerHost int
	// MaxAddrs bounds the addresses one Lookup returns over all its hosts
	// (default 10), in the order of the hosts: what one delivery attempt
	// may try. (Postfix's smtp_mx_address_limit, 5 by default, is the same
	// bound; mtad keeps a few more because it spreads concurrent
	// connections over a domain's hosts.)
	MaxAddrs int
	// Port is the port of every MX connection (default 25).
	Port int
	// AllowLoopback keeps loopback, unspecified, multicast and link-local
	// addresses found in DNS answers. Only tests set it. It does not lift
	// the other prohibited classes (private, documentation, ...).
	AllowLoopback bool
	// AllowedNetworks are networks whose addresses are used even though
	// they are prohibited (delivery.allowed_networks: an MX on the
	// sender's own private network). An address that embeds an IPv4
	// address (NAT64, 6to4) is allowed when the embedded one is in them.
	// ParseNetworks builds it from configuration.
	AllowedNetworks []netip.Prefix
	// Routes are static smarthosts by domain; New rejects a malformed one
	// or two for the same domain.
	Routes []Route
	// CacheSize bounds the number of domains cached (default 10000).
	CacheSize int
	// Now is the clock of the cache and of the DNS servers' health table;
	// nil means time.Now.
	Now func() time.Time
	// Metrics registers mtad_dns_lookup_seconds{type,result} (reused
	// when already there, as after a reload); nil measures nothing.
	Metrics prometheus.Registerer
}

// Host is one mail exchanger, its addresses already resolved (IPv4 first,
// then IPv6) and carrying the port to connect to.
type Host struct {
	Name  string // the MX target, or the domain itself for an implicit MX, or the route's host
	Pref  uint16
	Addrs []netip.AddrPort
}

// Resolver resolves domains to mail exchangers. It is safe for concurrent
// use; concurrent lookups of one domain share one resolution. It starts no
// goroutine that outlives a Lookup call, so it needs no Close.
type Resolver struct {
	servers       []string
	timeout       time.Duration
	port          uint16
	maxHosts      int
	maxHostAddrs  int
	maxAddrs      int
	allowLoopback bool
	allowed       []netip.Prefix
	routes        map[string]route
	now           func() time.Time
	x             *Exchanger
	lookupTime    *prometheus.HistogramVec // nil without Options.Metrics

	mu       sync.Mutex
	cache    *lru
	inflight map[string]*call

	// onJoin, when set (tests only), is called when a Lookup joins a
	// resolution already in flight.
	onJoin func()
}

// call is one resolution in flight, shared by every Lookup of its domain.
type call struct {
	done chan struct{}
	res  result
	// leaderCancelled: the lookup that ran the resolution had its context
	// end, so its failure says nothing about the domain.
	leaderCancelled bool
}

const (
	defaultTimeout   = 5 * time.Second
	defaultCacheSize = 10000
	// The defaults of Options.MaxMXHosts, MaxAddrsPerHost and MaxAddrs: a
	// domain listing more hosts or addresses gains nothing from the rest,
	// and a hostile one must not make mtad resolve and dial hundreds.
	defaultMaxHosts     = 10
	defaultMaxHostAddrs = 4
	defaultMaxAddrs     = 10
	// hostParallel bounds the MX hosts resolved at once (each asks A and
	// AAAA concurrently, so twice as many queries are in flight).
	hostParallel = 4
)

// New builds a Resolver. It fails when a route is malformed or duplicated,
// an option is out of range, or no DNS server is configured or found in
// /etc/resolv.conf.
func New(opts Options) (*Resolver, error) {
	r := &Resolver{
		timeout:       opts.Timeout,
		allowLoopback: opts.AllowLoopback,
		allowed:       slices.Clone(opts.AllowedNetworks),
		routes:        make(map[string]route, len(opts.Routes)),
		now:           opts.Now,
		inflight:      make(map[string]*call),
	}
	if r.timeout < 0 {
		return nil, fmt.Errorf("mx: timeout %v is negative", opts.Timeout)
	}
	if r.timeout == 0 {
		r.timeout = defaultTimeout
	}
	switch {
	case opts.Port == 0:
		r.port = 25
	case opts.Port < 0 || opts.Port > 65535:
		return nil, fmt.Errorf("mx: port %d is not in 1-65535", opts.Port)
	default:
		r.port = uint16(opts.Port)
	}
	for _, b := range []struct {
		name string
		v    int
		dst  *int
		def  int
	}{
		{"max MX hosts", opts.MaxMXHosts, &r.maxHosts, defaultMaxHosts},
		{"max addresses per host", opts.MaxAddrsPerHost, &r.maxHostAddrs, defaultMaxHostAddrs},
		{"max addresses", opts.MaxAddrs, &r.maxAddrs, defaultMaxAddrs},
	} {
		if b.v < 0 {
			return nil, fmt.Errorf("mx: %s %d is negative", b.name, b.v)
		}
		*b.dst = cmp.Or(b.v, b.def)
	}
	size := opts.CacheSize
	if size < 0 {
		return nil, fmt.Errorf("mx: cache size %d is negative", size)
	}
	if size == 0 {
		size = defaultCacheSize
	}
	r.cache = newLRU(size)
	if r.now == nil {
		r.now = time.Now
	}
	for _, rt := range opts.Routes {
		p, err := parseRoute(rt)
		if err != nil {
			return nil, fmt.Errorf("mx: %w", err)
		}
		if _, dup := r.routes[p.domain]; dup {
			return nil, fmt.Errorf("mx: two routes for domain %s", p.domain)
		}
		r.routes[p.domain] = p
	}
	r.servers = slices.Clone(opts.Servers)
	if len(r.servers) == 0 {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("mx: reading DNS servers: %w", err)
		}
		for _, s := range cfg.Servers {
			r.servers = append(r.servers, net.JoinHostPort(s, cfg.Port))
		}
		if len(r.servers) == 0 {
			return nil, errors.New("mx: /etc/resolv.conf names no DNS server")
		}
	}
	for _, s := range r.servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("mx: DNS server %q: want host:port: %w", s, err)
		}
	}
	r.x = NewExchanger(r.servers, r.timeout)
	r.x.now = r.now
	if opts.Metrics != nil {
		h, err := lookupHistogram(opts.Metrics)
		if err != nil {
			return nil, err
		}
		r.lookupTime = h
	}
	return r, nil
}

// lookupHistogram registers mtad_dns_lookup_seconds on m, or returns the
// one already there.
func lookupHistogram(m prometheus.Registerer) (*prometheus.HistogramVec, error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mtad_dns_lookup_seconds",
		Help: "Time of one DNS query (every server asked in turn, a truncated answer's TCP retry included) by type (MX, A, AAAA) and result (answer: NOERROR or NXDOMAIN; error: none of the servers answered).",
		// 0.5 ms (a local cache) to the default timeout times a few servers.
		Buckets: prometheus.ExponentialBucketsRange(0.0005, 20, 12),
	}, []string{"type", "result"})
	err := m.Register(h)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(*prometheus.HistogramVec); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mx: registering mtad_dns_lookup_seconds: %w", err)
	}
	return h, nil
}

// Lookup returns the mail exchangers for domain, most preferred first, with
// hosts of equal preference in a fresh random order on every call, so
// connections spread over them. Hosts without a usable address are left
// out, so every returned Host has at least one address. The slice is the
// caller's to keep and change.
//
// domain may be an A-label or U-label name, or an address literal; see
// Canonical. Any error is an *Error (see Kind for what each means). A
// context that ends gives KindTemp wrapping the context's error.
func (r *Resolver) Lookup(ctx context.Context, domain string) ([]Host, error) {
	d, err := Canonical(domain)
	if err != nil {
		return nil, newError(KindBadDomain, domain, "bad domain syntax", err)
	}
	if IsLiteral(d) {
		return r.literal(d)
	}
	if rt, ok := r.routes[d]; ok && rt.addr.IsValid() {
		return []Host{{Name: rt.addr.String(), Addrs: []netip.AddrPort{netip.AddrPortFrom(rt.addr, rt.port)}}}, nil
	}
	res := r.cached(ctx, d)
	if res.err != nil {
		return nil, res.err.clone()
	}
	hosts := make([]Host, len(res.hosts))
	for i, h := range res.hosts {
		hosts[i] = Host{Name: h.Name, Pref: h.Pref, Addrs: slices.Clone(h.Addrs)}
	}
	shuffleEqual(hosts)
	return capAddrs(hosts, r.maxAddrs), nil
}

// capAddrs keeps at most max addresses over hosts, in their order, and
// drops the hosts left without one. It runs after the shuffle, so hosts of
// equal preference take turns at the addresses the cap leaves.
func capAddrs(hosts []Host, max int) []Host {
	out := hosts[:0]
	for _, h := range hosts {
		if max == 0 {
			break
		}
		if len(h.Addrs) > max {
			h.Addrs = h.Addrs[:max]
		}
		max -= len(h.Addrs)
		out = append(out, h)
	}
	return out
}

// capHostAddrs keeps at most max of one host's addresses (IPv4 first, then
// IPv6), taking the two families in turn when both must be cut.
func capHostAddrs(addrs []netip.AddrPort, max int) []netip.AddrPort {
	if len(addrs) <= max {
		return addrs
	}
	var v4, v6 []netip.AddrPort
	for _, a := range addrs {
		if a.Addr().Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	out := make([]netip.AddrPort, 0, max)
	for i := 0; len(out) < max; i++ {
		if i < len(v4) {
			out = append(out, v4[i])
		}
		if i < len(v6) && len(out) < max {
			out = append(out, v6[i])
		}
	}
	return out
}

// literal answers for an address literal (RFC 5321 §5.1: the address is
// the one host, no MX lookup), on the MX port and under the same
// prohibited-address rule as a DNS answer: a recipient can write
// [127.0.0.1] as easily as a domain can publish it. d is canonical.
func (r *Resolver) literal(d string) ([]Host, error) {
	a, err := ParseLiteral(d)
	if err != nil { // Canonical parsed it already; kept for safety
		return nil, newError(KindBadDomain, d, "bad address literal", err)
	}
	if _, why := r.usable([]netip.Addr{a}); why != "" {
		return nil, newError(KindProhibitedIP, d, "address literal is a prohibited address: "+why, nil)
	}
	return []Host{{Name: a.String(), Addrs: []netip.AddrPort{netip.AddrPortFrom(a, r.port)}}}, nil
}

// shuffleEqual shuffles each run of hosts with the same preference.
func shuffleEqual(hosts []Host) {
	for i := 0; i < len(hosts); {
		j := i + 1
		for j < len(hosts) && hosts[j].Pref == hosts[i].Pref {
			j++
		}
		run := hosts[i:j]
		rand.Shuffle(len(run), func(a, b int) { run[a], run[b] = run[b], run[a] })
		i = j
	}
}

// cached answers from the cache, or joins the resolution of d already in
// flight, or runs it. A lookup that joined one whose leader's context
// ended tries again (a bounded number of times) rather than reporting
// someone else's cancellation.
func (r *Resolver) cached(ctx context.Context, d string) result {
	for range 3 {
		r.mu.Lock()
		if res, ok := r.cache.get(d, r.now()); ok {
			r.mu.Unlock()
			return res
		}
		if c, ok := r.inflight[d]; ok {
			r.mu.Unlock()
			if r.onJoin != nil {
				r.onJoin()
			}
			select {
			case <-c.done:
			case <-ctx.Done():
				return result{err: newError(KindTemp, d, "DNS lookup interrupted", ctx.Err())}
			}
			if c.leaderCancelled && ctx.Err() == nil {
				continue
			}
			return c.res
		}
		c := &call{done: make(chan struct{})}
		r.inflight[d] = c
		r.mu.Unlock()

		c.res = r.resolve(ctx, d)
		c.leaderCancelled = c.res.err != nil && ctx.Err() != nil

		r.mu.Lock()
		delete(r.inflight, d)
		if c.res.cache {
			r.cache.put(d, c.res, r.now())
		}
		r.mu.Unlock()
		close(c.done)
		return c.res
	}
	return r.resolve(ctx, d)
}

// Routed reports whether domain's mail goes to a static route (a
// smarthost the operator chose) rather than to its MX hosts: the domain's
// MTA-STS policy, which names MX hosts, does not apply to it.
func (r *Resolver) Routed(domain string) bool {
	d, err := Canonical(domain)
	if err != nil {
		return false
	}
	_, ok := r.routes[d]
	return ok
}

// resolve finds d's mail exchangers, asking the DNS.
func (r *Resolver) resolve(ctx context.Context, d string) result {
	if rt, ok := r.routes[d]; ok {
		return r.resolveRoute(ctx, d, rt)
	}
	ans, err := r.lookupType(ctx, d, dns.TypeMX)
	if err != nil {
		return result{err: newError(KindTemp, d, "DNS lookup of MX failed", err)}
	}
	if ans.nx {
		return negative(newError(KindNXDomain, d, "domain does not exist", nil), ans.ttl)
	}
	hosts, kind, why := mxTargets(ans.rrs, r.maxHosts)
	switch kind {
	case KindNXDomain: // no MX record at all
		return r.resolveImplicit(ctx, d, ans.ttl)
	case KindNullMX:
		return result{
			err:   newError(KindNullMX, d, "domain accepts no mail (null MX)", nil),
			ttl:   clampTTL(ans.ttl, maxTTL),
			cache: true,
		}
	case KindNoAddress:
		return negative(newError(KindNoAddress, d, "no MX host is a host name: "+why, nil), ans.ttl)
	}
	targets := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		targets[h.Name+"."] = true
	}
	g := buildGlue(ans.extra, targets)

	found := make([]hostAddrs, len(hosts))
	sem := make(chan struct{}, hostParallel)
	var wg sync.WaitGroup
	for i, h := range hosts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			found[i] = r.resolveHost(ctx, h.Name, g[h.Name+"."])
		})
	}
	wg.Wait()

	ttl := ans.ttl
	var temps []error
	filtered := ""
	out := hosts[:0]
	for i, h := range hosts {
		f := found[i]
		if f.temp != nil {
			temps = append(temps, f.temp)
		}
		ttl = min(ttl, f.ttl)
		addrs, why := r.usable(f.addrs)
		if filtered == "" && why != "" {
			filtered = h.Name + " " + why
		}
		if len(addrs) == 0 {
			continue
		}
		h.Addrs = capHostAddrs(addrs, r.maxHostAddrs)
		out = append(out, h)
	}
	if len(out) == 0 {
		switch {
		case len(temps) > 0:
			return result{err: newError(KindTemp, d, "DNS lookup of MX host addresses failed", errors.Join(temps...))}
		case filtered != "":
			return negative(newError(KindProhibitedIP, d, "MX hosts have only prohibited addresses: "+filtered, nil), ttl)
		}
		return negative(newError(KindNoAddress, d, "no MX host has an address", nil), ttl)
	}
	res := result{hosts: out, ttl: clampTTL(ttl, maxTTL), cache: true}
	if len(temps) > 0 {
		// Some hosts could not be resolved just now: use the others, but
		// look again soon rather than leaving those out for the whole TTL.
		res.ttl = minTTL
	}
	return res
}

// mxTargets turns the records of an MX answer into the hosts to resolve:
// each target once at its best preference, lowest preference first, at
// most max of them (equal preferences shuffled before the cut, so the cut
// through a run of them does not always keep the same names). kind is 0
// when there are hosts, KindNXDomain when rrs hold no MX record (the
// implicit MX applies), KindNullMX for a null MX (RFC 7505), and
// KindNoAddress when every target was dropped; why then says which.
//
// Dropped: "." mixed with real MX records (a domain must not mix them; if
// it does, the real ones are where the mail goes), and a target that is an
// IP address written as a name ("MX 10 192.0.2.1"). RFC 5321 §5.1 and RFC
// 2181 §10.3 want a host name there; asking the DNS for "192.0.2.1." could
// only find what a hostile or broken zone put there, and connecting to the
// address would let any zone point mail at any address without the name
// an MX host needs for TLS. Postfix refuses it the same way, and defers:
// KindNoAddress is temporary, as for a domain whose MX host is being
// renumbered, and a zone fixed within the retry period loses no mail.
//
// A target that is a CNAME is followed (resolveHost asks A/AAAA, and
// lookupType follows the chain, maxChain hops at most): RFC 2181 §10.3
// forbids it, but RFC 5321 §5.1 leaves it to the client, and refusing mail
// over it would bounce domains every other MTA delivers to.
func mxTargets(rrs []dns.RR, max int) (hosts []Host, kind Kind, why string) {
	var mxs []*dns.MX
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 0 {
		return nil, KindNXDomain, ""
	}
	// RFC 7505 null MX: only "." targets. One of any preference is taken
	// as one too: it names nothing to connect to either way.
	best := map[string]uint16{}
	for _, mx := range mxs {
		t := dns.CanonicalName(mx.Mx)
		if t == "." {
			continue
		}
		if _, err := netip.ParseAddr(strings.TrimSuffix(t, ".")); err == nil {
			if why == "" {
				why = strings.TrimSuffix(t, ".") + " is an IP address"
			}
			continue
		}
		if p, ok := best[t]; !ok || mx.Preference < p {
			best[t] = mx.Preference
		}
	}
	switch {
	case len(best) > 0:
	case why == "": // several "." records: still a null MX
		return nil, KindNullMX, ""
	default:
		return nil, KindNoAddress, why
	}
	hosts = make([]Host, 0, len(best))
	for t, p := range best {
		hosts = append(hosts, Host{Name: strings.TrimSuffix(t, "."), Pref: p})
	}
	slices.SortFunc(hosts, func(a, b Host) int {
		if a.Pref != b.Pref {
			return int(a.Pref) - int(b.Pref)
		}
		return strings.Compare(a.Name, b.Name)
	})
	if len(hosts) > max {
		shuffleEqual(hosts)
		hosts = hosts[:max]
	}
	return hosts, 0, ""
}

// resolveImplicit handles a domain without MX records: RFC 5321 §5.1 says
// to treat the domain itself as its only MX host, preference 0.
func (r *Resolver) resolveImplicit(ctx context.Context, d string, mxTTL uint32) result {
	f := r.resolveHost(ctx, d, nil)
	addrs, why := r.usable(f.addrs)
	ttl := min(mxTTL, f.ttl)
	switch {
	case len(addrs) > 0:
		res := result{hosts: []Host{{Name: d, Addrs: capHostAddrs(addrs, r.maxHostAddrs)}}, ttl: clampTTL(ttl, maxTTL), cache: true}
		if f.temp != nil {
			res.ttl = minTTL
		}
		return res
	case f.temp != nil:
		return result{err: newError(KindTemp, d, "DNS lookup of domain addresses failed", f.temp)}
	case why != "":
		return negative(newError(KindProhibitedIP, d, "domain has no MX and only prohibited addresses: "+why, nil), ttl)
	}
	return negative(newError(KindNXDomain, d, "domain has no MX and no A/AAAA records", nil), ttl)
}

// resolveRoute resolves a static route's host name. Its failures are never
// permanent: a name the operator configured that does not resolve is the
// operator's to fix, not a reason to bounce the domain's mail.
func (r *Resolver) resolveRoute(ctx context.Context, d string, rt route) result {
	f := r.resolveHost(ctx, rt.name, nil)
	if len(f.addrs) == 0 {
		if f.temp != nil {
			return result{err: newError(KindTemp, d, "DNS lookup of route host "+rt.name+" failed", f.temp)}
		}
		return negative(newError(KindNoAddress, d, "route host "+rt.name+" has no address", nil), f.ttl)
	}
	h := Host{Name: rt.name}
	for _, a := range f.addrs {
		h.Addrs = append(h.Addrs, netip.AddrPortFrom(a, rt.port))
	}
	res := result{hosts: []Host{h}, ttl: clampTTL(f.ttl, maxTTL), cache: true}
	if f.temp != nil {
		res.ttl = minTTL
	}
	return res
}

// usable drops prohibited addresses (unless allowed) and applies the port.
// why says what the first dropped address was ("10.1.2.3 is private"), or
// is "" when none was dropped.
func (r *Resolver) usable(addrs []netip.Addr) (out []netip.AddrPort, why string) {
	out = make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		if w := Refusal(a, r.allowLoopback, r.allowed); w != "" {
			if why == "" {
				why = w
			}
			continue
		}
		out = append(out, netip.AddrPortFrom(a, r.port))
	}
	return out, why
}

// negative is a cacheable failure kept for its negative TTL.
func negative(e *Error, ttl uint32) result {
	return result{err: e, ttl: clampTTL(ttl, maxNegativeTTL), cache: true}
}

// String formats a Host for logs: "name pref [addr ...]".
func (h Host) String() string {
	var b strings.Builder
	b.WriteString(h.Name)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(int(h.Pref)))
	b.WriteString(" [")
	for i, a := range h.Addrs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.String())
	}
	b.WriteByte(']')
	return b.String()
}
