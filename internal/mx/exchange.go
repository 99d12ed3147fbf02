package mx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// serverPenalty is how long a server that timed out, refused or could not
// be reached goes to the back of the order. Long enough that a dead first
// server costs one timeout per half-minute, not one per query; short
// enough that a server back from a restart is used again within a minute.
const serverPenalty = 30 * time.Second

// Exchanger asks a list of DNS servers in turn, the way the resolver does:
// UDP first, TCP when the answer is truncated, the next server after
// SERVFAIL, REFUSED, a timeout, a network error or a reply to another
// question. The TLS policy (DANE, MTA-STS) asks its own questions through
// one.
//
// The time budget of one Exchange is its timeout (or the context's
// deadline, when sooner), shared among the servers: each server asked gets
// the time left divided by the number of servers still to ask (not
// counting those down, below, while any other is left), so a server
// that does not answer spends only its share, and a fast failure (REFUSED,
// ICMP unreachable) leaves more for the rest. With servers [dead, good] and
// 5 s, dead gets 2.5 s and good the rest.
//
// A small health table, one entry per server (bounded by the server list),
// orders the servers: a server that timed out, refused, sent a reply to
// another question or could not be reached is "down" for serverPenalty and
// is asked after the healthy ones (it is still asked when every other one
// fails: it is moved, never dropped). When its penalty ends, exactly one
// query is let through to it at its configured place as a probe; queries
// made while the probe is in flight still see it as down. An answer of
// any kind (SERVFAIL included: the server is alive, the zone is broken)
// makes it healthy; another failure puts it back for a new penalty. A
// failure because the caller's context ended says nothing of the server
// and changes nothing but ending the probe.
type Exchanger struct {
	servers  []string
	timeout  time.Duration
	udp, tcp *dns.Client
	now      func() time.Time // the health table's clock

	mu     sync.Mutex
	health []serverHealth // by index into servers
}

// serverHealth is one server's entry in the health table.
type serverHealth struct {
	downUntil time.Time // zero: healthy
	probing   bool      // a probe is in flight since the penalty ended
}

// NewExchanger returns an Exchanger for servers (host:port), each Exchange
// bounded by timeout shared among the servers.
func NewExchanger(servers []string, timeout time.Duration) *Exchanger {
	return &Exchanger{servers: servers, timeout: timeout, now: time.Now,
		health: make([]serverHealth, len(servers)),
		udp:    &dns.Client{Net: "udp", Timeout: timeout}, tcp: &dns.Client{Net: "tcp", Timeout: timeout}}
}

// Servers returns the servers asked.
func (x *Exchanger) Servers() []string { return x.servers }

// Exchanger returns the Exchanger the resolver asks through, for the
// other questions asked of the same servers (MTA-STS, DANE): sharing it
// shares its health table, so a server one lookup found dead is not
// waited on by the others.
func (r *Resolver) Exchanger() *Exchanger { return r.x }

// attempt is one server to ask, in the order of one Exchange.
type attempt struct {
	i     int
	probe bool // the one query let through after the server's penalty
	down  bool // asked only after the others failed
}

// order returns the servers to ask: the healthy ones and a due probe at
// their configured places, then those still down, in configured order.
func (x *Exchanger) order() []attempt {
	now := x.now()
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]attempt, 0, len(x.servers))
	var down []attempt
	for i := range x.servers {
		h := &x.health[i]
		switch {
		case h.downUntil.IsZero():
			out = append(out, attempt{i: i})
		case !h.probing && !now.Before(h.downUntil):
			h.probing = true
			out = append(out, attempt{i: i, probe: true})
		default:
			down = append(down, attempt{i: i, down: true})
		}
	}
	return append(out, down...)
}

// sharers is the number of servers in rest that the time left is divided
// among: those not down, or, when only down ones are left, all of them. A
// server known to be down reserves no share of the healthy ones' time.
func sharers(rest []attempt) int {
	n := 0
	for _, a := range rest {
		if !a.down {
			n++
		}
	}
	if n == 0 {
		return len(rest)
	}
	return n
}

// settle records what asking server a.i showed: up (it answered), down
// (it failed by itself), or neither (the caller gave up first).
func (x *Exchanger) settle(a attempt, answered, callerGaveUp bool) {
	now := x.now()
	x.mu.Lock()
	defer x.mu.Unlock()
	h := &x.health[a.i]
	if a.probe {
		h.probing = false
	}
	switch {
	case callerGaveUp:
	case answered:
		*h = serverHealth{}
	default:
		*h = serverHealth{downUntil: now.Add(serverPenalty)}
	}
}

// Exchange asks for name/qtype until a server answers NOERROR or NXDOMAIN,
// and returns that answer; when none does, the error says what each did.
// edns sets the EDNS0 record and flags of each query (nil: a 1232-octet
// buffer, the size that avoids IP fragmentation, and no DO bit).
func (x *Exchanger) Exchange(ctx context.Context, name string, qtype uint16, edns func(*dns.Msg)) (*dns.Msg, error) {
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, x.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	order := x.order()
	// However the loop ends (an earlier server answered, or the time is
	// up), a probe among the servers not asked ends unused, so the next
	// query probes again; left in flight, it would keep the server down
	// for good.
	asked := 0
	defer func() {
		for _, rest := range order[asked:] {
			if rest.probe {
				x.settle(rest, false, true)
			}
		}
	}()
	var errs []error
	for k, a := range order {
		if ctx.Err() != nil {
			break
		}
		asked = k + 1
		srv := x.servers[a.i]
		share := time.Until(deadline) / time.Duration(sharers(order[k:]))
		resp, err := x.ask(ctx, share, name, qtype, edns, srv)
		x.settle(a, resp != nil, resp == nil && caller.Err() != nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("server %s: %w", srv, err))
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("server %s: %s", srv, dns.RcodeToString[resp.Rcode]))
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("query %s %s: %w", name, dns.TypeToString[qtype], errors.Join(errs...))
}

// ask puts the question to one server within share: over UDP, then over
// TCP when the answer is truncated. A reply (of any rcode) to the question
// asked is returned; anything else is an error.
func (x *Exchanger) ask(ctx context.Context, share time.Duration, name string, qtype uint16, edns func(*dns.Msg), srv string) (*dns.Msg, error) {
	sctx, cancel := context.WithTimeout(ctx, share)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns != nil {
		edns(m)
	} else {
		m.SetEdns0(1232, false)
	}
	resp, err := x.exchangeOne(ctx, sctx, x.udp, m, srv)
	if err == nil && resp.Truncated {
		m.Id = dns.Id()
		resp, err = x.exchangeOne(ctx, sctx, x.tcp, m, srv)
		if err != nil {
			err = fmt.Errorf("TCP retry of a truncated answer: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, m.Question[0].Name) ||
		resp.Question[0].Qtype != qtype {
		return nil, errors.New("answer is for another question")
	}
	return resp, nil
}

// exchangeOne sends m to one server within sctx (the server's share of
// ctx). The connection is closed when sctx ends, because miekg/dns only
// obeys a context's deadline, and a shutting-down caller should not wait
// for it. When ctx (the caller's) ended, its error is returned, so the
// caller's giving up is not taken for the server's fault.
func (x *Exchanger) exchangeOne(ctx, sctx context.Context, c *dns.Client, m *dns.Msg, srv string) (*dns.Msg, error) {
	conn, err := c.DialContext(sctx, srv)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(sctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(sctx, m, conn)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return resp, err
}
