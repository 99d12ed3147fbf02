package connpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/conform"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
	"github.com/mtad/mtad/internal/tlspolicy"
)

// session is one connection's goroutine and state.
type session struct {
	pool   *Pool
	pair   *queue.Pair
	policy Policy
	wake   chan struct{} // capacity 1; Wake sends when it takes us off the idle list
	// reclaimed is set before a send on wake that means "quit": another
	// pair needs the slot.
	reclaimed atomic.Bool

	src source
	at  Attempt

	mu     sync.Mutex
	conn   net.Conn // the raw connection, for a forced Close
	forced bool

	result hooks.SessionResult
}

// source is a binding as the pool uses it.
type source struct {
	name string
	addr netip.Addr // invalid: let the system choose
	ehlo string
}

func (s *session) run() {
	p := s.pool
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.live, s)
		p.mu.Unlock()
		p.total.Add(-1)
		// The grantor hands the freed slot on at once rather than at the
		// next tick.
		if p.ctx.Err() == nil {
			p.grant.Released(s.pair)
		}
	}()
	dr := s.pair.Domain()
	c, err := s.connect(p.ctx)
	if err != nil {
		s.pair.ConnectFailed()
		if p.ctx.Err() == nil {
			// At shutdown the pair's deliveries stay where they are: the
			// spool still holds them, and no attempt was made.
			p.opts.Outcomes.ConnectFailed(s.pair, s.at, err)
		}
		return
	}
	s.pair.Connected()
	defer s.pair.Closed()
	if c = s.serve(c); c != nil {
		_ = c.Quit()
	}
	p.opts.Hooks.PostSessionSMTP.Call(dr, s.pair.Slot(), p.now(), s.result)
}

// serve sends deliveries from the pair's queue until it is empty and no
// work arrives within the idle timeout, the per-connection limit is
// reached, the connection breaks, or the pool closes. It returns the
// connection in use at the end (nil when none is left to close).
func (s *session) serve(c *smtpclient.Client) *smtpclient.Client {
	p := s.pool
	sent := 0
	for p.ctx.Err() == nil {
		if max := s.policy.MaxDeliveriesPerConnection; max > 0 && sent >= max {
			return c
		}
		if p.grant.Yield(s.pair) {
			return c
		}
		if s.pair.Len() > 0 {
			if !s.admit() {
				return c
			}
		}
		if b := p.opts.Bindings.Get(s.pair.Slot()); b != nil && b.Retired() {
			// A reload removed the binding: nothing more is sent from its
			// address. The scheduler moves what is left on the pair.
			return c
		}
		d := s.pair.Pop()
		if d == nil {
			if !s.idle() {
				return c
			}
			continue
		}
		sent++
		ok, redo := s.deliver(c, d, sent > 1)
		if redo {
			// The server closed a connection it had let us reuse before
			// answering this transaction at all (many close after N
			// messages, or when idle): no verdict on the delivery, so it
			// goes again at once on a fresh connection under the same
			// slot, as Postfix retries a cached connection's failure.
			c.Close()
			nc, err := s.connect(p.ctx)
			if err != nil {
				p.opts.Outcomes.Result(d, s.at, nil, err)
				return nil
			}
			c, sent = nc, 1
			ok, _ = s.deliver(c, d, false)
		}
		if !ok {
			return c
		}
	}
	return c
}

// admit waits for a token of the pair's message budgets (Grantor.Admit)
// for as long as its idle timeout, in real time: a session that loses the
// race for a token to another session of its site waits for the next one
// rather than hanging up (receivers count connection churn against a
// sender), and a clock that does not move (a test's) cannot keep it
// waiting longer. false means end the session (no token within the idle
// timeout, or the pool is closing).
func (s *session) admit() bool {
	p := s.pool
	idle := s.policy.IdleTimeout
	if idle <= 0 {
		idle = p.opts.IdleTimeout
	}
	start := time.Now()
	for {
		wait := p.grant.Admit(s.pair)
		if wait <= 0 {
			return true
		}
		if time.Since(start)+wait > idle {
			return false
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return false
		}
	}
}

