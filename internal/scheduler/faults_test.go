package scheduler

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	fs "github.com/mtad/mtad/internal/faultsrv"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// faultTimeouts are short per-phase limits (1s) under a 2s transaction
// deadline, so that every fault ends quickly and a server answering each
// command just inside its limit runs into the transaction deadline.
func faultTimeouts(o *Options) {
	o.Pool.ConnectTimeout = time.Second
	o.Pool.Timeouts = smtpclient.Timeouts{Greeting: time.Second, EHLO: time.Second, StartTLS: time.Second,
		Mail: time.Second, Rcpt: time.Second, DataInit: time.Second, DataBlock: time.Second,
		DataTerm: time.Second, Rset: time.Second, Quit: time.Second, Transaction: 2 * time.Second}
}

// envelopeSteps is a well-behaved start of a session up to and including
// the MAIL and RCPT replies for n recipients.
func envelopeSteps(n int) []fs.Step {
	s := fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"), fs.Reply("250 2.1.0 ok"))
	for range n {
		s = append(s, fs.Expect("RCPT"), fs.Reply("250 2.1.5 ok"))
	}
	return s
}

// upToData is envelopeSteps(1) and DATA's 354.
func upToData() []fs.Step {
	return fs.Then(envelopeSteps(1), fs.Expect("DATA"), fs.Reply("354 go ahead"))
}

type faultCase struct {
	name    string
	scripts []fs.Script // the first connections; later ones behave
	rcpts   int         // recipients in the message (default 1)
	tls     tlspolicy.Mode
	// first outcome of every recipient: event, enhanced code, bounce
	// class (0: not checked), phase and a piece of the response text
	event, enhanced string
	class           int64
	phase, response string
	// perCmd, when set, replaces the 1s limit of MAIL, RCPT, DATA and
	// the dot (the transaction deadline stays 2s)
	perCmd time.Duration
	// conns is how many connections the first attempt takes (0: any)
	conns int
}

