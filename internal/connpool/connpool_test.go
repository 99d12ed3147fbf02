package connpool

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 10 * time.Second // a hang guard, never a timing assertion

type result struct {
	d   *queue.Delivery
	at  Attempt
	res *smtpclient.Result
	err error
}

type connFail struct {
	pair *queue.Pair
	at   Attempt
	err  error
}

// recorder is the test's Outcomes: it hands every report to the test.
type recorder struct {
	results   chan result
	connFails chan connFail
}

func (r *recorder) Result(d *queue.Delivery, at Attempt, res *smtpclient.Result, err error) {
	r.results <- result{d, at, res, err}
}

func (r *recorder) ConnectFailed(p *queue.Pair, at Attempt, err error) {
	r.connFails <- connFail{p, at, err}
}

type initEvent struct {
	domain string
	slot   int
	fd     int
}

type harness struct {
	t     *testing.T
	dns   *loopbacktest.DNS
	q     *queue.Queues
	set   *binding.Set
	reg   *hooks.Registry
	sp    *spool.Spool
	out   *recorder
	inits chan initEvent
	ends  chan hooks.SessionResult
	pool  *Pool
	port  int
}

// bindingIPs are the test bindings' source addresses, slots 0..3.
var bindingIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}

// newHarness builds a pool delivering to port (the sinks' port) with the
// loopback DNS server, four bindings and a real spool for bodies.
func newHarness(t *testing.T, port int, extra []binding.Config, routes []mx.Route, edit func(*Options)) *harness {
	t.Helper()
	h := &harness{
		t: t, dns: loopbacktest.StartDNS(t), q: queue.New(), reg: hooks.NewRegistry(),
		out:   &recorder{results: make(chan result, 1000), connFails: make(chan connFail, 100)},
		inits: make(chan initEvent, 1000), ends: make(chan hooks.SessionResult, 100), port: port,
	}
	var cfgs []binding.Config
	for i, ip := range bindingIPs {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i), Address: ip, EHLO: fmt.Sprintf("b%d.mta.test", i)})
	}
	cfgs = append(cfgs, extra...)
	set, err := binding.New(cfgs, nil, "mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h.set = set
	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h.sp = sp
	res, err := mx.New(mx.Options{Servers: []string{h.dns.Addr}, Port: port, AllowLoopback: true, Timeout: 2 * time.Second, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	h.reg.PostInitiateConnectionSMTP.RegisterLast(func(dr *queue.DomainRecord, slot int, _ time.Time, fd int) {
		h.inits <- initEvent{dr.Name, slot, fd}
	})
	h.reg.PostSessionSMTP.RegisterLast(func(_ *queue.DomainRecord, _ int, _ time.Time, r hooks.SessionResult) {
		h.ends <- r
	})
	opts := Options{
		MaxConnections: 20, Resolver: res, Bindings: set, Bodies: sp, Outcomes: h.out, Hooks: h.reg,
		IdleTimeout: 100 * time.Millisecond, ConnectTimeout: 2 * time.Second,
		Timeouts: smtpclient.Timeouts{Greeting: 5 * time.Second, EHLO: 5 * time.Second, StartTLS: 5 * time.Second,
			Mail: 5 * time.Second, Rcpt: 5 * time.Second, DataInit: 5 * time.Second, DataBlock: 5 * time.Second,
			DataTerm: 5 * time.Second, Quit: 2 * time.Second},
	}
	if edit != nil {
		edit(&opts)
	}
	pool, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.pool = pool
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		if err := pool.Close(ctx); err != nil {
			t.Errorf("pool close: %v", err)
		}
		if err := sp.Close(); err != nil {
			t.Errorf("spool close: %v", err)
		}
	})
	return h
}

// push spools a message to rcpts (all at domain) and queues its delivery.
func (h *harness) push(domain string, slot int, rcpts ...string) *queue.Delivery {
	h.t.Helper()
	return h.pushExp(domain, slot, time.Now().Add(time.Hour), rcpts...)
}

