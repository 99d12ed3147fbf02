package scheduler

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
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
