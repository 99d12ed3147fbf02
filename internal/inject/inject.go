// Package inject owns mtad's SMTP injection listener: it accepts mail from
// applications over SMTP (relay control, AUTH, STARTTLS and implicit TLS,
// size, recipient, session and per-client limits), streams each accepted
// body into the spool, answers 250 with the queue id only once the message
// is on stable storage, and hands the message to the scheduler.
//
// It must never acknowledge a message before Store.PutBody has returned,
// never relay for a client that is neither in RelayNetworks nor
// authenticated, never answer a local storage failure or any other
// transient condition with a 5xx, nor a permanent one with a 4xx, and never
// hold a whole body in memory: a session keeps at most one read block, one
// reply buffer and the header section (bounded by maxHeaderSection). It does
// not deliver, schedule or pick bindings: it only checks that a requested
// binding group or binding exists. Besides making every line end in CRLF,
// it changes a message only by removing the X-Binding-Group and X-Binding
// fields and putting a Received field (RFC 5321 4.4) at its head.
//
// The protocol engine is ours (session.go): one goroutine per connection
// runs the state machine over a pooled block reader (conn.go), and replies
// are buffered and flushed only when the client's input is drained (RFC
// 2920 3.2) or before anything that may block. Every reply with a code of
// 400 or more is also a "rejected" record. go-smtp is used only for its
// reply type, *smtp.SMTPError. The AUTH users, the TLS configuration and
// the HTTP tokens may be replaced while sessions run (reload.go); nothing
// else is, and the listeners themselves are never re-bound.
package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/dkim"
	"github.com/mtad/mtad/internal/spool"
)

// LongLines says what happens to a body line over 998 octets.
type LongLines int

const (
	// LongLinesConvert accepts the message and makes it conformant.
	LongLinesConvert LongLines = iota
	// LongLinesReject refuses it with 554 5.6.0.
	LongLinesReject
)

// Options configures a Server. The zero value of a limit means "no limit"
// except where said otherwise.
type Options struct {
	// Listen are the host:port addresses to accept SMTP on (STARTTLS
	// offered when TLSConfig is set); TLSListen the ones where TLS starts
	// at once (RFC 8314 implicit TLS, port 465 style), which need
	// TLSConfig. At least one address in all.
	Listen    []string
	TLSListen []string
	// RelayNetworks are the client networks that may inject without AUTH.
	RelayNetworks []netip.Prefix
	// Hostname is the name in the greeting and the EHLO reply; required.
	Hostname string
	// MaxMessageSize bounds a message body in bytes, as the client sent it
	// after dot-unstuffing (the Received field we add is not counted);
	// required (> 0). A body of exactly this size is accepted.
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one transaction; 0 = no limit.
	MaxRecipients int
	// MaxSessions bounds concurrent SMTP connections; the one over the limit
	// is greeted with 421 4.3.2 and closed. 0 = no limit.
	MaxSessions int
	// MaxSessionsPerIP bounds the concurrent connections of one client
	// address (IPv6: one /64); over it, 421 4.7.0. 0 = no limit.
	MaxSessionsPerIP int
	// MaxSessionTime bounds a session's life; past it the next command
	// outside a transaction gets 421 4.7.0. 0 = no limit.
	MaxSessionTime time.Duration
	// MaxCommands bounds the commands of one session, handled like
	// MaxSessionTime. 0 = no limit.
	MaxCommands int
	// MaxAuthChecks bounds concurrent password checks (bcrypt costs tens of
	// milliseconds of CPU each); 0 = the number of CPUs.
	MaxAuthChecks int
	// MaxReceivedHeaders: a message with more Received fields than this is
	// refused as a loop (554 5.4.6). 0 = 50.
	MaxReceivedHeaders int
	// AllowAddressLiterals accepts recipients like user@[192.0.2.1].
	AllowAddressLiterals bool
	// LongLines is the policy for body lines over 998 octets.
	LongLines LongLines
	// TLSConfig enables STARTTLS and TLSListen; nil means neither.
	// SetTLSConfig replaces it.
	TLSConfig *tls.Config
	// AuthUsers maps a user name to its bcrypt hash (see LoadUsers). Empty
	// means AUTH is not offered. SetAuthUsers replaces them.
	AuthUsers map[string][]byte
	// ReadTimeout bounds the wait for each command line, WriteTimeout each
	// reply, DataTimeout each read of the message body (an inactivity
	// timeout, not a bound on the whole transfer). 0 = none.
	ReadTimeout, WriteTimeout, DataTimeout time.Duration
	// AuthFailDelay is the pause before answering a failed AUTH. It doubles
	// with each further failure from the same client IP, up to 30 times the
	// base, and is forgotten after a quiet quarter of an hour or a success.
	AuthFailDelay time.Duration
	// Logger receives the "received" and "rejected" records and errors;
	// nil discards them.
	Logger *zap.Logger
	// DKIM signs each accepted message after it is made conformant and
	// before it is stored; nil signs nothing.
	DKIM *dkim.Signer
	// Watermark refuses new mail while the queue is too deep (see
	// Watermark); nil never refuses.
	Watermark *Watermark
}