// pushExp is push with a chosen expiry.
func (h *harness) pushExp(domain string, slot int, expires time.Time, rcpts ...string) *queue.Delivery {
	h.t.Helper()
	m := &spool.Message{Sender: "sender@origin.test", Received: time.Now()}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, spool.Recipient{Addr: r})
	}
	if err := h.sp.Put(m, []byte("Subject: test\r\n\r\nhello\r\n")); err != nil {
		h.t.Fatal(err)
	}
	d := &queue.Delivery{MsgID: m.ID, Domain: domain, Sender: m.Sender, Arrival: m.Received.UnixNano(),
		Expires: expires.UnixNano(), Size: m.Size, Slot: int32(slot)}
	for i, r := range rcpts {
		d.Rcpts = append(d.Rcpts, queue.Rcpt{Idx: int32(i), Addr: r})
	}
	h.q.Push(d)
	return d
}

func (h *harness) result() result {
	h.t.Helper()
	select {
	case r := <-h.out.results:
		return r
	case <-time.After(waitLimit):
		h.t.Fatal("no delivery result")
	}
	return result{}
}

func (h *harness) connFail() connFail {
	h.t.Helper()
	select {
	case r := <-h.out.connFails:
		return r
	case <-time.After(waitLimit):
		h.t.Fatal("no ConnectFailed")
	}
	return connFail{}
}

func (h *harness) init() initEvent {
	h.t.Helper()
	select {
	case e := <-h.inits:
		return e
	case <-time.After(waitLimit):
		h.t.Fatal("no post_initiate_connection_smtp call")
	}
	return initEvent{}
}

func (h *harness) sessionEnd() hooks.SessionResult {
	h.t.Helper()
	select {
	case r := <-h.ends:
		return r
	case <-time.After(waitLimit):
		h.t.Fatal("no post_session_smtp call")
	}
	return hooks.SessionResult{}
}

// ip returns 127.0.net.host.
func ip(net, host int) string { return fmt.Sprintf("127.0.%d.%d", net, host) }

func delivered(t *testing.T, r result) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("delivery failed: %v", r.err)
	}
	for i, e := range r.res.Rcpt {
		if e != nil {
			t.Fatalf("rcpt %d refused: %v", i, e)
		}
	}
	if r.res.Data != nil {
		t.Fatalf("data refused: %v", r.res.Data)
	}
}

// TestBindingsSourceAndEHLO: each binding's mail leaves from its own
// address and says its own EHLO name, and post_initiate sees a descriptor.
func TestBindingsSourceAndEHLO(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(10, 10)}, nil)
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t, "src.test. 60 IN MX 10 mx.src.test.", "mx.src.test. 60 IN A "+ip(10, 10))
	dr := h.q.Domain("src.test")
	for slot := range bindingIPs {
		h.push("src.test", slot, fmt.Sprintf("user%d@src.test", slot))
		if n := h.pool.Open(dr, slot, 1); n != 1 {
			t.Fatalf("slot %d: Open = %d", slot, n)
		}
	}
	for range bindingIPs {
		r := h.result()
		delivered(t, r)
		if r.at.MX != "mx.src.test" || r.at.RemoteIP != ip(10, 10) {
			t.Errorf("attempt %+v", r.at)
		}
	}
	for range bindingIPs {
		if e := h.init(); e.fd < 0 || e.domain != "src.test" {
			t.Errorf("post_initiate %+v, want fd ≥ 0", e)
		}
	}
	msgs := sinks[0].WaitMessages(t, len(bindingIPs))
	seen := map[string]string{}
	for _, m := range msgs {
		seen[m.To[0]] = m.RemoteIP + " " + m.EHLO
	}
	for slot, src := range bindingIPs {
		want := fmt.Sprintf("%s b%d.mta.test", src, slot)
		if got := seen[fmt.Sprintf("user%d@src.test", slot)]; got != want {
			t.Errorf("slot %d: mail came from %q, want %q", slot, got, want)
		}
	}
}

