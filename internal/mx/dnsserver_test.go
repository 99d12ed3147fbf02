package mx

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// qkey names one question the test server was asked.
type qkey struct {
	name  string
	qtype uint16
}

// zone is the test DNS server's data and its record of the queries it got.
// Each test builds its own and configures it before looking anything up.
type zone struct {
	mu          sync.Mutex
	rrs         map[string][]dns.RR // by canonical owner name
	rcode       map[string]int      // forced reply code by name
	extra       map[qkey][]dns.RR   // additional section by question
	block       map[qkey]chan struct{}
	started     chan qkey // told when a blocked question arrives
	truncateUDP bool
	queries     map[qkey]int
	tcpQueries  int
}

func newZone(t testing.TB, records ...string) *zone {
	t.Helper()
	z := &zone{
		rrs:     map[string][]dns.RR{},
		rcode:   map[string]int{},
		extra:   map[qkey][]dns.RR{},
		block:   map[qkey]chan struct{}{},
		started: make(chan qkey, 16),
		queries: map[qkey]int{},
	}
	z.add(t, records...)
	return z
}

// add parses zone-file lines ("a.test. 300 IN A 127.0.0.1") into the zone.
func (z *zone) add(t testing.TB, records ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("bad test record %q: %v", s, err)
		}
		name := dns.CanonicalName(rr.Header().Name)
		z.rrs[name] = append(z.rrs[name], rr)
	}
}

func (z *zone) setRcode(name string, rcode int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.rcode[dns.CanonicalName(name)] = rcode
}

func (z *zone) setExtra(t testing.TB, name string, qtype uint16, records ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	k := qkey{dns.CanonicalName(name), qtype}
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("bad test record %q: %v", s, err)
		}
		z.extra[k] = append(z.extra[k], rr)
	}
}

// blockQuery makes the server hold the question until release is closed,
// telling z.started when it arrives.
func (z *zone) blockQuery(name string, qtype uint16, release chan struct{}) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.block[qkey{dns.CanonicalName(name), qtype}] = release
}

func (z *zone) count(name string, qtype uint16) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[qkey{dns.CanonicalName(name), qtype}]
}

func (z *zone) total() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	n := 0
	for _, c := range z.queries {
		n += c
	}
	return n
}

func (z *zone) tcpCount() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.tcpQueries
}

var testSOA = func() dns.RR {
	rr, err := dns.NewRR("test. 10 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 10")
	if err != nil {
		panic(err)
	}
	return rr
}()

// ServeDNS answers like a recursive server that does not chase CNAMEs: the
// records of the asked type (or a CNAME) at the name, NODATA with an SOA
// when the name has other records, NXDOMAIN with an SOA when it has none.
func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	k := qkey{dns.CanonicalName(q.Name), q.Qtype}
	udp := w.LocalAddr().Network() == "udp"

	z.mu.Lock()
	z.queries[k]++
	if !udp {
		z.tcpQueries++
	}
	release := z.block[k]
	rcode, forced := z.rcode[k.name]
	records := z.rrs[k.name]
	extra := z.extra[k]
	truncate := z.truncateUDP && udp
	z.mu.Unlock()

	if release != nil {
		z.started <- k
		<-release
	}

	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	switch {
	case forced:
		m.Rcode = rcode
	case len(records) == 0:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{testSOA}
	default:
		for _, rr := range records {
			if t := rr.Header().Rrtype; t == q.Qtype || t == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{testSOA}
		}
		m.Extra = extra
	}
	switch {
	case truncate:
		m.Truncated = true
		m.Answer, m.Ns, m.Extra = nil, nil, nil
	case udp:
		// As a real server does: what does not fit the client's buffer is
		// cut and the answer marked truncated, for a retry over TCP.
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// startDNS serves z on 127.0.0.1, UDP and TCP on the same port, until the
// test ends, and returns the address.
func startDNS(t testing.TB, z *zone) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			// The TCP port's UDP twin is taken: try another port.
			l.Close()
			continue
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: z}, {Listener: l, Handler: z}} {
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
				if err := s.Shutdown(); err != nil {
					t.Errorf("dns server shutdown: %v", err)
				}
				<-done
			})
		}
		return l.Addr().String()
	}
	t.Fatal("no free TCP+UDP port pair on 127.0.0.1 after 20 tries")
	return ""
}

// silentServer is a UDP socket that never replies: nothing reads it, so
// queries sit in its buffer until the client gives up.
func silentServer(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// clock is an injectable clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newResolver builds a Resolver for the test server at addr, allowing
// loopback addresses unless opts says otherwise through edit.
func newResolver(t testing.TB, addr string, edit func(*Options)) *Resolver {
	t.Helper()
	opts := Options{Servers: []string{addr}, Timeout: 2 * time.Second, AllowLoopback: true}
	if edit != nil {
		edit(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// names returns the hosts' names, for comparing orders.
func names(hosts []Host) string {
	var s []string
	for _, h := range hosts {
		s = append(s, h.Name)
	}
	return strings.Join(s, ",")
}