// deliver runs d's transaction (more than one when the server takes
// only some recipients per transaction) and reports it; ok false means
// the connection is unusable. redo means nothing was reported: the
// connection, reused (the caller says so), was closed by the server
// before it answered anything of this transaction, and d should go again
// on a new connection. The body is streamed from the spool and closed
// when the transaction ends, so a session holds no body between
// transactions and at most a spool chunk during one.
func (s *session) deliver(c *smtpclient.Client, d *queue.Delivery, reused bool) (ok, redo bool) {
	p := s.pool
	if d.Expires != 0 && p.now().UnixNano() >= d.Expires {
		p.opts.Outcomes.Result(d, s.at, nil, ErrExpired)
		return true, false
	}
	res, sent, err := s.send(c, d, nil)
	if !sent {
		p.opts.Outcomes.Result(d, s.at, nil, err)
		return true, false
	}
	if err != nil && reused && closedUnanswered(err) {
		return false, true
	}
	// RFC 5321 §4.5.3.1.10: a server may take fewer recipients per
	// transaction than we sent ("452 4.5.3 too many recipients"); the
	// rest go in further transactions on this connection, not to the
	// delayed queue. Each round takes at least one recipient or stops,
	// so there are at most len(d.Rcpts) rounds.
	for round := 0; err == nil && res.Data == nil && round < len(d.Rcpts); round++ {
		rest := tooMany(res)
		if len(rest) == 0 {
			break
		}
		r2, sent2, err2 := s.send(c, d, rest)
		if !sent2 || err2 != nil {
			// The first transaction's recipients keep their verdicts;
			// the rest share this failure (temporary).
			e := outcome.As(err2)
			if e == nil {
				e = outcome.Temp(outcome.PhaseMail, smtp.EnhancedCode{4, 4, 2}, err2)
			}
			for _, i := range rest {
				res.Rcpt[i] = e
			}
			s.count(res, nil, len(d.Rcpts))
			p.opts.Outcomes.Result(d, s.at, res, nil)
			return sent2 && err2 == nil, false
		}
		for j, i := range rest {
			e := r2.Rcpt[j]
			if e == nil {
				e = r2.Data
			}
			res.Rcpt[i] = e
		}
		if r2.Data != nil || len(tooMany(res)) == len(rest) {
			break // refused, or no progress
		}
	}
	s.count(res, err, len(d.Rcpts))
	p.opts.Outcomes.Result(d, s.at, res, err)
	return err == nil, false
}