// TestCapsNeverExceeded holds every session inside DATA until Open has been
// asked for far more than the caps allow, then checks that the sinks never
// saw more concurrent sessions than the global, domain and pair caps.
func TestCapsNeverExceeded(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	hold := func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(string, []string, []byte) error { <-gate; return nil }}
	}
	sinks, port := loopbacktest.StartSinks(t, []string{ip(11, 10), ip(11, 11)}, hold)
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	defer release()
	policies := map[string]Policy{
		"a.test": {MaxConnections: 3, MaxConnectionsPerBinding: 1, MaxDeliveriesPerConnection: 5},
		"b.test": {MaxConnections: 10, MaxConnectionsPerBinding: 10, MaxDeliveriesPerConnection: 5},
	}
	h := newHarness(t, port, nil, nil, func(o *Options) {
		o.MaxConnections = 5
		o.Policy = func(dr *queue.DomainRecord, _ int) Policy { return policies[dr.Name] }
	})
	h.dns.Add(t, "a.test. 60 IN MX 10 mx.a.test.", "mx.a.test. 60 IN A "+ip(11, 10),
		"b.test. 60 IN MX 10 mx.b.test.", "mx.b.test. 60 IN A "+ip(11, 11))
	for slot := range bindingIPs {
		for i := range 5 {
			h.push("a.test", slot, fmt.Sprintf("a%d-%d@a.test", slot, i))
		}
	}
	for i := range 20 {
		h.push("b.test", 0, fmt.Sprintf("b%d@b.test", i))
	}
	opened := 0
	for slot := range bindingIPs {
		opened += h.pool.Open(h.q.Domain("a.test"), slot, 10)
	}
	if a := h.q.Domain("a.test"); a.Open()+a.Connecting() != 3 {
		t.Errorf("a.test has %d connections, want its cap 3", a.Open()+a.Connecting())
	}
	opened += h.pool.Open(h.q.Domain("b.test"), 0, 10)
	if opened != 5 || h.pool.Total() != 5 {
		t.Errorf("opened %d, Total %d; want the global cap 5", opened, h.pool.Total())
	}
	if n := h.pool.Open(h.q.Domain("b.test"), 1, 1); n != 0 {
		t.Errorf("Open past the global cap started %d", n)
	}
	// Every session reaches DATA and blocks there.
	sinks[0].Wait(t, waitLimit, "3 sessions", func(_ []loopbacktest.Message, s int) bool { return s == 3 })
	sinks[1].Wait(t, waitLimit, "2 sessions", func(_ []loopbacktest.Message, s int) bool { return s == 2 })
	release()
	// a.test: slots 0-2 each drain their 5 in one session (5 per
	// connection); b.test: 2 sessions carry 5 each.
	for got := 0; got < 15; {
		r := h.result()
		delivered(t, r)
		if r.d.Domain == "a.test" {
			got++
		}
	}
	if hw := sinks[0].HighWater(); hw > 3 {
		t.Errorf("a.test high water %d > domain cap 3", hw)
	}
	if hw := sinks[1].HighWater(); hw > 2 {
		t.Errorf("b.test high water %d > its share of the global cap 2", hw)
	}
	if a := h.q.Domain("a.test"); a.Pair(3).Len() != 5 {
		t.Errorf("a.test slot 3 was served though the domain cap was reached (%d left)", a.Pair(3).Len())
	}
}

