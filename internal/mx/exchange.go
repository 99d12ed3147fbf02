package mx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Exchanger asks a list of DNS servers in turn, the way the resolver does:
// UDP first, TCP when the answer is truncated, each query within a timeout
// and cancelled with its context, the next server after SERVFAIL, REFUSED,
// a timeout, a network error or a reply to another question. The TLS policy
// (DANE, MTA-STS) asks its own questions through one.
type Exchanger struct {
	servers  []string
	timeout  time.Duration
	udp, tcp *dns.Client
}

// NewExchanger returns an Exchanger for servers (host:port), each query
// bounded by timeout.
func NewExchanger(servers []string, timeout time.Duration) *Exchanger {
	return &Exchanger{servers: servers, timeout: timeout,
		udp: &dns.Client{Net: "udp", Timeout: timeout}, tcp: &dns.Client{Net: "tcp", Timeout: timeout}}
}

// Servers returns the servers asked.
func (x *Exchanger) Servers() []string { return x.servers }

// Exchange asks for name/qtype until a server answers NOERROR or NXDOMAIN,
// and returns that answer; when none does, the error says what each did.
// edns sets the EDNS0 record and flags of each query (nil: a 1232-octet
// buffer, the size that avoids IP fragmentation, and no DO bit).
func (x *Exchanger) Exchange(ctx context.Context, name string, qtype uint16, edns func(*dns.Msg)) (*dns.Msg, error) {
	var errs []error
	for _, srv := range x.servers {
		if ctx.Err() != nil {
			break
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		if edns != nil {
			edns(m)
		} else {
			m.SetEdns0(1232, false)
		}
		resp, err := x.exchangeOne(ctx, x.udp, m, srv)
		if err == nil && resp.Truncated {
			m.Id = dns.Id()
			resp, err = x.exchangeOne(ctx, x.tcp, m, srv)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("server %s: %w", srv, err))
			continue
		}
		if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, m.Question[0].Name) ||
			resp.Question[0].Qtype != qtype {
			errs = append(errs, fmt.Errorf("server %s: answer is for another question", srv))
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

// exchangeOne sends m to one server with the per-query timeout. The
// connection is closed when ctx is cancelled, because miekg/dns only obeys
// a context's deadline, and a shutting-down caller should not wait for it.
func (x *Exchanger) exchangeOne(ctx context.Context, c *dns.Client, m *dns.Msg, srv string) (*dns.Msg, error) {
	qctx, cancel := context.WithTimeout(ctx, x.timeout)
	defer cancel()
	conn, err := c.DialContext(qctx, srv)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(qctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(qctx, m, conn)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return resp, err
}