// closedUnanswered reports whether err is the server closing (or
// resetting) the connection before any reply of the transaction: no
// verdict, and not a timeout (a server that hangs gets no second try).
func closedUnanswered(err error) bool {
	e := outcome.As(err)
	if e == nil || e.Code != 0 || e.Phase != outcome.PhaseMail || errors.Is(err, smtpclient.ErrDeadline) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// tooMany returns the indices of the recipients refused with "too many
// recipients": 452 with enhanced code 4.5.3, or without an enhanced code
// and saying so (a 452 4.2.2 is a full mailbox, and stays deferred).
func tooMany(res *smtpclient.Result) []int {
	var idx []int
	for i, e := range res.Rcpt {
		if e == nil || e.Code != 452 {
			continue
		}
		if e.Enhanced == (smtp.EnhancedCode{4, 5, 3}) ||
			e.Enhanced == (smtp.EnhancedCode{}) && strings.Contains(strings.ToLower(e.Message), "too many recipients") {
			idx = append(idx, i)
		}
	}
	return idx
}

// send runs one transaction for d's recipients at idx (nil: all of them).
// sent false means the body could not be opened and nothing was sent: err
// says why, and the connection is untouched.
func (s *session) send(c *smtpclient.Client, d *queue.Delivery, idx []int) (*smtpclient.Result, bool, error) {
	p := s.pool
	br, err := p.opts.Bodies.OpenBody(d.MsgID)
	if err != nil {
		return nil, false, bodyError(d.MsgID, err)
	}
	defer br.Close()
	env := envelope(d)
	if idx != nil {
		env = subEnvelope(env, idx)
	}
	body := smtpclient.Stream(br, br.Size())
	var convErr error // from the conversion, set while Send runs
	if copts, ok := conversion(c, env); ok {
		// RFC 6152 §3: an 8-bit body to a receiver without 8BITMIME is
		// converted to 7 bits on the way, and goes without BODY=8BITMIME.
		// Every body to such a receiver goes through the converter, not
		// only those declared 8-bit: an injecting client may send 8-bit
		// octets undeclared, and the converter's first pass finds them (a
		// 7-bit body is copied). Likewise an SMTPUTF8 message to a
		// receiver without SMTPUTF8 (whose envelope the client
		// downgrades) gets ASCII header sections, or fails if a header
		// holds what cannot be made ASCII (a UTF-8 local part). Such
		// receivers are rare, and seldom offer CHUNKING anyway.
		env.EightBit = env.EightBit && !copts.To7Bit
		env.Size = 0 // unknown until converted
		body = smtpclient.Produce(func(w io.Writer) error {
			_, convErr = conform.Rewrite(func() (io.ReadCloser, error) {
				return p.opts.Bodies.OpenBody(d.MsgID)
			}, w, copts)
			return convErr
		})
	}
	s.at.TLS = c.TLS()
	s.at.DSN = c.Offers("DSN")
	// Wall time, not p.now: the pool's clock may be a test's, and this
	// measures the remote side.
	t0 := time.Now()
	res, err := c.Send(env, body)
	if p.txTime != nil {
		p.txTime.Observe(time.Since(t0).Seconds())
	}
	if err == nil && res.Data == nil {
		p.tlsp.Delivered(s.at.TLSInfo)
	}
	if ce := (*conform.Error)(nil); err != nil && errors.As(convErr, &ce) {
		// The content cannot be made 7-bit: no retry will change that.
		// The session is broken (the body stopped mid-DATA), but the
		// delivery fails for good, not for this connection's sake.
		return nil, true, &outcome.Error{Phase: outcome.PhaseData, Enhanced: ce.Enhanced, Temporary: false,
			Message: "the message cannot be converted for a receiver without 8BITMIME or SMTPUTF8: " + ce.Message,
			Err:     convErr}
	}
	return res, true, err
}

// subEnvelope is env for the recipients at idx only.
func subEnvelope(env smtpclient.Envelope, idx []int) smtpclient.Envelope {
	to := make([]string, len(idx))
	var dsn []smtpclient.RcptDSN
	if env.DSN != nil {
		dsn = make([]smtpclient.RcptDSN, len(idx))
	}
	for j, i := range idx {
		to[j] = env.To[i]
		if dsn != nil {
			dsn[j] = env.DSN[i]
		}
	}
	env.To, env.DSN = to, dsn
	return env
}

// conversion says how a body must be converted for the receiver on c, if
// it must: to 7 bits when it does not offer 8BITMIME, to ASCII header
// sections when the message is SMTPUTF8 and it does not offer SMTPUTF8.
func conversion(c *smtpclient.Client, env smtpclient.Envelope) (conform.Options, bool) {
	o := conform.Options{To7Bit: !c.Offers("8BITMIME"), ASCIIHeaders: env.UTF8 && !c.Offers("SMTPUTF8")}
	return o, o.To7Bit || o.ASCIIHeaders
}

// bodyError is the result of a body the spool could not open: local, and
// temporary (the spool may recover; a corrupt body fails for good at expiry).
func bodyError(id string, err error) *outcome.Error {
	return &outcome.Error{Phase: outcome.PhaseQueue, Enhanced: smtp.EnhancedCode{4, 3, 0}, Temporary: true,
		Message: "reading the message body", Err: fmt.Errorf("connpool: body of %s: %w", id, err)}
}

// envelope is d's envelope as the client sends it: what the injecting
// client declared (SMTPUTF8, BODY=8BITMIME, the RFC 3461 parameters) passed
// on. A non-ASCII address needs SMTPUTF8 whatever was declared (a DSN to
// such a sender, say); the client downgrades what it can for a receiver
// without it.
func envelope(d *queue.Delivery) smtpclient.Envelope {
	env := smtpclient.Envelope{From: d.Sender, To: make([]string, len(d.Rcpts)), Size: d.Size,
		UTF8: d.UTF8 || !isASCII(d.Sender), EightBit: d.EightBit, EnvID: d.EnvID}
	switch spool.Ret(d.Ret) {
	case spool.RetFull:
		env.Ret = "FULL"
	case spool.RetHdrs:
		env.Ret = "HDRS"
	}
	for i, r := range d.Rcpts {
		env.To[i] = r.Addr
		env.UTF8 = env.UTF8 || !isASCII(r.Addr)
		if r.Notify != 0 || r.ORcpt != "" {
			if env.DSN == nil {
				env.DSN = make([]smtpclient.RcptDSN, len(d.Rcpts))
			}
			env.DSN[i] = smtpclient.RcptDSN{Notify: notifyString(spool.Notify(r.Notify)), ORcpt: r.ORcpt}
		}
	}
	return env
}

// notifyString is n as NOTIFY's value on the wire; "" when not given.
func notifyString(n spool.Notify) string {
	if n == 0 {
		return ""
	}
	if n&spool.NotifyNever != 0 {
		return "NEVER"
	}
	var b []byte
	for _, f := range []struct {
		bit  spool.Notify
		name string
	}{{spool.NotifySuccess, "SUCCESS"}, {spool.NotifyFailure, "FAILURE"}, {spool.NotifyDelay, "DELAY"}} {
		if n&f.bit != 0 {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = append(b, f.name...)
		}
	}
	return string(b)
}

// count adds a transaction to the session's result for PostSessionSMTP.
func (s *session) count(res *smtpclient.Result, err error, n int) {
	r := &s.result
	if err != nil {
		r.Deferred += n
		if e := outcome.As(err); e != nil && e.Code != 0 {
			r.LastCode = e.Code
			r.Code421 = r.Code421 || e.Code == 421
		}
		return
	}
	for _, e := range res.Rcpt {
		if e == nil {
			e = res.Data
		}
		switch {
		case e == nil:
			r.Delivered++
		case e.Temporary:
			r.Deferred++
		default:
			r.Failed++
		}
		if e != nil && e.Code != 0 {
			r.LastCode = e.Code
			r.Code421 = r.Code421 || e.Code == 421
		}
	}
	if res.Data == nil {
		r.LastCode = 250
	}
}

// idle waits for Wake, the idle timeout or the pool's end; true means go
// look at the queue again.
func (s *session) idle() bool {
	p := s.pool
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	p.idle[s.pair] = append(p.idle[s.pair], s)
	p.mu.Unlock()
	// Work pushed between our Pop and joining the idle list found no idle
	// session to wake; look once more now that Wake can find us.
	if s.pair.Len() > 0 {
		if !s.leaveIdle() {
			<-s.wake
			return !s.reclaimed.Load()
		}
		return true
	}
	idle := s.policy.IdleTimeout
	if idle <= 0 {
		idle = p.opts.IdleTimeout
	}
	t := time.NewTimer(idle)
	defer t.Stop()
	select {
	case <-s.wake:
		return !s.reclaimed.Load()
	case <-t.C:
	case <-p.ctx.Done():
	}
	// Wake (or reclaim) may have taken us off the list at the same moment:
	// then its work is ours, unless the pool is closing or wants the slot.
	if !s.leaveIdle() {
		<-s.wake
		return p.ctx.Err() == nil && !s.reclaimed.Load()
	}
	// Work pushed while the timer fired found us neither idle nor counted
	// out of the pair's goal; take it rather than leave it for a tick.
	return p.ctx.Err() == nil && s.pair.Len() > 0
}

// leaveIdle takes s off its pair's idle list and reports whether it was
// still there (false: Wake took it off and sent on s.wake).
func (s *session) leaveIdle() bool {
	p := s.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, w := range p.idle[s.pair] {
		if w == s {
			p.removeIdleLocked(s.pair, i)
			return true
		}
	}
	return false
}

// forceClose closes the connection under a session that did not end in
// time; p.mu is held.
func (s *session) forceClose() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forced = true
	if s.conn != nil {
		s.conn.Close()
	}
}

