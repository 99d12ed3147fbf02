package main

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// dnsFault is what the DNS server does for one domain during a phase.
type dnsFault int32

const (
	dnsOK       dnsFault = iota
	dnsServfail          // SERVFAIL to the MX query
	dnsTimeout           // no answer at all: mtad's query times out
)

// dnsSchedule is each flaky domain's round; domains start at different
// offsets. Two faulty phases in six.
var dnsSchedule = []dnsFault{dnsOK, dnsOK, dnsServfail, dnsOK, dnsOK, dnsTimeout}

// zone is the soak's DNS: MX records for its domains, each pointing at a
// host name whose A record is one sink's address. Answers carry a short
// TTL so mtad asks again within a fault phase.
type zone struct {
	mu   sync.Mutex
	mx   map[string]string // domain (fqdn) → MX host (fqdn)
	a    map[string]string // host (fqdn) → IPv4
	mode map[string]*atomic.Int32

	faults *faultCounts
	srv    *dns.Server
	done   chan struct{}
	addr   string
}

func startDNS(fc *faultCounts) (*zone, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	z := &zone{mx: map[string]string{}, a: map[string]string{}, mode: map[string]*atomic.Int32{},
		faults: fc, done: make(chan struct{}), addr: pc.LocalAddr().String()}
	started := make(chan struct{})
	z.srv = &dns.Server{PacketConn: pc, Handler: z, NotifyStartedFunc: func() { close(started) }}
	go func() {
		defer close(z.done)
		if err := z.srv.ActivateAndServe(); err != nil {
			fmt.Println("soak: dns server:", err)
		}
	}()
	<-started
	return z, nil
}

func (z *zone) stop() {
	_ = z.srv.Shutdown()
	<-z.done
}

// add makes domain's MX point at mx.<domain>, whose A record is ip.
func (z *zone) add(domain, ip string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	d := dns.Fqdn(domain)
	z.mx[d] = "mx." + d
	z.a["mx."+d] = ip
	z.mode[d] = new(atomic.Int32)
}

func (z *zone) setMode(domain string, f dnsFault) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.mode[dns.Fqdn(domain)].Store(int32(f))
}

func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	mx, isDomain := z.mx[name]
	ip, isHost := z.a[name]
	var mode dnsFault
	if isDomain {
		mode = dnsFault(z.mode[name].Load())
	}
	z.mu.Unlock()
	switch {
	case isDomain && mode == dnsServfail:
		z.faults.add("dns SERVFAIL")
		m.Rcode = dns.RcodeServerFailure
	case isDomain && mode == dnsTimeout:
		z.faults.add("dns timeout (no answer)")
		return
	case isDomain && q.Qtype == dns.TypeMX:
		m.Answer = append(m.Answer, &dns.MX{Hdr: hdr(name, dns.TypeMX), Preference: 10, Mx: mx})
	case isHost && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr(name, dns.TypeA), A: net.ParseIP(ip)})
	case isDomain || isHost:
		// NOERROR, no data (AAAA of a host, A of a domain).
	default:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 5}
}