// TestConnErrs checks the CONN_ERR post_initiate sees, and what
// ConnectFailed gets, for each way a connection fails.
func TestConnErrs(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(12, 10)}, nil)
	bad := []binding.Config{{Name: "offhost", Address: "192.0.2.1", EHLO: "off.mta.test"}}
	// A listener with a zero backlog, its one queue place taken: further
	// SYNs are dropped, so a connect times out (Linux).
	full := fullListener(t, ip(12, 13))
	slow := []mx.Route{{Domain: "slow.test", Host: net.JoinHostPort(ip(12, 13), strconv.Itoa(full))}}
	h := newHarness(t, port, bad, slow, func(o *Options) { o.ConnectTimeout = 300 * time.Millisecond })
	h.dns.Add(t,
		"refused.test. 60 IN MX 10 mx.refused.test.", "mx.refused.test. 60 IN A "+ip(12, 12),
		"null.test. 60 IN MX 0 .",
		"ok.test. 60 IN MX 10 mx.ok.test.", "mx.ok.test. 60 IN A "+ip(12, 10),
	)
	h.dns.SetRcode("servfail.test.", 2)
	tests := []struct {
		domain    string
		slot      int
		want      hooks.ConnErr
		permanent bool
	}{
		{"refused.test", 0, hooks.ConnErrRefused, false},
		{"null.test", 0, hooks.ConnErrNullMX, true},
		{"nx.test", 0, hooks.ConnErrNXDomain, true},
		{"servfail.test", 0, hooks.ConnErrMXLookup, false},
		{"ok.test", 4, hooks.ConnErrBind, false},
	}
	for _, tc := range tests {
		h.push(tc.domain, tc.slot, "x@"+tc.domain)
		dr := h.q.Domain(tc.domain)
		if n := h.pool.Open(dr, tc.slot, 1); n != 1 {
			t.Fatalf("%s: Open = %d", tc.domain, n)
		}
		if e := h.init(); e.fd != int(tc.want) || e.domain != tc.domain {
			t.Errorf("%s: post_initiate fd %d (%s), want %d (%s)", tc.domain, e.fd, hooks.ConnErr(e.fd), tc.want, tc.want)
		}
		cf := h.connFail()
		if cf.pair != dr.Pair(tc.slot) {
			t.Errorf("%s: ConnectFailed for another pair", tc.domain)
		}
		if IsPermanentDNS(cf.err) != tc.permanent || outcome.IsTemporary(cf.err) == tc.permanent {
			t.Errorf("%s: ConnectFailed err %v: permanent %v, want %v", tc.domain, cf.err, IsPermanentDNS(cf.err), tc.permanent)
		}
		if dr.Pair(tc.slot).Len() != 1 {
			t.Errorf("%s: the pool popped a delivery without a connection", tc.domain)
		}
	}
	h.push("slow.test", 0, "x@slow.test")
	h.pool.Open(h.q.Domain("slow.test"), 0, 1)
	if e := h.init(); e.fd != int(hooks.ConnErrTimeout) {
		t.Errorf("slow.test: post_initiate %d (%s), want timeout", e.fd, hooks.ConnErr(e.fd))
	}
	h.connFail()
}

// fullListener listens on addr:0 with a zero backlog and fills its queue.
func fullListener(t *testing.T, addr string) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	a := netip.MustParseAddr(addr).As4()
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: a}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, strconv.Itoa(port)), waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return port
}

// TestSecondMXAfterRefusal: the preferred MX refuses, the next one gets the
// mail, and post_initiate sees both attempts in order.
func TestSecondMXAfterRefusal(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(13, 10)}, nil)
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t, "two.test. 60 IN MX 10 mx1.two.test.", "two.test. 60 IN MX 20 mx2.two.test.",
		"mx1.two.test. 60 IN A "+ip(13, 12), "mx2.two.test. 60 IN A "+ip(13, 10))
	h.push("two.test", 0, "x@two.test")
	h.pool.Open(h.q.Domain("two.test"), 0, 1)
	r := h.result()
	delivered(t, r)
	if r.at.MX != "mx2.two.test" {
		t.Errorf("delivered via %q, want mx2.two.test", r.at.MX)
	}
	if e := h.init(); e.fd != int(hooks.ConnErrRefused) {
		t.Errorf("first attempt: %d (%s), want refused", e.fd, hooks.ConnErr(e.fd))
	}
	if e := h.init(); e.fd < 0 {
		t.Errorf("second attempt: %d (%s), want a descriptor", e.fd, hooks.ConnErr(e.fd))
	}
	sinks[0].WaitMessages(t, 1)
}

