package mx

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

// The DNS fault suite (issue 12 point 4): each fault a recursive server
// can show, from a real server on 127.0.0.1, and the class of the error
// it must give (temporary 4.4.x: deferred; permanent 5.x.x: bounced).

// replace sets name's records to records, dropping the old ones.
func (z *zone) replace(t testing.TB, name string, records ...string) {
	t.Helper()
	z.mu.Lock()
	delete(z.rrs, dns.CanonicalName(name))
	z.mu.Unlock()
	z.add(t, records...)
}

// deadServer is a UDP socket that reads every query and never answers,
// recording the questions, so a test can see which queries reached it.
type deadServer struct {
	addr string
	got  chan string // "name type" of each query, in arrival order
}

func startDeadServer(t testing.TB) *deadServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &deadServer{addr: pc.LocalAddr().String(), got: make(chan string, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed by the cleanup
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
				continue
			}
			q := m.Question[0]
			select {
			case d.got <- q.Name + " " + dns.TypeToString[q.Qtype]:
			default: // more than the test can want: it will see the count short
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return d
}

// next waits (at most 10 s) for the next query the dead server got.
func (d *deadServer) next(t testing.TB) string {
	t.Helper()
	select {
	case q := <-d.got:
		return q
	case <-time.After(10 * time.Second):
		t.Fatal("the dead server got no query")
		return ""
	}
}

// startUDPOnly serves z over UDP only: the TCP port of the same number
// accepts connections and closes them at once, as a server without TCP
// service (or a firewall resetting it) would.
func startUDPOnly(t testing.TB, z *zone) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			l.Close()
			continue
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		})
		s := &dns.Server{PacketConn: pc, Handler: z}
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- s.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("dns server: %v", err)
		}
		t.Cleanup(func() {
			l.Close()
			wg.Wait()
			if err := s.Shutdown(); err != nil {
				t.Errorf("dns server shutdown: %v", err)
			}
			<-done
		})
		return l.Addr().String()
	}
	t.Fatal("no free TCP+UDP port pair on 127.0.0.1 after 20 tries")
	return ""
}

// A dead first server spends only its share of the budget: the lookup,
// under a deadline equal to dns.timeout as the connection pool sets it,
// is answered by the second. The dead server is then asked nothing until
// its penalty ends, and then exactly one probe.
func TestFaultDeadFirstServer(t *testing.T) {
	t.Parallel()
	dead := startDeadServer(t)
	z := newZone(t)
	for _, d := range []string{"a", "b", "c", "d"} {
		z.add(t, d+".test. 300 IN MX 10 mx."+d+".test.", "mx."+d+".test. 300 IN A 127.0.0.1")
	}
	good := startDNS(t, z)
	clk := newClock()
	const budget = 2 * time.Second
	r := newResolver(t, dead.addr, func(o *Options) {
		o.Servers = append(o.Servers, good)
		o.Timeout = budget
		o.Now = clk.now
	})
	lookup := func(d string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), budget)
		defer cancel()
		hosts, err := r.Lookup(ctx, d)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if got := fmt.Sprint(hosts); got != "[mx."+d+" 10 [127.0.0.1:25]]" {
			t.Fatalf("%s = %s", d, got)
		}
	}
	lookup("a.test")
	if q := dead.next(t); q != "a.test. MX" {
		t.Fatalf("dead server's first query = %q, want a.test. MX", q)
	}
	// Down now: the A and AAAA queries of a.test and every query of b and
	// c go to the good server first.
	lookup("b.test")
	clk.advance(serverPenalty - time.Second)
	lookup("c.test")
	clk.advance(time.Second)
	// The penalty is over: one probe (d.test's MX query) reaches the dead
	// server, which fails it and is down again for d.test's host queries.
	lookup("d.test")
	// UDP on loopback keeps the order: had b or c reached the dead server,
	// their queries would come before d's.
	if q := dead.next(t); q != "d.test. MX" {
		t.Fatalf("dead server's second query = %q, want the probe d.test. MX", q)
	}
	if n := z.count("a.test", dns.TypeMX); n != 1 {
		t.Fatalf("good server got a.test MX %d times, want 1", n)
	}
}