func (s *session) setConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forced {
		return false
	}
	s.conn = c
	return true
}

// connect resolves the pair's domain and tries its MX hosts in order and
// each of their addresses, until an SMTP session is up (greeting, EHLO,
// STARTTLS when offered). It fires post_initiate_connection_smtp after
// every attempt and logs a connection record for it.
func (s *session) connect(ctx context.Context) (*smtpclient.Client, error) {
	p := s.pool
	dr := s.pair.Domain()
	src, err := p.source(s.pair.Slot())
	s.src, s.at.Binding = src, src.name
	if err != nil {
		s.report("", netip.AddrPort{}, int(hooks.ConnErrBind), err)
		return nil, outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 0}, err)
	}
	lctx, cancel := context.WithTimeout(ctx, p.opts.LookupTimeout)
	hosts, err := p.opts.Resolver.Lookup(lctx, dr.Name)
	cancel()
	if err != nil {
		s.report("", netip.AddrPort{}, int(connErrFromMX(err, ctx)), err)
		if !isPermanentDNS(err) {
			err = asTemporary(err)
		}
		return nil, err
	}
	set := s.policy.TLS
	if p.opts.DisableTLS {
		set.Mode = tlspolicy.Disabled
	}
	if r, ok := p.opts.Resolver.(interface{ Routed(string) bool }); ok && r.Routed(dr.Name) {
		// A static route is the operator's explicit choice of host: the
		// domain's MTA-STS policy lists its MX hosts, not the route, and
		// would refuse it. The route gets the pair's TLS mode alone.
		set.MTASTS, set.DANE = false, false
	}
	// The domain's TLS plan (its MTA-STS policy, when on) is made before
	// any MX host is tried: an enforced policy decides which may be.
	plan := p.tlsp.Plan(ctx, dr.Name, set)
	// One connection attempt is bounded in time over all its addresses,
	// by the transaction deadline: ten addresses each answering every
	// phase just inside its limit would otherwise hold the slot for
	// hours. And in count, whatever the resolver returned (internal/mx
	// bounds its own answers, by default to 10 addresses).
	limit := p.opts.Timeouts.Transaction
	if limit <= 0 {
		limit = smtpclient.DefaultTimeouts().Transaction
	}
	parent := ctx
	var cancelAttempt context.CancelFunc
	ctx, cancelAttempt = context.WithTimeout(ctx, limit)
	defer cancelAttempt()
	var last error
	tried, permitted := 0, 0
	// stop says why the attempt must end before the next host or
	// address: the pool closing, the attempt's deadline, or its count.
	end := time.Now().Add(limit)
	stop := func() error {
		switch {
		// The clock, not only ctx.Err(): the context's timer may fire a
		// moment after its deadline, while dials under it fail at once.
		case parent.Err() == nil && (ctx.Err() != nil || !time.Now().Before(end)):
			err := fmt.Errorf("connpool: connect %s: no session after %d addresses within %s (delivery.timeouts.transaction), last: %w",
				dr.Name, tried, limit, last)
			s.report("", netip.AddrPort{}, int(hooks.ConnErrTimeout), err)
			return outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, err)
		case ctx.Err() != nil:
			return asTemporary(fmt.Errorf("connpool: connect %s: %w", dr.Name, ctx.Err()))
		case tried == maxAttemptAddrs:
			return asTemporary(fmt.Errorf("connpool: connect %s: no session after %d addresses, last: %w", dr.Name, tried, last))
		}
		return nil
	}
	for _, h := range hosts {
		if err := stop(); err != nil {
			return nil, err
		}
		if !plan.Permits(h.Name) {
			continue // MTA-STS enforce: never used, not even tried
		}
		permitted++
		hp, err := plan.Host(ctx, h.Name)
		if err != nil {
			s.at.MX, s.at.TLSInfo = h.Name, tlspolicy.Info{Policy: tlspolicy.LabelDANE}
			s.report(h.Name, netip.AddrPort{}, int(hooks.ConnErrTLS), err)
			last = err
			continue
		}
		for _, a := range h.Addrs {
			if err := stop(); err != nil {
				return nil, err
			}
			if src.addr.IsValid() && src.addr.Unmap().Is4() != a.Addr().Unmap().Is4() {
				continue // a v4 binding cannot reach a v6 address, and the reverse
			}
			tried++
			// The memory of failed handshakes is opportunistic's alone:
			// under any other policy it would be a downgrade anyone on
			// the path could force.
			c, err := s.attempt(ctx, h.Name, a, hp, !hp.TryTLS || hp.Fallback && p.tls.Skip(h.Name))
			if err == nil {
				return c, nil
			}
			if isTLSFailure(err) {
				if hp.Fallback {
					// Opportunistic TLS: any clear text beats no delivery.
					p.tls.Failed(h.Name)
					c, err = s.attempt(ctx, h.Name, a, hp, true)
					if err == nil {
						return c, nil
					}
				} else {
					// Defer; never clear text. Another address or MX
					// may still do TLS.
					err = hp.Failure(err, errors.Is(err, smtpclient.ErrTLSNotOffered))
					s.at.TLSInfo = tlspolicy.Info{Policy: hp.Policy}
				}
			}
			last = err
		}
	}
	if err := stop(); err != nil && tried < maxAttemptAddrs {
		return nil, err // the deadline or the pool's end cut the list short
	}
	if permitted == 0 && len(hosts) > 0 {
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = h.Name
		}
		err := plan.NoPermittedMX(names)
		s.at.TLSInfo = tlspolicy.Info{Policy: tlspolicy.LabelMTASTS}
		s.report("", netip.AddrPort{}, int(hooks.ConnErrTLS), err)
		return nil, err
	}
	if tried == 0 && last != nil {
		return nil, asTemporary(fmt.Errorf("connpool: every MX of %s failed, last: %w", dr.Name, last))
	}
	if tried == 0 {
		err := fmt.Errorf("connpool: no address of %s's MX hosts matches binding %s's address family", dr.Name, src.name)
		s.report("", netip.AddrPort{}, int(hooks.ConnErrNoMXReachable), err)
		return nil, outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 4}, err)
	}
	return nil, asTemporary(fmt.Errorf("connpool: every MX of %s failed, last: %w", dr.Name, last))
}