// TestTLS: STARTTLS is used when offered, clear text when not, and after a
// failed handshake the host is redialed in clear text once and then
// remembered.
func TestTLS(t *testing.T) {
	t.Parallel()
	good := loopbacktest.TLSConfig(t)
	sinks, port := loopbacktest.StartSinks(t, []string{ip(14, 10), ip(14, 11), ip(14, 12)}, func(i int) loopbacktest.Config {
		switch i {
		case 0:
			return loopbacktest.Config{TLS: good}
		case 1:
			return loopbacktest.Config{TLS: loopbacktest.BrokenTLSConfig()}
		}
		return loopbacktest.Config{}
	})
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t,
		"tls.test. 60 IN MX 10 mx.tls.test.", "mx.tls.test. 60 IN A "+ip(14, 10),
		"broken.test. 60 IN MX 10 mx.broken.test.", "mx.broken.test. 60 IN A "+ip(14, 11),
		"plain.test. 60 IN MX 10 mx.plain.test.", "mx.plain.test. 60 IN A "+ip(14, 12))
	for i, dom := range []string{"tls.test", "plain.test"} {
		h.push(dom, 0, "x@"+dom)
		h.pool.Open(h.q.Domain(dom), 0, 1)
		r := h.result()
		delivered(t, r)
		if r.at.TLS != (i == 0) {
			t.Errorf("%s: TLS %v", dom, r.at.TLS)
		}
		if e := h.init(); e.fd < 0 {
			t.Errorf("%s: post_initiate %d", dom, e.fd)
		}
	}
	if m := sinks[0].WaitMessages(t, 1); !m[0].TLS {
		t.Error("TLS sink got the message in clear text")
	}
	if m := sinks[2].WaitMessages(t, 1); m[0].TLS {
		t.Error("plain sink reports TLS")
	}

	h.push("broken.test", 0, "x@broken.test")
	h.pool.Open(h.q.Domain("broken.test"), 0, 1)
	r := h.result()
	delivered(t, r)
	if r.at.TLS {
		t.Error("delivered over TLS through a broken handshake?")
	}
	if e := h.init(); e.fd != int(hooks.ConnErrTLS) {
		t.Errorf("handshake failure: post_initiate %d (%s), want tls", e.fd, hooks.ConnErr(e.fd))
	}
	if e := h.init(); e.fd < 0 {
		t.Errorf("clear-text redial: post_initiate %d", e.fd)
	}
	if m := sinks[1].WaitMessages(t, 1); m[0].TLS {
		t.Error("broken sink got TLS")
	}
	// The next connection skips STARTTLS at once: one attempt, no failure.
	h.sessionEnd()
	h.sessionEnd()
	h.sessionEnd()
	h.push("broken.test", 0, "y@broken.test")
	h.pool.Open(h.q.Domain("broken.test"), 0, 1)
	delivered(t, h.result())
	if e := h.init(); e.fd < 0 {
		t.Errorf("remembered host: post_initiate %d (%s), want a descriptor first time", e.fd, hooks.ConnErr(e.fd))
	}
	if c := sinks[1].Connections(); c != 3 {
		t.Errorf("broken sink saw %d connections, want 3 (failed TLS, clear redial, clear)", c)
	}
}

// TestSessionReuseAndLimits: a session pipelines, idles and takes new work
// when woken, stops at max_deliveries_per_connection, and reports to
// post_session_smtp.
func TestSessionReuseAndLimits(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(15, 10)}, nil)
	h := newHarness(t, port, nil, nil, func(o *Options) {
		o.IdleTimeout = waitLimit // only Wake or Close ends the idle wait here
		o.Policy = func(*queue.DomainRecord, int) Policy { return Policy{MaxDeliveriesPerConnection: 3} }
	})
	h.dns.Add(t, "reuse.test. 60 IN MX 10 mx.reuse.test.", "mx.reuse.test. 60 IN A "+ip(15, 10))
	dr := h.q.Domain("reuse.test")
	pair := dr.Pair(0)
	h.push("reuse.test", 0, "a@reuse.test", "b@reuse.test")
	h.pool.Open(dr, 0, 1)
	delivered(t, h.result())
	if other := h.q.Domain("other.test").Pair(0); h.pool.Wake(other) {
		t.Error("Wake found an idle session on a pair that has none")
	}
	// The session is idle or about to be: either Wake hands it the work or
	// the session finds it when it looks at the queue again after joining
	// the idle list. Either way the same connection carries it.
	h.push("reuse.test", 0, "c@reuse.test")
	h.pool.Wake(pair)
	delivered(t, h.result())
	if c := sinks[0].Connections(); c != 1 {
		t.Errorf("%d connections, want the one session reused", c)
	}
	// Third delivery reaches the per-connection limit; the fourth waits.
	h.push("reuse.test", 0, "d@reuse.test")
	h.push("reuse.test", 0, "e@reuse.test")
	h.pool.Wake(pair)
	delivered(t, h.result())
	end := h.sessionEnd()
	if end.Delivered != 4 || end.LastCode != 250 {
		t.Errorf("post_session result %+v, want 4 delivered", end)
	}
	if pair.Len() != 1 {
		t.Errorf("pair has %d queued after the session's limit, want 1", pair.Len())
	}
	if sinks[0].Pipelined() == 0 {
		t.Error("the sink never saw MAIL and RCPT in one read: no pipelining")
	}
	// post_session fires before the session gives its counts back.
	deadline := time.Now().Add(waitLimit)
	for pair.Open() != 0 || h.pool.Total() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the session: pair open %d, total %d", pair.Open(), h.pool.Total())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestExpiredNotSent: a delivery past its expiry is reported ErrExpired and