// Handoff receives every stored message, after its 250 has been decided
// and before the reply is written. Submit must not block. The scheduler
// satisfies it; it may be called until Shutdown returns.
//
// A Handoff may also have a Busy() bool method, found by type assertion:
// while it reports true, MAIL is answered 451 4.3.2 so clients hold their
// mail rather than fill a spool the scheduler cannot keep up with.
type Handoff interface {
	Submit(m *spool.Message)
}

type busyHandoff interface{ Busy() bool }

// Bindings validates a requested binding group and/or binding; either may be
// "". It returns an error when a named one does not exist. *binding.Set
// satisfies it.
type Bindings interface {
	Check(group, binding string) error
}

// authWait is how long an AUTH waits for a password-check slot before it
// is answered 454 4.7.0: long enough to ride out a burst, short enough
// that a client's own timeout (typically 30 s or more) is not reached.
const authWait = 5 * time.Second

// Server is the SMTP injection listener. Create it with New, then Start;
// stop it with Shutdown. A Server is not restartable.
type Server struct {
	opts     Options
	store    Store
	space    lowSpaceStore // store's LowSpace, when it has one
	bindings Bindings      // nil: any group/binding is accepted
	handoff  Handoff       // nil: nobody is told
	busy     busyHandoff
	log      *zap.Logger
	// traceHost is Hostname as written in Received fields.
	traceHost string

	// auth and tlsConf start as Options' AuthUsers and TLSConfig and are
	// swapped by SetAuthUsers and SetTLSConfig (reload.go).
	auth      atomic.Pointer[authState]
	tlsConf   atomic.Pointer[tls.Config]
	fails     *authFailures
	authSlots chan struct{} // a token per running password check
	authWait  time.Duration // authWait, shortened by tests
	blocks    sync.Pool     // *[readBlock]byte, connection read buffers
	hdrBufs   sync.Pool     // *[]byte, header sections

	// writes counts the writes to client sockets (flushes), for tests that
	// show pipelined replies are batched.
	writes atomic.Int64

	// closing is closed when Shutdown starts; draining mirrors it.
	closing  chan struct{}
	draining atomic.Bool

	mu        sync.Mutex
	started   bool
	stopped   bool
	listeners []net.Listener
	conns     map[*conn]struct{}
	perIP     map[netip.Prefix]int
	serveWG   sync.WaitGroup // accept loops
	connWG    sync.WaitGroup // connection goroutines
}