// attempt dials one address and starts SMTP on it under the host's TLS
// plan (noTLS: without STARTTLS).
func (s *session) attempt(ctx context.Context, host string, a netip.AddrPort, hp tlspolicy.Host, noTLS bool) (*smtpclient.Client, error) {
	p := s.pool
	s.at.MX, s.at.RemoteIP = host, a.Addr().String()
	fd := -1
	d := net.Dialer{
		Timeout: p.opts.ConnectTimeout,
		Control: func(network, address string, rc syscall.RawConn) error {
			if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
				return err
			}
			if p.opts.Control != nil {
				return p.opts.Control(network, address, rc)
			}
			return nil
		},
	}
	if s.src.addr.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: s.src.addr.AsSlice()}
	}
	conn, err := d.DialContext(ctx, "tcp", a.String())
	if err != nil {
		err = outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1},
			fmt.Errorf("connect to %s [%s] from %s: %w", host, a, s.src.name, err))
		s.report(host, a, int(hooks.ConnErrFromDial(err)), err)
		return nil, err
	}
	if !s.setConn(conn) {
		conn.Close()
		err := outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 2}, errors.New("connpool: closing"))
		s.report(host, a, int(hooks.ConnErrCanceled), err)
		return nil, err
	}
	c, err := smtpclient.New(conn, smtpclient.Options{
		LocalName:       s.src.ehlo,
		ServerName:      host,
		DisableTLS:      noTLS,
		RequireTLS:      hp.Require,
		TLSConfig:       hp.Config,
		DisableChunking: p.opts.DisableChunking,
		Timeouts:        p.opts.Timeouts,
		Deadline:        deadlineOf(ctx),
	})
	if err != nil {
		code := hooks.ConnErrGreeting
		if isTLSFailure(err) {
			code = hooks.ConnErrTLS
		} else if e := outcome.As(err); e == nil || e.Code == 0 {
			code = hooks.ConnErrFromDial(err) // I/O error or timeout before any reply
		}
		s.report(host, a, int(code), err)
		return nil, err
	}
	s.report(host, a, fd, nil)
	if st, ok := c.TLSConnectionState(); ok {
		s.at.TLSInfo = hp.Info(&st)
	} else {
		s.at.TLSInfo = hp.Info(nil)
	}
	return c, nil
}

