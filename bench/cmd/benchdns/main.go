// Command benchdns is the benchmark's loopback DNS server: it answers MX
// queries for the test domains (d0.bench … and hot.bench, see bench/internal/topo)
// with one MX host each, and A queries for those hosts with the loopback
// address the counting sink listens on. It serves UDP and TCP on one port of
// 127.0.0.1, prints that port on stdout, and runs until SIGINT or SIGTERM.
//
// It must never listen outside 127.0.0.0/8 nor answer for names outside the
// test zone (anything else is NXDOMAIN, so a misrouted lookup fails loudly).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/miekg/dns"

	"github.com/mtad/mtad/bench/internal/topo"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to serve on (port 0 picks one; UDP and TCP share it)")
	ndomains := flag.Int("domains", 100, "number of dN.bench domains besides hot.bench")
	flag.Parse()

	doms, err := topo.Domains(*ndomains)
	if err != nil {
		fatal(err)
	}
	srv, err := start(*listen, newZone(doms))
	if err != nil {
		fatal(err)
	}
	fmt.Println(srv.port)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	if err := srv.close(); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchdns:", err)
	os.Exit(1)
}

// zone is the whole of what the server knows, keyed by lower-case FQDN.
type zone struct {
	mx map[string]string   // domain → MX host
	a  map[string]net.IP   // MX host → address
	ok map[string]struct{} // every name that exists (for NODATA vs NXDOMAIN)
}

func newZone(doms []topo.Domain) *zone {
	z := &zone{mx: map[string]string{}, a: map[string]net.IP{}, ok: map[string]struct{}{}}
	for _, d := range doms {
		name, host := dns.Fqdn(d.Name), dns.Fqdn(d.MX)
		z.mx[name] = host
		z.a[host] = net.IP(d.Addr.AsSlice())
		z.ok[name], z.ok[host] = struct{}{}, struct{}{}
	}
	return z
}

const ttl = 300

// ServeDNS answers every question of the query from the zone.
func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		if _, known := z.ok[name]; !known {
			resp.Rcode = dns.RcodeNameError
			continue
		}
		switch q.Qtype {
		case dns.TypeMX:
			if host, ok := z.mx[name]; ok {
				resp.Answer = append(resp.Answer, &dns.MX{
					Hdr:        dns.RR_Header{Name: q.Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: ttl},
					Preference: 10, Mx: host,
				})
				resp.Extra = append(resp.Extra, z.aRecord(host))
			}
		case dns.TypeA:
			if _, ok := z.a[name]; ok {
				resp.Answer = append(resp.Answer, z.aRecord(name))
			}
		}
		// Any other type of a known name: NOERROR with no answer (NODATA).
	}
	_ = w.WriteMsg(resp) // a client that went away is not our problem
}

func (z *zone) aRecord(host string) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: host, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: z.a[host]}
}

// server is a running UDP+TCP pair on one port.
type server struct {
	port     int
	udp, tcp *dns.Server
	done     chan error // one result per server goroutine
}

// start listens on addr (UDP first, then TCP on the same port, retrying with
// a new port a few times when port 0 was asked and TCP's is taken) and serves
// h until close.
func start(addr string, h dns.Handler) (*server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("parsing listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("listen address %q is not a loopback IP", addr)
	}
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, fmt.Errorf("listening on udp %s: %w", addr, err)
		}
		p := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p)))
		if err == nil {
			break
		}
		pc.Close()
		if port != "0" || try >= 10 {
			return nil, fmt.Errorf("listening on tcp %s:%d: %w", host, p, err)
		}
	}
	s := &server{
		port: ln.Addr().(*net.TCPAddr).Port,
		udp:  &dns.Server{PacketConn: pc, Handler: h},
		tcp:  &dns.Server{Listener: ln, Handler: h},
		done: make(chan error, 2),
	}
	started := make(chan struct{}, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() { s.done <- srv.ActivateAndServe() }()
	}
	for range 2 {
		select {
		case <-started:
		case err := <-s.done: // failed before it started: stop the other one
			s.done <- err
			_ = s.close()
			return nil, fmt.Errorf("starting dns server: %w", err)
		}
	}
	return s, nil
}

// close stops both servers and waits for their goroutines.
func (s *server) close() error {
	err := errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
	for range 2 {
		<-s.done // Shutdown makes ActivateAndServe return; its error is the shutdown itself
	}
	return err
}