// never reaches the wire; per-recipient replies pass through unchanged.
func TestExpiredNotSent(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(16, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if to == "no@exp.test" {
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user")
			}
			return nil
		}}
	})
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t, "exp.test. 60 IN MX 10 mx.exp.test.", "mx.exp.test. 60 IN A "+ip(16, 10))
	h.pushExp("exp.test", 0, time.Now().Add(-time.Minute), "old@exp.test")
	h.push("exp.test", 0, "yes@exp.test", "no@exp.test")
	h.pool.Open(h.q.Domain("exp.test"), 0, 1)
	r := h.result()
	if r.err != ErrExpired || r.d.Rcpts[0].Addr != "old@exp.test" {
		t.Fatalf("first result %v for %v, want ErrExpired", r.err, r.d.Rcpts)
	}
	r = h.result()
	if r.err != nil || r.res.Rcpt[0] != nil || r.res.Rcpt[1] == nil || r.res.Rcpt[1].Code != 550 || r.res.Data != nil {
		t.Fatalf("second result: err %v res %+v", r.err, r.res)
	}
	if m := sinks[0].WaitMessages(t, 1); len(m) != 1 || len(m[0].To) != 1 || m[0].To[0] != "yes@exp.test" {
		t.Errorf("sink got %+v", m)
	}
}

// grantorFunc is a Grantor made of two functions, standing in for the
// scheduler's: the pool's side of the contract is what is tested here.
type grantorFunc struct {
	yield    func(*queue.Pair) bool
	released func(*queue.Pair)
}

func (g grantorFunc) Yield(p *queue.Pair) bool {
	if g.yield == nil {
		return false
	}
	return g.yield(p)
}

func (g grantorFunc) Admit(*queue.Pair) time.Duration { return 0 }
func (g grantorFunc) Opened(*queue.Pair)              {}

func (g grantorFunc) Released(p *queue.Pair) {
	if g.released != nil {
		g.released(p)
	}
}

// TestReclaimIdle: at the global cap, ReclaimIdle makes a session idling
// on another pair QUIT at once, instead of at its idle timeout, and the
// grantor hears of the freed slot.
func TestReclaimIdle(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(17, 10), ip(17, 11)}, nil)
	var h *harness
	freed := make(chan *queue.Pair, 10)
	var busy *queue.DomainRecord
	h = newHarness(t, port, nil, nil, func(o *Options) {
		o.MaxConnections = 2
		o.IdleTimeout = waitLimit // only Wake, reclaim or Close end the idle wait
		o.Grantor = grantorFunc{released: func(p *queue.Pair) {
			freed <- p
			h.pool.Open(busy, 0, 1)
		}}
	})
	h.dns.Add(t, "quiet.test. 60 IN MX 10 mx.quiet.test.", "mx.quiet.test. 60 IN A "+ip(17, 10))
	h.dns.Add(t, "busy.test. 60 IN MX 10 mx.busy.test.", "mx.busy.test. 60 IN A "+ip(17, 11))
	quiet := h.q.Domain("quiet.test")
	h.push("quiet.test", 0, "a@quiet.test")
	h.push("quiet.test", 0, "b@quiet.test")
	if n := h.pool.Open(quiet, 0, 2); n != 2 {
		t.Fatalf("opened %d quiet sessions, want 2", n)
	}
	delivered(t, h.result())
	delivered(t, h.result())

	busy = h.q.Domain("busy.test")
	h.push("busy.test", 0, "c@busy.test")
	if n := h.pool.Open(busy, 0, 1); n != 0 {
		t.Fatalf("opened %d busy sessions over the global cap of 2", n)
	}
	if n := h.pool.ReclaimIdle(busy.Pair(0), 1); n != 1 {
		t.Fatalf("ReclaimIdle told %d sessions, want 1", n)
	}
	r := h.result()
	delivered(t, r)
	if r.d.Domain != "busy.test" {
		t.Fatalf("delivered %s, want busy.test", r.d.Domain)
	}
	if p := <-freed; p != quiet.Pair(0) {
		t.Errorf("released %s/%d, want quiet.test/0", p.Domain().Name, p.Slot())
	}
	if got := sinks[1].Connections(); got != 1 {
		t.Errorf("busy sink saw %d connections, want 1", got)
	}
	if total := h.pool.Total(); total > 2 {
		t.Errorf("total %d over the cap", total)
	}
}

