package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/spool"
)

// intakeHandoff hands injected mail to the scheduler as cmd/mtad does.
type intakeHandoff struct{ s *Scheduler }

func (h intakeHandoff) Submit(m *spool.Message) { h.s.Intake(m) }

// sendOne sends one message over a new SMTP connection to addr and
// returns the refusal, if any, as a *textproto.Error.
func sendOne(addr, rcpt string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err
	}
	if err := c.Mail("app@origin.test"); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: app@origin.test\r\nTo: %s\r\nSubject: overload\r\n\r\nhello\r\n", rcpt)
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// wantRefusal fails unless err is an SMTP reply with code and the
// enhanced code at the start of its text.
func wantRefusal(t *testing.T, what string, err error, code int, enh string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != code || !strings.HasPrefix(te.Msg, enh) {
		t.Fatalf("%s: %v, want %d %s", what, err, code, enh)
	}
}

// TestOverloadWatermark: injection far faster than delivery (the sink
// defers every recipient, so nothing leaves the queue). At the high
// watermark a new SMTP connection is greeted 421 4.3.2, MAIL in a session
// opened before is answered 452 4.3.2 and HTTP injection gets 503 with a
// JSON error; deliveries that bring the queue down but not to the low
// watermark change nothing (hysteresis); below it both listeners accept
// again.
func TestOverloadWatermark(t *testing.T) {
	t.Parallel()
	const high, low = 10, 5
	// The sink defers rN while N >= released, so nothing leaves the
	// queue until the test lets it; every other recipient is accepted.
	var released atomic.Int64
	_, port := loopbacktest.StartSinks(t, []string{ip(52, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			var n int64
			if _, err := fmt.Sscanf(to, "r%d@", &n); err == nil && n >= released.Load() {
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "slow down")
			}
			return nil
		}}
	})
	h := newHarness(t, port, func(o *Options) { o.MaintainInterval = time.Hour })
	h.mxFor("over.test", ip(52, 10))
	// Resolved first: with no tick (an hour's interval) the first
	// attempts must not hang on the lookup's hand-off to a worker.
	h.resolved("over.test")
	h.s.Start()
	wm, err := inject.NewWatermark(high, low, h.s.Queued, nil)
	if err != nil {
		t.Fatal(err)
	}
	relay := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	srv, err := inject.New(inject.Options{Listen: []string{"127.0.0.1:0"}, RelayNetworks: relay, Hostname: "mta.test",
		MaxMessageSize: 1 << 20, Watermark: wm}, h.sp, nil, intakeHandoff{h.s})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	hsrv, err := inject.NewHTTP(inject.HTTPOptions{Listen: []string{"127.0.0.1:0"}, Hostname: "mta.test",
		MaxMessageSize: 1 << 20, Watermark: wm}, h.sp, nil, intakeHandoff{h.s})
	if err != nil {
		t.Fatal(err)
	}
	if err := hsrv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := hsrv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	addr := srv.Addrs()[0].String()
	post := func() (int, map[string]any) {
		t.Helper()
		resp, err := http.Post("http://"+hsrv.Addrs()[0].String()+inject.HTTPPath, "application/json",
			strings.NewReader(`{"from": "app@origin.test", "recipients": ["late@over.test"], "subject": "s", "text": "x"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("HTTP %d: body not JSON: %v", resp.StatusCode, err)
		}
		return resp.StatusCode, body
	}

	// A session opened while the queue is short, to be refused at MAIL.
	early, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	if err := early.Hello("client.test"); err != nil {
		t.Fatal(err)
	}

	// Inject until refused; bounded by twice the mark.
	accepted := 0
	var refusal error
	for i := 0; i < 2*high && refusal == nil; i++ {
		if refusal = sendOne(addr, fmt.Sprintf("r%d@over.test", i)); refusal == nil {
			accepted++
		}
	}
	if accepted != high {
		t.Fatalf("%d messages accepted before the refusal, want %d (queued %d)", accepted, high, h.s.Queued())
	}
	wantRefusal(t, "connection above the high watermark", refusal, 421, "4.3.2")
	wantRefusal(t, "MAIL in an open session above the high watermark", early.Mail("app@origin.test"), 452, "4.3.2")
	if code, body := post(); code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body["error"]), "watermark") {
		t.Fatalf("HTTP above the high watermark: %d %v", code, body)
	}

	// Each message is tried once and deferred: the queue stays at high.
	for range high {
		if e := h.next(outcomeEvents...); e.name != "deferred" {
			t.Fatalf("outcome %s %v", e.name, e.fields)
		}
	}
	// Release four: 6 queued, above low: still refused.
	released.Store(4)
	h.s.Tick(h.clock.Advance(time.Hour))
	h.until("four deliveries to leave the queue", func() bool { return h.s.Queued() == high-4 })
	wantRefusal(t, "connection between the watermarks", sendOne(addr, "late@over.test"), 421, "4.3.2")

	// Release the rest: the queue drains below low and both accept again.
	released.Store(1 << 30)
	h.s.Tick(h.clock.Advance(2 * time.Hour))
	h.until("the queue to drain below the low watermark", func() bool { return h.s.Queued() <= low })
	if err := sendOne(addr, "late@over.test"); err != nil {
		t.Fatalf("SMTP below the low watermark: %v", err)
	}
	if code, body := post(); code/100 != 2 {
		t.Fatalf("HTTP below the low watermark: %d %v", code, body)
	}
}
