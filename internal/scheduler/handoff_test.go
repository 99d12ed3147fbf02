package scheduler_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/scheduler"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

const hangGuard = 10 * time.Second // never a timing assertion

// intakeHandoff is what cmd/mtad plugs into the injection listener.
type intakeHandoff struct{ s *scheduler.Scheduler }

func (h intakeHandoff) Submit(m *spool.Message) { h.s.Intake(m) }

// TestInjectionRepliesWhileMaintenanceHeld: a real injection listener
// hands messages to a real scheduler whose maintenance is held by a
// MailQueueMaintain hook (registered first, so it holds the maintenance
// lock and the intake goroutine inside Submit). A message injected then
// still gets its 250; on release it is delivered to the loopback sink.
func TestInjectionRepliesWhileMaintenanceHeld(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{"127.0.43.10"}, nil)
	dns := loopbacktest.StartDNS(t)
	dns.Add(t, "held.test. 60 IN MX 10 mx.held.test.", "mx.held.test. 60 IN A 127.0.43.10")

	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Errorf("spool close: %v", err)
		}
	})
	set, err := binding.New([]binding.Config{{Name: "b0", Address: "127.0.0.2", EHLO: "b0.mta.test"}}, nil, "mta.test",
		func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	res, err := mx.New(mx.Options{Servers: []string{dns.Addr}, Port: port, AllowLoopback: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := hooks.NewRegistry()
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	var gaveUp atomic.Bool // the hook stopped holding on its own
	reg.MailQueueMaintain.RegisterFirst(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-time.After(hangGuard):
			gaveUp.Store(true)
		}
		return 0
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	defer release()
	to := 5 * time.Second
	sched, err := scheduler.New(scheduler.Options{
		Spool: sp, Queues: queue.New(), Bindings: set, Hooks: reg, Hostname: "mta.test",
		MaintainInterval: time.Hour, // maintenance runs only when work arrives
		Pool: connpool.Options{
			MaxConnections: 4, Resolver: res, IdleTimeout: 50 * time.Millisecond, ConnectTimeout: to,
			Timeouts: smtpclient.Timeouts{Greeting: to, EHLO: to, Mail: to, Rcpt: to, DataInit: to,
				DataBlock: to, DataTerm: to, StartTLS: to, Quit: to},
			Policy: func(*queue.DomainRecord, int) connpool.Policy {
				return connpool.Policy{MaxConnections: 4, MaxConnectionsPerBinding: 4, MaxDeliveriesPerConnection: 100}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sched.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := sched.Close(ctx); err != nil {
			t.Errorf("scheduler close: %v", err)
		}
	})

	srv, err := inject.New(inject.Options{
		Listen:         []string{"127.0.0.1:0"},
		RelayNetworks:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:       "mta.test",
		MaxMessageSize: 1 << 20,
		ReadTimeout:    hangGuard, WriteTimeout: hangGuard, DataTimeout: hangGuard,
	}, sp, set, intakeHandoff{sched})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("inject shutdown: %v", err)
		}
	})
	addr := srv.Addrs()[0].String()

	// The first message's hand-off starts a maintenance pass, which the
	// hook holds: from here on the maintenance lock is taken.
	first := injectOne(t, addr, "first@held.test")
	select {
	case <-entered:
	case <-time.After(hangGuard):
		t.Fatal("no maintenance pass after the first message")
	}
	second := injectOne(t, addr, "second@held.test")
	if gaveUp.Load() {
		t.Fatal("the 250s came only after the maintenance hold gave up")
	}
	if sched.Busy() {
		t.Error("intake busy with one message waiting")
	}
	if got := len(sinks[0].Messages()); got != 0 {
		t.Fatalf("sink has %d messages while maintenance is held", got)
	}

	release()
	msgs := sinks[0].WaitMessages(t, 2)
	got := map[string]bool{}
	for _, m := range msgs {
		for _, id := range []string{first, second} {
			// The listener's Received field names the queue id.
			if strings.Contains(string(m.Data), " id "+id) {
				got[id] = true
			}
		}
	}
	if len(msgs) != 2 || !got[first] || !got[second] {
		t.Fatalf("sink got %d messages, matched %v; want %s and %s", len(msgs), got, first, second)
	}
}

// injectOne sends one message with go-smtp's client and returns the queue
// id from its 250 reply.
func injectOne(t *testing.T, addr, rcpt string) string {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Longer than the hook's hold, so a reply that waits on maintenance
	// shows as the hold giving up, not as a client timeout.
	c.CommandTimeout, c.SubmissionTimeout = 3*hangGuard, 3*hangGuard
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@origin.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(w, "From: sender@origin.test\r\nTo: %s\r\nSubject: handoff %s\r\n\r\nbody\r\n", rcpt, rcpt); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("DATA for %s: %v", rcpt, err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "queued as ")
	if id = strings.TrimSpace(id); !ok || id == "" {
		t.Fatalf("DATA for %s: reply %q has no queue id", rcpt, resp.StatusText)
	}
	_ = c.Quit()
	return id
}