// TestMisbehavingReceivers runs each fault through the real scheduler,
// pool, client and spool against a scripted receiver on loopback: each
// recipient's first outcome is the expected record with its enhanced code
// and bounce class, the connection slot comes back (pool total 0), and
// the pair is not wedged: once the receiver behaves, the mail (retried,
// or a new message) is delivered.
func TestMisbehavingReceivers(t *testing.T) {
	t.Parallel()
	const drip = 50 * time.Millisecond
	longLine := "250 " + strings.Repeat("x", 70<<10)
	cases := []faultCase{
		{name: "no greeting", scripts: []fs.Script{{fs.Hang()}},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "greeting", response: "timed out"},
		{name: "421 greeting", scripts: []fs.Script{{fs.Reply("421 4.3.2 busy, try later"), fs.Expect("QUIT")}},
			event: "deferred", enhanced: "4.3.2", class: 70, phase: "greeting", response: "busy"},
		// Any greeting refusal is no verdict on the recipients (as in
		// Postfix): the 5.7.1 is deferred, its class left to the rules.
		{name: "554 greeting", scripts: []fs.Script{{fs.Reply("554 5.7.1 go away"), fs.Expect("QUIT")}},
			event: "deferred", enhanced: "5.7.1", phase: "greeting", response: "go away"},
		{name: "hang at EHLO", scripts: []fs.Script{{fs.Greeting(), fs.Hang()}},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "ehlo", response: "timed out"},
		{name: "hang at STARTTLS", tls: tlspolicy.Required,
			scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO("STARTTLS"), fs.Hang())},
			event:   "deferred", enhanced: "4.7.5", class: 24, phase: "tls", response: "TLS policy required"},
		{name: "hang at MAIL", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "mail", response: "timed out"},
		{name: "hang at RCPT", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"), fs.Reply("250 ok"), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "rcpt", response: "timed out"},
		{name: "hang at DATA", scripts: []fs.Script{fs.Then(envelopeSteps(1), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "data", response: "timed out"},
		{name: "hang after the dot", scripts: []fs.Script{fs.Then(upToData(), fs.ReadData(), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "dot", response: "timed out"},
		{name: "reset mid-body", scripts: []fs.Script{fs.Then(upToData(), fs.Reset())},
			event: "deferred", enhanced: "4.4.2", response: "by the server"},
		{name: "drip past the reply timeout", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"),
			fs.Drip("250 2.1.0 "+strings.Repeat("o", 100)+"\r\n", drip), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "mail", response: "timed out"},
		// Each reply 0.8s, well inside its 1.5s limit: MAIL, RCPT and
		// DATA together pass the 2s transaction deadline (in DATA, or
		// RCPT on a slow machine).
		{name: "each reply just inside its timeout", perCmd: 1500 * time.Millisecond, scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(),
			fs.Expect("MAIL"), fs.Drip("250 ok\r\n", 100*time.Millisecond),
			fs.Expect("RCPT"), fs.Drip("250 ok\r\n", 100*time.Millisecond),
			fs.Expect("DATA"), fs.Drip("354 go\r\n", 100*time.Millisecond), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, response: "transaction deadline (2s) exceeded"},
		// MAIL and RCPT 0.6s each, then the 250 after the dot takes 1.2s
		// (inside its 1.5s limit): it comes 0.4s after the transaction
		// deadline, which wins.
		{name: "250 to the dot after the deadline", perCmd: 1500 * time.Millisecond, scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(),
			fs.Expect("MAIL"), fs.Drip("250 ok\r\n", 75*time.Millisecond),
			fs.Expect("RCPT"), fs.Drip("250 ok\r\n", 75*time.Millisecond),
			fs.Expect("DATA"), fs.Reply("354 go"), fs.ReadData(),
			fs.Drip("250 ok\r\n", 150*time.Millisecond), fs.Hang())},
			event: "deferred", enhanced: "4.4.2", class: 24, phase: "dot", response: "transaction deadline (2s) exceeded"},
		{name: "garbage reply", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"), fs.Reply("hello there"), fs.Hang())},
			event: "deferred", enhanced: "4.5.0", phase: "mail", response: "bad reply code"},
		{name: "over-long reply line", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"), fs.Reply(longLine), fs.Hang())},
			event: "deferred", enhanced: "4.5.0", phase: "mail", response: "malformed"},
		{name: "multi-line reply with mixed codes", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"),
			fs.Reply("250-first", "251 second"), fs.Hang())},
			event: "deferred", enhanced: "4.5.0", phase: "mail", response: "code 251 in a 250 reply"},
		{name: "multi-line reply without its last line", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"),
			fs.Reply("250-first", "250-second"), fs.Close())},
			event: "deferred", enhanced: "4.4.2", phase: "mail", response: "closed by the server"},
		{name: "552 at the dot", scripts: []fs.Script{fs.Then(upToData(), fs.ReadData(), fs.Reply("552 5.3.4 message too big"), fs.Serve(fs.ServeOptions{}))},
			event: "bounced", enhanced: "5.3.4", class: 23, phase: "dot", response: "too big"},
		// Opportunistic: the failed handshake is remembered and the
		// same delivery goes in clear text on a second connection.
		{name: "TLS handshake failure, opportunistic", conns: 2,
			scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO("STARTTLS"), fs.Expect("STARTTLS"), fs.Reply("220 go ahead"), fs.Raw("not TLS at all\r\n"), fs.Close())},
			event:   "delivered"},
		// Required: deferred, never clear text; delivered once the
		// server's TLS works.
		{name: "TLS handshake failure, required", tls: tlspolicy.Required, conns: 1,
			scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO("STARTTLS"), fs.Expect("STARTTLS"), fs.Reply("220 go ahead"), fs.Raw("not TLS at all\r\n"), fs.Close())},
			event:   "deferred", enhanced: "4.7.5", class: 70, phase: "tls", response: "TLS policy required requires it"},
		// The server takes 2 recipients per transaction: the third goes in
		// a second transaction on the same connection, not to the
		// delayed queue.
		{name: "452 too many recipients", rcpts: 3, conns: 1,
			scripts: []fs.Script{{fs.Greeting(), fs.Serve(fs.ServeOptions{MaxRcpts: 2})}},
			event:   "delivered"},
		// A 452 that is no "too many" (a full mailbox) stays deferred.
		{name: "452 mailbox full", scripts: []fs.Script{fs.Then(fs.Greeting(), fs.EHLO(), fs.Expect("MAIL"), fs.Reply("250 ok"),
			fs.Expect("RCPT"), fs.Reply("452 4.2.2 mailbox full"), fs.Expect("DATA"), fs.Reply("554 5.5.1 no valid recipients"),
			fs.Serve(fs.ServeOptions{}))},
			event: "deferred", enhanced: "4.2.2", class: 22, phase: "rcpt", response: "mailbox full"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			runFault(t, ip(80, 10+i), c)
		})
	}
}

