// Package loopbacktest gives the connpool and scheduler tests a real remote
// side on loopback: a DNS server (miekg/dns on 127.0.0.1:0) serving the
// records a test adds, and go-smtp sink servers on several 127.0.0.x
// addresses sharing one port, which record what they receive and how many
// sessions they held at once. It is for tests only and must never be
// imported by production code.
package loopbacktest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS is a DNS server on 127.0.0.1 (UDP and TCP, same port) answering from
// the records added with Add; a name without records of the asked type gets
// NOERROR with no answers when it has any record, NXDOMAIN otherwise.
type DNS struct {
	// Addr is "127.0.0.1:port", for mx.Options.Servers.
	Addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	rcodes   map[string]int      // forced response codes by lower-case FQDN
	secure   bool                // answers carry the AD bit (SetSecure)
	insecure map[string]bool     // names answered without it all the same
}

// StartDNS starts a server that stops when the test ends.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	z := &DNS{records: make(map[string][]dns.RR), rcodes: make(map[string]int), insecure: make(map[string]bool)}
	// The kernel picks a free UDP port; the same TCP port may be taken (by
	// another test's connection, say), so a few ports are tried.
	var pc net.PacketConn
	var ln net.Listener
	var lastErr error
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatalf("dns listen udp: %v", err)
		}
		if ln, lastErr = net.Listen("tcp", pc.LocalAddr().String()); lastErr == nil {
			break
		}
		pc.Close()
	}
	if lastErr != nil {
		t.Fatalf("dns listen tcp: no free TCP port matching a UDP one in 20 tries: %v", lastErr)
	}
	z.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: z}
	tcp := &dns.Server{Listener: ln, Handler: z}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.ActivateAndServe()
		}()
		<-started
	}
	t.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		wg.Wait()
	})
	return z
}

// Add adds records in zone-file syntax ("example.com. 60 IN MX 10 mx.example.com.").
func (z *DNS) Add(t testing.TB, records ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("dns record %q: %v", s, err)
		}
		name := strings.ToLower(rr.Header().Name)
		z.records[name] = append(z.records[name], rr)
	}
}

// Replace replaces every record of the names the given records own by
// those records (a zone change, as a TXT id changing).
func (z *DNS) Replace(t testing.TB, records ...string) {
	t.Helper()
	rrs := make([]dns.RR, len(records))
	for i, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("dns record %q: %v", s, err)
		}
		rrs[i] = rr
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, rr := range rrs {
		delete(z.records, strings.ToLower(rr.Header().Name))
	}
	for _, rr := range rrs {
		name := strings.ToLower(rr.Header().Name)
		z.records[name] = append(z.records[name], rr)
	}
}

// SetRcode makes every query for name (an FQDN) answer with rcode, e.g.
// dns.RcodeServerFailure.
func (z *DNS) SetRcode(name string, rcode int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.rcodes[strings.ToLower(name)] = rcode
}

// SetSecure makes the server act as a DNSSEC-validating resolver whose
// answers all validated: a query asking with AD=1 or DO=1 (RFC 6840
// §5.7) gets the AD bit back, except for the names given to SetInsecure.
// It does not sign anything: DANE tests need the bit, not the signatures.
func (z *DNS) SetSecure(on bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.secure = on
}

// SetInsecure makes the answers about names (FQDNs) lack the AD bit, as
// for names in an unsigned zone.
func (z *DNS) SetInsecure(names ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, n := range names {
		z.insecure[strings.ToLower(n)] = true
	}
}

// ServeDNS answers one query from the records.
func (z *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		z.mu.Lock()
		rcode, forced := z.rcodes[strings.ToLower(q.Name)]
		rrs, known := z.records[strings.ToLower(q.Name)]
		opt := req.IsEdns0()
		resp.AuthenticatedData = z.secure && !z.insecure[strings.ToLower(q.Name)] &&
			(req.AuthenticatedData || opt != nil && opt.Do())
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
			}
		}
		z.mu.Unlock()
		switch {
		case forced:
			resp.Rcode = rcode
			resp.Answer = nil
		case !known:
			resp.Rcode = dns.RcodeNameError
		}
	}
	_ = w.WriteMsg(resp)
}