// TestEightBitPassedOn: BODY=8BITMIME goes to the next hop exactly when the
// injecting client declared it.
func TestEightBitPassedOn(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(18, 10)}, nil)
	h := newHarness(t, port, nil, nil, nil)
	h.dns.Add(t, "eight.test. 60 IN MX 10 mx.eight.test.", "mx.eight.test. 60 IN A "+ip(18, 10))
	for _, eight := range []bool{true, false} {
		m := &spool.Message{Sender: "s@origin.test", Received: time.Now(), EightBit: eight,
			Recipients: []spool.Recipient{{Addr: fmt.Sprintf("r%v@eight.test", eight)}}}
		if err := h.sp.Put(m, []byte("Subject: caf\xc3\xa9\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
		h.q.Push(&queue.Delivery{MsgID: m.ID, Domain: "eight.test", Sender: m.Sender, Arrival: m.Received.UnixNano(),
			Expires: time.Now().Add(time.Hour).UnixNano(), Size: m.Size, EightBit: eight,
			Rcpts: []queue.Rcpt{{Idx: 0, Addr: m.Recipients[0].Addr}}})
	}
	h.pool.Open(h.q.Domain("eight.test"), 0, 1)
	delivered(t, h.result())
	delivered(t, h.result())
	for _, m := range sinks[0].WaitMessages(t, 2) {
		want := smtp.BodyType("")
		if m.To[0] == "rtrue@eight.test" {
			want = smtp.Body8BitMIME
		}
		if m.Body != want {
			t.Errorf("%s: BODY=%q, want %q", m.To[0], m.Body, want)
		}
	}
}

// TestYieldEndsSession: a session asks the grantor before each transaction
// and QUITs when told to yield, leaving the rest of the queue.
func TestYieldEndsSession(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(24, 10)}, nil)
	var asked atomic.Int32
	released := make(chan *queue.Pair, 1)
	h := newHarness(t, port, nil, nil, func(o *Options) {
		o.IdleTimeout = waitLimit
		o.Grantor = grantorFunc{
			yield:    func(*queue.Pair) bool { return asked.Add(1) > 2 },
			released: func(p *queue.Pair) { released <- p },
		}
	})
	h.dns.Add(t, "y.test. 60 IN MX 10 mx.y.test.", "mx.y.test. 60 IN A "+ip(24, 10))
	for i := range 5 {
		h.push("y.test", 0, fmt.Sprintf("r%d@y.test", i))
	}
	dr := h.q.Domain("y.test")
	if n := h.pool.Open(dr, 0, 1); n != 1 {
		t.Fatalf("opened %d, want 1", n)
	}
	delivered(t, h.result())
	delivered(t, h.result())
	if p := <-released; p != dr.Pair(0) {
		t.Fatalf("released %v, want y.test/0", p)
	}
	if got := dr.Pair(0).Len(); got != 3 {
		t.Errorf("%d deliveries left queued, want 3", got)
	}
	if got := len(sinks[0].Messages()); got != 2 {
		t.Errorf("sink got %d messages, want 2", got)
	}
}