func runFault(t *testing.T, addr string, c faultCase) {
	good := fs.Good()
	if c.tls == tlspolicy.Required {
		good = fs.Script{fs.Greeting(), fs.Serve(fs.ServeOptions{TLS: loopbacktest.TLSConfig(t)})}
	}
	srv := fs.Start(t, addr+":0", good, c.scripts...)
	h := newHarness(t, srv.Port(), func(o *Options) {
		faultTimeouts(o)
		if d := c.perCmd; d != 0 {
			t := &o.Pool.Timeouts
			t.Mail, t.Rcpt, t.DataInit, t.DataBlock, t.DataTerm = d, d, d, d, d
		}
		if c.tls != "" {
			o.Pool.Policy = func(dr *queue.DomainRecord, slot int) connpool.Policy {
				return connpool.Policy{MaxConnections: 10, MaxConnectionsPerBinding: 10, MaxDeliveriesPerConnection: 100,
					TLS: tlspolicy.Settings{Mode: c.tls}}
			}
		}
	})
	h.mxFor("fault.test", addr)
	h.resolved("fault.test")
	n := max(c.rcpts, 1)
	rcpts := make([]string, n)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("r%d@fault.test", i)
	}
	m := h.inject("a@origin.test", rcpts...)
	for range n {
		e := nextAt(h, "fault.test")
		if e.name != c.event || e.str("enhanced_code") != c.enhanced && c.enhanced != "" ||
			c.class != 0 && e.fields["bounce_class"] != c.class || c.phase != "" && e.str("phase") != c.phase ||
			!strings.Contains(strings.ToLower(e.str("response")), strings.ToLower(c.response)) {
			t.Errorf("%s: %s %s class %v phase %s %q; want %s %s class %d phase %s with %q", e.str("recipient"), e.name,
				e.str("enhanced_code"), e.fields["bounce_class"], e.str("phase"), e.str("response"),
				c.event, c.enhanced, c.class, c.phase, c.response)
		}
	}
	h.quiet() // the slot came back
	if c.conns > 0 && srv.Conns() != c.conns {
		t.Errorf("%d connections, want %d", srv.Conns(), c.conns)
	}
	// Not wedged: with the receiver behaving, what was deferred is
	// delivered at its retry, and a new message goes at once.
	if c.event == "deferred" {
		h.s.Tick(h.clock.Advance(12 * time.Minute)) // past the first retry (10m ± 15%)
		for range n {
			if e := nextAt(h, "fault.test"); e.name != "delivered" {
				t.Errorf("retry of %s: %s %v", e.str("recipient"), e.name, e.fields)
			}
		}
		h.gone(m.ID)
	}
	h.inject("a@origin.test", "later@fault.test")
	if e := nextAt(h, "fault.test"); e.name != "delivered" {
		t.Errorf("a later message: %s %v", e.name, e.fields)
	}
	h.quiet()
	got := map[string]int{}
	for _, msg := range srv.Messages() {
		for _, r := range msg.Rcpts {
			got[r]++
		}
	}
	if c.event != "bounced" {
		for _, r := range rcpts {
			if got[r] != 1 {
				t.Errorf("%s received %d times", r, got[r])
			}
		}
	}
	if err := srv.Err(); err != nil {
		t.Error(err)
	}
}