// maxAttemptAddrs bounds the addresses one connection attempt dials, as
// internal/mx's default bound on a lookup's addresses does: a resolver that
// returns more (a static route to a long list) cannot make one attempt
// dial them all.
const maxAttemptAddrs = 10

// deadlineOf is ctx's deadline, or zero.
func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// report fires post_initiate_connection_smtp and logs the attempt.
func (s *session) report(host string, a netip.AddrPort, fd int, err error) {
	p := s.pool
	dr := s.pair.Domain()
	p.opts.Hooks.PostInitiateConnectionSMTP.Call(dr, s.pair.Slot(), p.now(), fd)
	rec := logging.Connection{Domain: dr.Name, Binding: s.src.name, MX: host, FD: fd}
	if a.IsValid() {
		rec.RemoteIP = a.Addr().String()
	}
	if err != nil {
		rec.ConnErr = hooks.ConnErr(fd).String() + ": " + err.Error()
	}
	rec.Log(p.log)
}

// Lookup resolves domain's MX hosts within the pool's LookupTimeout: the
// grantor resolves a domain before any of its pairs gets a slot.
func (p *Pool) Lookup(ctx context.Context, domain string) ([]mx.Host, error) {
	lctx, cancel := context.WithTimeout(ctx, p.opts.LookupTimeout)
	defer cancel()
	return p.opts.Resolver.Lookup(lctx, domain)
}

