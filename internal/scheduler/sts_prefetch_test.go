package scheduler

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// TestSTSPrefetchBeforeSlot: a domain's MTA-STS policy is fetched on the
// resolver workers before any of its pairs is granted a slot. While a slow
// policy server holds the fetch, ticks open no connection (the pool's
// Total stays 0); once it answers, the mail is delivered under the policy
// (policy=mta-sts, verified) and the policy was fetched once: the
// session's plan found it cached.
func TestSTSPrefetchBeforeSlot(t *testing.T) {
	t.Parallel()
	ca := loopbacktest.NewCA(t)
	sinks, port := loopbacktest.StartSinks(t, []string{ip(81, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{TLS: ca.TLSConfig(t, "mx.sts.test")}
	})
	var fetches atomic.Int64
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	web := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n"))
	}))
	web.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, "mta-sts.sts.test")}}
	web.StartTLS()
	t.Cleanup(web.Close)
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	txt := loopbacktest.StartDNS(t)
	txt.Add(t, `_mta-sts.sts.test. 60 IN TXT "v=STSv1; id=1"`, "mta-sts.sts.test. 60 IN A 127.0.0.1")
	sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Servers: []string{txt.Addr}, Roots: ca.Pool(),
		FetchTimeout: waitLimit, AllowLoopback: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, web.Listener.Addr().String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sts.Close)
	eng, err := tlspolicy.New(tlspolicy.Options{Roots: ca.Pool(), STS: sts})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MTASTS = ptr(true) })
		o.Pool.TLSPolicy = eng
	})
	h.mxFor("sts.test", ip(81, 10))

	// Not resolved beforehand: the first maintenance queues the lookup
	// on a resolver worker, which then waits in the policy fetch.
	injectOn(h, "x@sts.test")
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatal("the policy was never fetched")
	}
	for range 3 {
		h.s.Tick(h.clock.Now())
		if n := h.s.Pool().Total(); n != 0 {
			t.Fatalf("%d connections open while the policy fetch is in flight", n)
		}
	}
	if n := h.connects.Load(); n != 0 {
		t.Fatalf("%d connection attempts during the fetch", n)
	}
	released = true
	close(release)

	e := h.next(outcomeEvents...)
	if e.name != "delivered" || e.str("tls") == "" || e.str("mx") != "mx.sts.test" {
		t.Fatalf("%s via %s with tls %q, want delivered under MTA-STS", e.name, e.str("mx"), e.str("tls"))
	}
	if got := e.str("tls"); !strings.HasSuffix(got, " verified policy=mta-sts") {
		t.Errorf("tls %q, want verified policy=mta-sts", got)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d policy fetches, want 1", n)
	}
	if m := sinks[0].WaitMessages(t, 1); !m[0].TLS {
		t.Error("delivered in clear text")
	}
}

// TestSTSNoPrefetchForRoutes: a routed domain's mail goes to its route, so
// with MTA-STS on no policy lookup is made for it (none leaves the
// machine), and its mail is delivered through the route.
func TestSTSNoPrefetchForRoutes(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(81, 20)}, nil)
	var asked atomic.Int64
	txt := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	txt.NotifyStartedFunc = func() { close(started) }
	go func() { _ = txt.ListenAndServe() }()
	<-started
	t.Cleanup(func() { _ = txt.Shutdown() })
	sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Servers: []string{txt.PacketConn.LocalAddr().String()}, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sts.Close)
	eng, err := tlspolicy.New(tlspolicy.Options{STS: sts})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Shaper = testShaper(t, func(s *config.Shaping) { s.Default.MTASTS = ptr(true) })
		o.Pool.TLSPolicy = eng
		res, err := mx.New(mx.Options{Servers: []string{"127.0.0.1:1"}, AllowLoopback: true, Timeout: time.Second,
			Routes: []mx.Route{{Domain: "rt.test", Host: net.JoinHostPort(ip(81, 20), strconv.Itoa(port))}}})
		if err != nil {
			t.Fatal(err)
		}
		o.Pool.Resolver = res
	})
	injectOn(h, "x@rt.test")
	if e := h.next(outcomeEvents...); e.name != "delivered" {
		t.Fatalf("%s %v, want delivered through the route", e.name, e.fields)
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("%d MTA-STS lookups for a routed domain, want none", n)
	}
}