// New checks opts and builds a Server; nothing is bound until Start.
// bindings and handoff may be nil.
func New(opts Options, store Store, bindings Bindings, handoff Handoff) (*Server, error) {
	if store == nil {
		return nil, errors.New("inject: new server: nil store")
	}
	if len(opts.Listen)+len(opts.TLSListen) == 0 {
		return nil, errors.New("inject: new server: no listen address")
	}
	if len(opts.TLSListen) > 0 && opts.TLSConfig == nil {
		return nil, errors.New("inject: new server: tls listen addresses without a TLS certificate")
	}
	if strings.TrimSpace(opts.Hostname) == "" {
		return nil, errors.New("inject: new server: empty hostname")
	}
	if opts.MaxMessageSize <= 0 {
		return nil, fmt.Errorf("inject: new server: max message size must be > 0, got %d", opts.MaxMessageSize)
	}
	if opts.MaxRecipients < 0 || opts.MaxSessions < 0 || opts.MaxSessionsPerIP < 0 || opts.MaxCommands < 0 ||
		opts.MaxAuthChecks < 0 || opts.MaxReceivedHeaders < 0 || opts.MaxSessionTime < 0 {
		return nil, errors.New("inject: new server: negative limit")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.MaxReceivedHeaders == 0 {
		opts.MaxReceivedHeaders = 50
	}
	if opts.MaxAuthChecks == 0 {
		opts.MaxAuthChecks = runtime.NumCPU()
	}
	s := &Server{
		opts:      opts,
		store:     store,
		bindings:  bindings,
		handoff:   handoff,
		log:       opts.Logger,
		traceHost: traceToken(strings.TrimSpace(opts.Hostname)),
		fails:     newAuthFailures(opts.AuthFailDelay, time.Now),
		authSlots: make(chan struct{}, opts.MaxAuthChecks),
		authWait:  authWait,
		closing:   make(chan struct{}),
		conns:     make(map[*conn]struct{}),
		perIP:     make(map[netip.Prefix]int),
	}
	s.busy, _ = handoff.(busyHandoff)
	s.space, _ = store.(lowSpaceStore)
	a, err := newAuthState(opts.AuthUsers, nil)
	if err != nil {
		return nil, fmt.Errorf("inject: new server: auth users: %w", err)
	}
	s.auth.Store(a)
	s.tlsConf.Store(atLeastTLS12(opts.TLSConfig))
	return s, nil
}

// atLeastTLS12 is c, or a copy of it whose MinVersion is raised to TLS 1.2:
// TLS 1.0 and 1.1 are deprecated (RFC 8996) and no listener of ours speaks
// them, whatever the caller's configuration says.
func atLeastTLS12(c *tls.Config) *tls.Config {
	if c == nil || c.MinVersion >= tls.VersionTLS12 {
		return c
	}
	c = c.Clone()
	c.MinVersion = tls.VersionTLS12
	return c
}

// wideRelayNetworks are the relay networks holding any address that is not
// loopback: each one lets every host in it send mail anywhere unauthenticated.
func wideRelayNetworks(nets []netip.Prefix) []string {
	var wide []string
	for _, p := range nets {
		a := p.Masked().Addr()
		loop := a.IsLoopback() && (a.Is4() && p.Bits() >= 8 || a.Is6() && p.Bits() == 128)
		if !loop {
			wide = append(wide, p.String())
		}
	}
	return wide
}

// Start binds every Listen and TLSListen address and serves each in a
// goroutine the Server owns. If any address cannot be bound, the ones
// already bound are closed and the error names the address.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("inject: start: already started")
	}
	if s.stopped {
		return errors.New("inject: start: shut down")
	}
	var lc net.ListenConfig
	var implicit []bool
	for i, addr := range append(append([]string(nil), s.opts.Listen...), s.opts.TLSListen...) {
		l, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			for _, l := range s.listeners {
				l.Close()
			}
			s.listeners = nil
			return fmt.Errorf("inject: start: listen on %s: %w", addr, err)
		}
		s.listeners = append(s.listeners, l)
		implicit = append(implicit, i >= len(s.opts.Listen))
	}
	s.started = true
	if wide := wideRelayNetworks(s.opts.RelayNetworks); len(wide) > 0 {
		// Said once, at start: a relay network past loopback is a choice
		// worth seeing in the log whenever the daemon comes up.
		s.log.Warn("inject: relay_networks wider than loopback: hosts in them may relay without authentication",
			zap.Strings("relay_networks", wide))
	}
	for i, l := range s.listeners {
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			s.serve(l, implicit[i])
		}()
	}
	return nil
}

// serve accepts until the listener is closed. Temporary accept errors
// (EMFILE and the like) are retried after a pause that grows to a second,
// as net/http does, so a file-descriptor shortage does not spin.
func (s *Server) serve(l net.Listener, implicitTLS bool) {
	var pause time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Warn("inject: accept", zap.Error(err), zap.Duration("retry_in", pause))
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-s.closing:
				t.Stop()
				return
			}
			continue
		}
		pause = 0
		c, e := s.track(nc)
		if e != nil {
			s.refuseSession(nc, e)
			continue
		}
		c.implicitTLS = implicitTLS
		go func() {
			defer s.connWG.Done()
			defer s.untrack(c)
			c.serve()
		}()
	}
}

// Addrs returns the bound addresses, Listen then TLSListen; nil before
// Start.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	addrs := make([]net.Addr, 0, len(s.listeners))
	for _, l := range s.listeners {
		addrs = append(addrs, l.Addr())
	}
	return addrs
}

// Shutdown stops accepting connections and drains the open ones:
//
//   - a session that is idle (no MAIL given, or between transactions) is
//     closed at once, without a reply; a client that pools connections sees
//     an ordinary close;
//   - a session inside a transaction (after MAIL, through DATA and the
//     spool write) is left to finish it: it gets its 250 (or refusal) and is
//     closed when it would read its next command;
//   - a session waiting out an AUTH failure delay stops waiting.
//
// When ctx ends first, every remaining connection is closed; a message that
// was being stored is stored, but its client may not see the 250 and will
// retry (at-least-once). Shutdown returns only when every goroutine of the
// Server has ended, with ctx.Err() if the deadline cut sessions short.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return errors.New("inject: shutdown: already shut down")
	}
	s.stopped = true
	started := s.started
	listeners := s.listeners
	s.mu.Unlock()

	s.draining.Store(true)
	close(s.closing)
	if !started {
		return nil
	}
	for _, l := range listeners {
		l.Close()
	}
	// Once every accept loop has returned no new connection can be
	// tracked, so connWG.Wait below waits for a fixed set.
	s.serveWG.Wait()

	s.mu.Lock()
	for c := range s.conns {
		c.interruptIfIdle()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.connWG.Wait()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("inject: shutdown: %w", ctx.Err())
}