// LookupFailed reports a failed resolution of the pair's domain made before
// a slot was granted as a session would have: post_initiate_connection_smtp
// with the CONN_ERR and a connection record.
func (p *Pool) LookupFailed(dr *queue.DomainRecord, slot int, err error) {
	src, _ := p.source(slot)
	fd := int(connErrFromMX(err, p.ctx))
	p.opts.Hooks.PostInitiateConnectionSMTP.Call(dr, slot, p.now(), fd)
	logging.Connection{Domain: dr.Name, Binding: src.name, FD: fd,
		ConnErr: hooks.ConnErr(fd).String() + ": " + err.Error()}.Log(p.log)
}

// LookupError is the error ConnectFailed would carry for a failed
// resolution: permanent for a permanent DNS answer, temporary otherwise.
func LookupError(err error) error {
	if isPermanentDNS(err) {
		return err
	}
	return asTemporary(err)
}

// connErrFromMX maps an MX lookup failure to its CONN_ERR.
func connErrFromMX(err error, ctx context.Context) hooks.ConnErr {
	switch mx.KindOf(err) {
	case mx.KindNullMX:
		return hooks.ConnErrNullMX
	case mx.KindNXDomain, mx.KindBadDomain:
		return hooks.ConnErrNXDomain
	case mx.KindNoAddress:
		return hooks.ConnErrNoMXReachable
	case mx.KindProhibitedIP:
		return hooks.ConnErrProhibitedIP
	}
	if ctx.Err() != nil {
		return hooks.ConnErrCanceled
	}
	return hooks.ConnErrMXLookup
}

// isPermanentDNS reports whether err is a DNS answer that will not change
// on retry: the domain's mail bounces without a connection.
func isPermanentDNS(err error) bool {
	k := mx.KindOf(err)
	return k != 0 && !k.Temporary()
}

// IsPermanentDNS reports whether a ConnectFailed error is a permanent DNS
// answer (NXDOMAIN, null MX, prohibited MX address, bad domain name).
func IsPermanentDNS(err error) bool { return isPermanentDNS(err) }

func isTLSFailure(err error) bool {
	e := outcome.As(err)
	return e != nil && e.Phase == outcome.PhaseTLS && e.Code == 0
}

// asTemporary makes a connection failure temporary: whatever one MX said at
// its greeting, or however the network failed, it is no verdict on the
// recipients (Postfix too skips a 5xx greeting and defers).
func asTemporary(err error) error {
	e := outcome.As(err)
	if e == nil {
		return outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, err)
	}
	if e.Temporary {
		return err
	}
	c := *e
	c.Temporary = true
	return &wrapped{msg: err.Error(), e: &c, orig: err}
}

// wrapped keeps the original error's text and chain while its outcome is
// the temporary copy.
type wrapped struct {
	msg  string
	e    *outcome.Error
	orig error
}

func (w *wrapped) Error() string   { return w.msg }
func (w *wrapped) Unwrap() []error { return []error{w.e, w.orig} }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
