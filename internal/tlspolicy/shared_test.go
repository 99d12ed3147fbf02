package tlspolicy

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/mx"
)

// blackHole is a UDP socket that reads every DNS query and never answers
// (a dead first server), passing the question of each to got.
type blackHole struct {
	addr string
	got  chan string // "name type", in arrival order
}

func startBlackHole(t *testing.T) *blackHole {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{addr: pc.LocalAddr().String(), got: make(chan string, 64)}
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
			select {
			case b.got <- m.Question[0].Name + " " + dns.TypeToString[m.Question[0].Qtype]:
			default: // more than any test here sends; the count comes out short
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return b
}

// drain returns the queries the black hole got since the last drain. It
// sends a marker query of its own and collects up to it: loopback UDP
// delivers into the socket's queue within the send, so every query sent
// before the marker is ahead of it, and nothing depends on timing.
func (b *blackHole) drain(t *testing.T) []string {
	t.Helper()
	c, err := net.Dial("udp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("marker.invalid.", dns.TypeA)
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	var qs []string
	for {
		select {
		case q := <-b.got:
			if q == "marker.invalid. A" {
				return qs
			}
			qs = append(qs, q)
		case <-time.After(waitLimit):
			t.Fatalf("the black hole never saw the marker; got %v", qs)
		}
	}
}

// TestSharedExchangerSkipsDeadServer: with dns.servers [dead, good], the
// MX lookup waits on the dead server once and marks it down; the
// _mta-sts TXT and TLSA queries asked through the resolver's Exchanger
// (as the daemon wires them) then go to the good server only, while an
// STS with an Exchanger of its own (the old wiring) asks the dead one
// again.
func TestSharedExchangerSkipsDeadServer(t *testing.T) {
	t.Parallel()
	dead := startBlackHole(t)
	good := loopbacktest.StartDNS(t)
	good.Add(t, "a.test. 60 IN MX 10 mx1.a.test.", "mx1.a.test. 60 IN A 127.0.0.1",
		`_mta-sts.a.test. 60 IN TXT "v=STSv1; id=42"`)
	servers := []string{dead.addr, good.Addr}
	const timeout = 2 * time.Second // the dead server's share: 1 s
	r, err := mx.New(mx.Options{Servers: servers, Timeout: timeout, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if hosts, err := r.Lookup(ctx, "a.test"); err != nil || len(hosts) != 1 {
		t.Fatalf("MX lookup: %v, %v", hosts, err)
	}
	if qs := dead.drain(t); len(qs) == 0 || qs[0] != "a.test. MX" {
		t.Fatalf("the MX lookup did not ask the dead server first: %v", qs)
	}

	x := r.Exchanger()
	s, err := NewSTS(STSOptions{Exchanger: x})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if id, err := s.txtID(ctx, "a.test"); err != nil || id != "42" {
		t.Fatalf("mta-sts TXT through the shared exchanger: %q, %v", id, err)
	}
	if _, _, err := NewDANEExchanger(x, 25).Lookup(ctx, "mx1.a.test"); err != nil {
		t.Fatalf("TLSA through the shared exchanger: %v", err)
	}
	if qs := dead.drain(t); len(qs) != 0 {
		t.Fatalf("queries through the shared exchanger reached the server it knows is down: %v", qs)
	}

	// The control: an STS with its own Exchanger does not know, and
	// asks the dead server first.
	own, err := NewSTS(STSOptions{Servers: servers, DNSTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if id, err := own.txtID(ctx, "a.test"); err != nil || id != "42" {
		t.Fatalf("mta-sts TXT through its own exchanger: %q, %v", id, err)
	}
	if qs := dead.drain(t); len(qs) != 1 || qs[0] != "_mta-sts.a.test. TXT" {
		t.Fatalf("an STS with its own exchanger asked the dead server %v, want the TXT query once", qs)
	}
}