// A probe that is answered makes the server healthy again: it is asked
// first from then on.
func TestFaultServerBackAfterProbe(t *testing.T) {
	t.Parallel()
	first := newZone(t, "x.test. 300 IN A 127.0.0.1", "y.test. 300 IN A 127.0.0.1")
	second := newZone(t, "x.test. 300 IN A 127.0.0.1", "y.test. 300 IN A 127.0.0.1")
	x := NewExchanger([]string{startDNS(t, first), startDNS(t, second)}, time.Second)
	clk := newClock()
	x.now = clk.now
	x.settle(attempt{i: 0}, false, false) // as after a timeout
	if _, err := x.Exchange(t.Context(), "x.test", dns.TypeA, nil); err != nil {
		t.Fatal(err)
	}
	if a, b := first.count("x.test", dns.TypeA), second.count("x.test", dns.TypeA); a != 0 || b != 1 {
		t.Fatalf("during the penalty: first asked %d, second %d; want 0, 1", a, b)
	}
	clk.advance(serverPenalty)
	for _, name := range []string{"x.test", "y.test"} {
		if _, err := x.Exchange(t.Context(), name, dns.TypeA, nil); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := first.count("y.test", dns.TypeA), second.count("y.test", dns.TypeA); a != 1 || b != 0 {
		t.Fatalf("after the probe: first asked %d, second %d; want 1, 0", a, b)
	}
}

// Only one probe is let through while it is in flight: a concurrent query
// sees the server still down.
func TestFaultOneProbeAtATime(t *testing.T) {
	t.Parallel()
	x := NewExchanger([]string{"127.0.0.1:1", "127.0.0.1:2"}, time.Second)
	clk := newClock()
	x.now = clk.now
	x.settle(attempt{i: 0}, false, false)
	clk.advance(serverPenalty)
	first := x.order()
	second := x.order()
	if !slices.Equal(first, []attempt{{i: 0, probe: true}, {i: 1}}) {
		t.Fatalf("first order after the penalty = %v, want the probe first", first)
	}
	if !slices.Equal(second, []attempt{{i: 1}, {i: 0, down: true}}) {
		t.Fatalf("order during the probe = %v, want server 0 at the back", second)
	}
	x.settle(first[0], false, true) // the caller gave up: the probe is due again
	if third := x.order(); !slices.Equal(third, first) {
		t.Fatalf("order after an abandoned probe = %v, want %v", third, first)
	}
}

// SERVFAIL from the first server: the second answers, and the first is
// not penalised (it is alive; the zone is broken), so it is asked again.
// From the only server: temporary 4.4.3, a deferral, not a bounce.
func TestFaultServfail(t *testing.T) {
	t.Parallel()
	bad := newZone(t, "sf.test. 300 IN A 127.0.0.1", "sf2.test. 300 IN A 127.0.0.1")
	bad.setRcode("sf.test", dns.RcodeServerFailure)
	bad.setRcode("sf2.test", dns.RcodeServerFailure)
	good := newZone(t, "sf.test. 300 IN A 127.0.0.1", "sf2.test. 300 IN A 127.0.0.1")
	badAddr := startDNS(t, bad)
	r := newResolver(t, badAddr, func(o *Options) { o.Servers = append(o.Servers, startDNS(t, good)) })
	for _, d := range []string{"sf.test", "sf2.test"} {
		if _, err := r.Lookup(t.Context(), d); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if n := bad.count(d, dns.TypeMX); n != 1 {
			t.Fatalf("SERVFAIL server asked %s MX %d times, want 1", d, n)
		}
	}
	r = newResolver(t, badAddr, nil)
	_, err := r.Lookup(t.Context(), "sf.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
	if !strings.Contains(err.Error(), "SERVFAIL") {
		t.Fatalf("error %q does not say SERVFAIL", err)
	}
}

func TestFaultNXDomainAndNullMX(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"null.test. 300 IN MX 0 .",
		"twonull.test. 300 IN MX 0 .",
		"twonull.test. 300 IN MX 10 .",
	)
	r := newResolver(t, startDNS(t, z), nil)
	_, err := r.Lookup(t.Context(), "nx.test")
	wantKind(t, err, KindNXDomain, smtp.EnhancedCode{5, 1, 2}, false)
	for _, d := range []string{"null.test", "twonull.test"} {
		_, err = r.Lookup(t.Context(), d)
		wantKind(t, err, KindNullMX, smtp.EnhancedCode{5, 1, 10}, false)
	}
}

// An MX target that is a CNAME is followed; one whose chain ends nowhere
// is a host without an address.
func TestFaultMXToCNAME(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"cn.test. 300 IN MX 10 alias.cn.test.",
		"alias.cn.test. 300 IN CNAME real.cn.test.",
		"real.cn.test. 300 IN A 127.0.0.7",
		"dangling.test. 300 IN MX 10 alias.dangling.test.",
		"alias.dangling.test. 300 IN CNAME gone.dangling.test.",
	)
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "cn.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[alias.cn.test 10 [127.0.0.7:25]]" {
		t.Fatalf("cn.test = %s", got)
	}
	_, err = r.Lookup(t.Context(), "dangling.test")
	wantKind(t, err, KindNoAddress, smtp.EnhancedCode{4, 4, 4}, true)
}

