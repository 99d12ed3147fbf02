package scheduler

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 10 * time.Second // a hang guard, never a timing assertion

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// event is one delivery-log record, as the test sees it.
type event struct {
	name   string
	fields map[string]any
}

func (e event) str(k string) string { s, _ := e.fields[k].(string); return s }

// eventCore is a zap core that hands every record to a channel, so tests
// wait for log events instead of sleeping.
type eventCore struct {
	ch     chan event
	fields []zapcore.Field
}

func (c *eventCore) Enabled(zapcore.Level) bool { return true }
func (c *eventCore) With(fs []zapcore.Field) zapcore.Core {
	return &eventCore{ch: c.ch, fields: append(c.fields[:len(c.fields):len(c.fields)], fs...)}
}
func (c *eventCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}
func (c *eventCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(c.fields, fs...) {
		f.AddTo(enc)
	}
	c.ch <- event{name: e.Message, fields: enc.Fields}
	return nil
}
func (c *eventCore) Sync() error { return nil }

type harness struct {
	t      testing.TB
	dns    *loopbacktest.DNS
	sp     *spool.Spool
	q      *queue.Queues
	set    *binding.Set
	reg    *hooks.Registry
	clock  *fakeClock
	events chan event
	s      *Scheduler
	port   int
	inits  chan [2]any // domain, fd
	// connects counts connection attempts (inits may drop some).
	connects atomic.Int64
	closed   bool
	dir      string  // the spool's directory, for a restart
	opts     Options // what s was built with, for a restart
}

var bindingIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}

func ip(net, host int) string { return fmt.Sprintf("127.0.%d.%d", net, host) }

// newHarness builds a scheduler (fake clock, real spool, DNS and pool)
// delivering to port; edit may change the options before New.
func newHarness(t testing.TB, port int, edit func(*Options)) *harness {
	t.Helper()
	h := &harness{
		t: t, dns: loopbacktest.StartDNS(t), q: queue.New(), reg: hooks.NewRegistry(),
		clock: newFakeClock(), events: make(chan event, 10000), port: port, inits: make(chan [2]any, 1000),
	}
	var cfgs []binding.Config
	for i, a := range bindingIPs {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i), Address: a, EHLO: fmt.Sprintf("b%d.mta.test", i)})
	}
	set, err := binding.New(cfgs, nil, "mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h.set = set
	h.dir = t.TempDir()
	sp, err := spool.Open(h.dir, spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h.sp = sp
	res, err := mx.New(mx.Options{Servers: []string{h.dns.Addr}, Port: port, AllowLoopback: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.reg.PostInitiateConnectionSMTP.RegisterLast(func(dr *queue.DomainRecord, _ int, _ time.Time, fd int) {
		h.connects.Add(1)
		// Tests that look at connections read them as they come; one
		// that does not (the benchmark) must not block the pool.
		select {
		case h.inits <- [2]any{dr.Name, fd}:
		default:
		}
	})
	opts := Options{
		Spool: sp, Queues: h.q, Bindings: set, Hooks: h.reg, Hostname: "mta.test",
		RetryInterval: 10 * time.Minute, MaxRetryInterval: time.Hour, MaxAge: 24 * time.Hour,
		Clock: h.clock, Logger: zap.New(&eventCore{ch: h.events}),
		Pool: connpool.Options{
			MaxConnections: 20, Resolver: res, IdleTimeout: 50 * time.Millisecond, ConnectTimeout: 2 * time.Second,
			Timeouts: smtpclient.Timeouts{Greeting: 5 * time.Second, EHLO: 5 * time.Second, Mail: 5 * time.Second,
				Rcpt: 5 * time.Second, DataInit: 5 * time.Second, DataBlock: 5 * time.Second, DataTerm: 5 * time.Second,
				StartTLS: 5 * time.Second, Quit: 2 * time.Second},
			Policy: func(*queue.DomainRecord, int) connpool.Policy {
				return connpool.Policy{MaxConnections: 10, MaxConnectionsPerBinding: 10, MaxDeliveriesPerConnection: 100}
			},
		},
	}
	if edit != nil {
		edit(&opts)
	}
	h.opts = opts
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.s = s
	t.Cleanup(func() {
		h.close()
		if err := h.sp.Close(); err != nil {
			t.Errorf("spool close: %v", err)
		}
	})
	return h
}

func (h *harness) close() {
	if h.closed {
		return
	}
	h.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := h.s.Close(ctx); err != nil {
		h.t.Errorf("scheduler close: %v", err)
	}
}

// mxFor points domain's MX at the given address.
func (h *harness) mxFor(domain, addr string) {
	h.dns.Add(h.t, domain+". 60 IN MX 10 mx."+domain+".", "mx."+domain+". 60 IN A "+addr)
}

// resolved looks the domains up now, as the resolver workers would at
// their first maintenance, so that a test's first Submit runs the
// maintain chain at once rather than on a worker.
func (h *harness) resolved(domains ...string) {
	h.t.Helper()
	for _, d := range domains {
		dr := h.q.Domain(d)
		h.s.resolve(dr)
		if !stateOf(dr).resolved {
			h.t.Fatalf("%s did not resolve", d)
		}
	}
}

// inject spools a message from sender to rcpts and submits it.
func (h *harness) inject(sender string, rcpts ...string) *spool.Message {
	h.t.Helper()
	m := &spool.Message{Sender: sender, Received: h.clock.Now()}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, spool.Recipient{Addr: r})
	}
	body := fmt.Sprintf("From: %s\r\nSubject: test for %s\r\n\r\nhello\r\n", sender, rcpts[0])
	if err := h.sp.Put(m, []byte(body)); err != nil {
		h.t.Fatal(err)
	}
	if err := h.s.Submit(m); err != nil {
		h.t.Fatal(err)
	}
	return m
}

// next returns the next delivery-log event whose name is in names,
// skipping others (connection records and the like).
func (h *harness) next(names ...string) event {
	h.t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case e := <-h.events:
			for _, n := range names {
				if e.name == n {
					return e
				}
			}
		case <-timeout:
			h.t.Fatalf("no %v event", names)
		}
	}
}

var outcomeEvents = []string{"delivered", "deferred", "bounced", "expired"}

// gone waits until the message has left the spool (its outcome was
// written before the event the caller already saw, so this is immediate).
func (h *harness) gone(id string) {
	h.t.Helper()
	if _, err := h.sp.Get(id); err == nil {
		h.t.Errorf("message %s still spooled", id)
	}
}