// nextAt is the next outcome record of a recipient at domain, skipping
// others (a DSN's to its sender's domain).
func nextAt(h *harness, domain string) event {
	h.t.Helper()
	for {
		if e := h.next(outcomeEvents...); strings.HasSuffix(e.str("recipient"), "@"+domain) {
			return e
		}
	}
}

// TestCloseAfterNMessages: a receiver that closes the connection after
// two messages (as many do) costs the third no deferral: it goes at once
// on a new connection, and so does the fourth.
func TestCloseAfterNMessages(t *testing.T) {
	t.Parallel()
	addr := ip(81, 10)
	// The first greeting comes slowly (0.3s), so that the four messages
	// are queued for the one session; if they were not, they would go in
	// more sessions and the checks below would still hold.
	srv := fs.Start(t, addr+":0", fs.Good(), fs.Script{fs.Drip("220 slow.fault.test\r\n", 15*time.Millisecond),
		fs.Serve(fs.ServeOptions{Messages: 2}), fs.Close()})
	h := newHarness(t, srv.Port(), func(o *Options) {
		faultTimeouts(o)
		o.Bindings = oneBinding(t)
		o.Pool.Policy = func(*queue.DomainRecord, int) connpool.Policy {
			return connpool.Policy{MaxConnections: 1, MaxConnectionsPerBinding: 1, MaxDeliveriesPerConnection: 100}
		}
	})
	h.mxFor("fault.test", addr)
	h.resolved("fault.test")
	for i := range 4 {
		h.inject("a@origin.test", fmt.Sprintf("m%d@fault.test", i))
	}
	for range 4 {
		if e := nextAt(h, "fault.test"); e.name != "delivered" || e.fields["attempt"] != int64(1) {
			t.Errorf("%s: %s attempt %v %q", e.str("recipient"), e.name, e.fields["attempt"], e.str("response"))
		}
	}
	h.quiet()
	on := map[int]int{}
	for _, m := range srv.Messages() {
		on[m.Conn]++
	}
	if on[0] > 2 || len(srv.Messages()) != 4 {
		t.Errorf("messages per connection %v, want at most 2 on the first and 4 in all", on)
	}
	if err := srv.Err(); err != nil {
		t.Error(err)
	}
}

// TestManyMXBounded: twelve MX hosts whose every address hangs at the
// greeting: one connection attempt ends at the transaction deadline (2s)
// after a few addresses, not after twelve greeting timeouts, the mail is
// deferred saying so, and the slot comes back.
func TestManyMXBounded(t *testing.T) {
	t.Parallel()
	addr := ip(82, 10)
	srv := fs.Start(t, addr+":0", fs.Script{fs.Hang()})
	h := newHarness(t, srv.Port(), faultTimeouts)
	var rrs []string
	for i := range 12 {
		name := fmt.Sprintf("mx%d.many.test.", i)
		rrs = append(rrs, fmt.Sprintf("many.test. 60 IN MX %d %s", 10+i, name), name+" 60 IN A "+addr)
	}
	h.dns.Add(t, rrs...)
	h.resolved("many.test")
	h.inject("a@origin.test", "x@many.test")
	e := nextAt(h, "many.test")
	if e.name != "deferred" || e.str("enhanced_code") != "4.4.1" ||
		!strings.Contains(e.str("response"), "delivery.timeouts.transaction") {
		t.Errorf("%s %s %q", e.name, e.str("enhanced_code"), e.str("response"))
	}
	h.quiet()
	if n := srv.Conns(); n >= 10 {
		t.Errorf("%d connections in one attempt, want it cut short by the deadline", n)
	}
}

// oneBinding is a binding set of one, so that every message goes on the
// same domain/binding pair.
func oneBinding(t *testing.T) *binding.Set {
	set, err := binding.New([]binding.Config{{Name: "b0", Address: bindingIPs[0], EHLO: "b0.mta.test"}},
		nil, "mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	return set
}