// An MX target written as an IP address is not a host name: it is never
// asked of the DNS nor connected to; with no other target the domain is
// deferred (4.4.4), as Postfix does, and the error says why.
func TestFaultMXToIPLiteral(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"lit.test. 300 IN MX 10 127.0.0.5.",
		"lit6.test. 300 IN MX 10 ::1.",
		"127.0.0.5. 300 IN A 127.0.0.5",
		"mixlit.test. 300 IN MX 5 127.0.0.5.",
		"mixlit.test. 300 IN MX 10 mx.mixlit.test.",
		"mx.mixlit.test. 300 IN A 127.0.0.6",
	)
	r := newResolver(t, startDNS(t, z), nil)
	for _, d := range []string{"lit.test", "lit6.test"} {
		_, err := r.Lookup(t.Context(), d)
		wantKind(t, err, KindNoAddress, smtp.EnhancedCode{4, 4, 4}, true)
		if !strings.Contains(err.Error(), "is an IP address") {
			t.Fatalf("%s: error %q does not say the target is an IP address", d, err)
		}
	}
	hosts, err := r.Lookup(t.Context(), "mixlit.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.mixlit.test 10 [127.0.0.6:25]]" {
		t.Fatalf("mixlit.test = %s", got)
	}
	if n := z.count("127.0.0.5", dns.TypeA); n != 0 {
		t.Fatalf("the literal target was asked of the DNS %d times", n)
	}
}

// MX hosts without an address are skipped; when none has one, the domain
// is deferred (4.4.4).
func TestFaultMXHostWithoutAddress(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"skip.test. 300 IN MX 5 gone.skip.test.",
		"skip.test. 300 IN MX 10 txt.skip.test.",
		"skip.test. 300 IN MX 20 mx.skip.test.",
		"txt.skip.test. 300 IN TXT \"no address\"",
		"mx.skip.test. 300 IN A 127.0.0.8",
		"none.test. 300 IN MX 5 gone.none.test.",
	)
	r := newResolver(t, startDNS(t, z), nil)
	hosts, err := r.Lookup(t.Context(), "skip.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.skip.test 20 [127.0.0.8:25]]" {
		t.Fatalf("skip.test = %s", got)
	}
	_, err = r.Lookup(t.Context(), "none.test")
	wantKind(t, err, KindNoAddress, smtp.EnhancedCode{4, 4, 4}, true)
}

// 100 MX records: only MaxMXHosts hosts are resolved, the lowest
// preferences first, and the cut through a run of equal preferences
// varies from one resolution to the next.
func TestFault100MX(t *testing.T) {
	t.Parallel()
	z := newZone(t)
	for i := range 100 {
		pref := 20
		if i < 5 {
			pref = 5
		}
		h := fmt.Sprintf("mx%02d.many.test.", i)
		z.add(t, fmt.Sprintf("many.test. 60 IN MX %d %s", pref, h), h+" 60 IN A 127.0.0.1")
	}
	clk := newClock()
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Now = clk.now })
	sets := map[string]bool{}
	for round := range 5 {
		hosts, err := r.Lookup(t.Context(), "many.test")
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != defaultMaxHosts {
			t.Fatalf("%d hosts, want %d", len(hosts), defaultMaxHosts)
		}
		var rest []string
		for i, h := range hosts {
			want := uint16(20)
			if i < 5 {
				want = 5
			}
			if h.Pref != want {
				t.Fatalf("host %d %s has preference %d, want %d", i, h, h.Pref, want)
			}
			if want == 20 {
				rest = append(rest, h.Name)
			}
		}
		slices.Sort(rest)
		sets[strings.Join(rest, ",")] = true
		aQueries := 0
		for i := range 100 {
			aQueries += z.count(fmt.Sprintf("mx%02d.many.test", i), dns.TypeA)
		}
		if want := defaultMaxHosts * (round + 1); aQueries != want {
			t.Fatalf("round %d: %d A queries, want %d (one per host kept)", round, aQueries, want)
		}
		clk.advance(time.Minute) // past the TTL: resolve again
	}
	if len(sets) < 2 {
		t.Fatalf("the same preference-20 hosts were kept in 5 resolutions: %v", sets)
	}
}

// Addresses are bounded per host (families alternated when cut) and per
// lookup.
func TestFaultAddressBounds(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"addrs.test. 300 IN MX 10 a.addrs.test.",
		"addrs.test. 300 IN MX 20 b.addrs.test.",
		"addrs.test. 300 IN MX 30 c.addrs.test.",
	)
	for _, h := range []string{"a", "b", "c"} {
		for i := 1; i <= 8; i++ {
			z.add(t, fmt.Sprintf("%s.addrs.test. 300 IN A 127.0.1.%d", h, i))
		}
		z.add(t, h+".addrs.test. 300 IN AAAA ::1")
	}
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.MaxAddrsPerHost = 4; o.MaxAddrs = 9 })
	hosts, err := r.Lookup(t.Context(), "addrs.test")
	if err != nil {
		t.Fatal(err)
	}
	want := "[a.addrs.test 10 [127.0.1.1:25 [::1]:25 127.0.1.2:25 127.0.1.3:25] " +
		"b.addrs.test 20 [127.0.1.1:25 [::1]:25 127.0.1.2:25 127.0.1.3:25] " +
		"c.addrs.test 30 [127.0.1.1:25]]"
	if got := fmt.Sprint(hosts); got != want {
		t.Fatalf("addrs.test =\n%s\nwant\n%s", got, want)
	}
	r = newResolver(t, startDNS(t, z), func(o *Options) { o.MaxAddrs = 8 })
	hosts, err = r.Lookup(t.Context(), "addrs.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(hosts); got != "a.addrs.test,b.addrs.test" {
		t.Fatalf("with 8 addresses at most, hosts = %s", got)
	}
}

// A truncated answer is asked again over TCP; a server that truncates and
// has no TCP service gives way to the next server, or, alone, to a
// temporary failure.
func TestFaultTruncated(t *testing.T) {
	t.Parallel()
	records := []string{"tc.test. 300 IN MX 10 mx.tc.test.", "mx.tc.test. 300 IN A 127.0.0.1"}
	tcz := newZone(t, records...)
	tcz.truncateUDP = true
	good := newZone(t, records...)
	udpOnly := startUDPOnly(t, tcz)
	r := newResolver(t, udpOnly, func(o *Options) { o.Servers = append(o.Servers, startDNS(t, good)) })
	hosts, err := r.Lookup(t.Context(), "tc.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hosts); got != "[mx.tc.test 10 [127.0.0.1:25]]" {
		t.Fatalf("tc.test = %s", got)
	}
	if n := tcz.count("tc.test", dns.TypeMX); n != 1 {
		t.Fatalf("truncating server asked %d times, want 1", n)
	}
	r = newResolver(t, udpOnly, nil)
	_, err = r.Lookup(t.Context(), "tc.test")
	wantKind(t, err, KindTemp, smtp.EnhancedCode{4, 4, 3}, true)
	if !strings.Contains(err.Error(), "TCP retry") {
		t.Fatalf("error %q does not name the TCP retry", err)
	}
}

// An answer that changes between lookups: the cached one is used within
// its TTL, the new one after.
func TestFaultAnswerChanges(t *testing.T) {
	t.Parallel()
	z := newZone(t,
		"chg.test. 60 IN MX 10 old.chg.test.",
		"old.chg.test. 60 IN A 127.0.0.1",
		"new.chg.test. 60 IN A 127.0.0.2",
	)
	clk := newClock()
	r := newResolver(t, startDNS(t, z), func(o *Options) { o.Now = clk.now })
	get := func() string {
		t.Helper()
		hosts, err := r.Lookup(t.Context(), "chg.test")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(hosts)
	}
	if got := get(); got != "[old.chg.test 10 [127.0.0.1:25]]" {
		t.Fatalf("first = %s", got)
	}
	z.replace(t, "chg.test", "chg.test. 60 IN MX 10 new.chg.test.")
	clk.advance(59 * time.Second)
	if got := get(); got != "[old.chg.test 10 [127.0.0.1:25]]" {
		t.Fatalf("within the TTL = %s, want the cached answer", got)
	}
	clk.advance(time.Second)
	if got := get(); got != "[new.chg.test 10 [127.0.0.2:25]]" {
		t.Fatalf("after the TTL = %s, want the new answer", got)
	}
	if n := z.count("chg.test", dns.TypeMX); n != 2 {
		t.Fatalf("MX asked %d times, want 2", n)
	}
}

// Bounds must be sane: negative ones are refused.
func TestFaultBoundsRejected(t *testing.T) {
	t.Parallel()
	for _, edit := range []func(*Options){
		func(o *Options) { o.MaxMXHosts = -1 },
		func(o *Options) { o.MaxAddrsPerHost = -1 },
		func(o *Options) { o.MaxAddrs = -1 },
	} {
		o := Options{Servers: []string{"127.0.0.1:53"}}
		edit(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Fatalf("New(%+v) = %v, want a negative-bound error", o, err)
		}
	}
}

// FuzzMXAnswer feeds arbitrary wire-format messages, as a server might
// send them in reply to an MX question, through the answer handling: the
// CNAME walk, the choice of MX targets and the glue. Nothing may panic;
// the hosts must be at most the bound, in preference order, distinct, and
// none an IP address; glue only for those hosts.
func FuzzMXAnswer(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		msg := new(dns.Msg)
		if err := msg.Unpack(b); err != nil {
			return
		}
		rrs, _, _ := followChain(msg, "a.test.", dns.TypeMX)
		_ = negativeTTL(msg)
		const max = 3
		hosts, kind, why := mxTargets(rrs, max)
		switch kind {
		case 0:
			if len(hosts) == 0 || len(hosts) > max {
				t.Fatalf("%d hosts, bound %d", len(hosts), max)
			}
		case KindNoAddress:
			if why == "" || len(hosts) != 0 {
				t.Fatalf("no-address with why %q and %d hosts", why, len(hosts))
			}
		case KindNXDomain, KindNullMX:
			if len(hosts) != 0 {
				t.Fatalf("%v with %d hosts", kind, len(hosts))
			}
		default:
			t.Fatalf("kind %v", kind)
		}
		targets := map[string]bool{}
		for i, h := range hosts {
			if i > 0 && hosts[i-1].Pref > h.Pref {
				t.Fatalf("hosts out of preference order: %v", hosts)
			}
			if targets[h.Name+"."] {
				t.Fatalf("host %s twice", h.Name)
			}
			targets[h.Name+"."] = true
			if _, err := netip.ParseAddr(h.Name); err == nil || h.Name == "" {
				t.Fatalf("host name %q kept", h.Name)
			}
		}
		for name, ga := range buildGlue(msg.Extra, targets) {
			if !targets[name] {
				t.Fatalf("glue for %s, not a target", name)
			}
			for _, a := range ga.a {
				if !a.Is4() {
					t.Fatalf("A glue %v is not IPv4", a)
				}
			}
		}
	})
}

// A probe due at a later server's place ends unused when an earlier server
// answers: the next query probes again, rather than the server staying
// down for good behind a probe that never ran.
func TestFaultProbeBehindAnAnswer(t *testing.T) {
	t.Parallel()
	a := newZone(t, "p.test. 300 IN A 127.0.0.1", "q.test. 300 IN A 127.0.0.1")
	b := newZone(t, "p.test. 300 IN A 127.0.0.1", "q.test. 300 IN A 127.0.0.1")
	x := NewExchanger([]string{startDNS(t, a), startDNS(t, b), "127.0.0.1:1"}, time.Second)
	clk := newClock()
	x.now = clk.now
	x.settle(attempt{i: 1}, false, false) // b timed out once
	clk.advance(serverPenalty)
	if _, err := x.Exchange(t.Context(), "p.test", dns.TypeA, nil); err != nil {
		t.Fatal(err)
	}
	if n := b.count("p.test", dns.TypeA); n != 0 {
		t.Fatalf("b asked %d times though a answered first", n)
	}
	want := []attempt{{i: 0}, {i: 1, probe: true}, {i: 2}}
	if got := x.order(); !slices.Equal(got, want) {
		t.Fatalf("order after a query a answered = %v, want b's probe due again at its place %v", got, want)
	}
}
