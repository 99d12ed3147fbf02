// Package inject owns mtad's SMTP injection listener: it accepts mail from
// applications over SMTP (relay control, AUTH, STARTTLS, size, recipient and
// session limits), stores each accepted message in the spool and only then
// answers 250 with the queue id, and hands the message to the scheduler.
//
// It must never acknowledge a message before Store.Put has returned (the
// spool syncs before returning), never relay for a client that is neither in
// RelayNetworks nor authenticated, and never answer a local storage failure
// with a 5xx. It does not deliver, schedule or pick bindings: it only checks
// that a requested binding group or binding exists. Besides making every
// line end in CRLF, it changes a message only by removing the
// X-Binding-Group and X-Binding fields and putting a Received field (RFC
// 5321 4.4) at its head.
//
// The protocol engine is github.com/emersion/go-smtp. A few replies come from
// go-smtp itself, before any Session method runs, and so are not logged as
// "rejected" records: syntax errors in MAIL/RCPT (501 5.5.2), commands out of
// order (502 5.5.1), unknown or malformed ESMTP parameters (500/501/504
// 5.5.4), a SIZE= parameter over the limit at MAIL (552 5.3.4 "Max message
// size exceeded"), over-long lines, and BDAT chunks over the size limit.
// go-smtp also advertises CHUNKING; BDAT transactions go through the same
// Session.Data as DATA.
package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/spool"
)

// Options configures a Server. The zero value of a limit means "no limit"
// except where said otherwise.
type Options struct {
	// Listen are the host:port addresses to accept SMTP on; at least one.
	Listen []string
	// RelayNetworks are the client networks that may inject without AUTH.
	RelayNetworks []netip.Prefix
	// Hostname is the name in the greeting and the EHLO reply; required.
	Hostname string
	// MaxMessageSize bounds a message body in bytes, as received; required
	// (> 0) because the body is read into memory before it is stored.
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one transaction; 0 = no limit.
	MaxRecipients int
	// MaxSessions bounds concurrent SMTP connections; the one over the limit
	// is greeted with 421 4.3.2 and closed. 0 = no limit.
	MaxSessions int
	// TLSConfig enables STARTTLS; nil means STARTTLS is not offered.
	TLSConfig *tls.Config
	// AuthUsers maps a user name to its bcrypt hash (see LoadUsers). Empty
	// means AUTH is never offered.
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
}

// Store is where accepted messages go. *spool.Spool satisfies it.
//
// NewID returns a fresh queue id, safe to call concurrently; the injector
// takes one per DATA before the body arrives, because the id goes into the
// Received field at the head of the body, so an id may go unused when the
// message is refused. Put stores m under the m.ID it is given (assigning
// one only if it is empty) and returns only once message and body are on
// stable storage; an error matching spool.ErrNoSpace means the disk is
// full. It must not keep body after it returns: the buffer is reused.
type Store interface {
	NewID() string
	Put(m *spool.Message, body []byte) error
}

// Handoff receives every stored message, after its 250 has been decided
// and before the reply is written. Submit must not block. The scheduler
// satisfies it; it may be called until Shutdown returns.
type Handoff interface {
	Submit(m *spool.Message)
}

// Bindings validates a requested binding group and/or binding; either may be
// "". It returns an error when a named one does not exist. *binding.Set
// satisfies it.
type Bindings interface {
	Check(group, binding string) error
}

// Server is the SMTP injection listener. Create it with New, then Start;
// stop it with Shutdown. A Server is not restartable.
type Server struct {
	opts     Options
	store    Store
	bindings Bindings // nil: any group/binding is accepted
	handoff  Handoff  // nil: nobody is told
	log      *zap.Logger
	// traceHost is Hostname as written in Received fields.
	traceHost string

	smtp      *smtp.Server
	dummyHash []byte // compared against for unknown users, so they take as long as known ones
	fails     *authFailures
	bufs      sync.Pool // *bytes.Buffer for message bodies
	chunks    sync.Pool // *[32 << 10]byte, scratch for reading bodies

	// closing is closed when Shutdown starts; draining mirrors it for the
	// hot path in trackedConn.Read.
	closing  chan struct{}
	draining atomic.Bool

	mu        sync.Mutex
	started   bool
	stopped   bool
	listeners []*trackedListener
	conns     map[*trackedConn]struct{}
	serveWG   sync.WaitGroup // the Serve goroutines, one per listener
}

// New checks opts and builds a Server; nothing is bound until Start.
// bindings and handoff may be nil.
func New(opts Options, store Store, bindings Bindings, handoff Handoff) (*Server, error) {
	if store == nil {
		return nil, errors.New("inject: new server: nil store")
	}
	if len(opts.Listen) == 0 {
		return nil, errors.New("inject: new server: no listen address")
	}
	if strings.TrimSpace(opts.Hostname) == "" {
		return nil, errors.New("inject: new server: empty hostname")
	}
	if opts.MaxMessageSize <= 0 {
		return nil, fmt.Errorf("inject: new server: max message size must be > 0, got %d", opts.MaxMessageSize)
	}
	if opts.MaxRecipients < 0 || opts.MaxSessions < 0 {
		return nil, errors.New("inject: new server: negative max recipients or max sessions")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{
		opts:      opts,
		store:     store,
		bindings:  bindings,
		handoff:   handoff,
		log:       opts.Logger,
		traceHost: traceToken(strings.TrimSpace(opts.Hostname)),
		fails:     newAuthFailures(opts.AuthFailDelay, time.Now),
		closing:   make(chan struct{}),
		conns:     make(map[*trackedConn]struct{}),
	}
	if len(opts.AuthUsers) > 0 {
		// The dummy hash has the cost of a real one, so that "no such user"
		// and "wrong password" cost the same time.
		cost := bcrypt.DefaultCost
		for _, h := range opts.AuthUsers {
			c, err := bcrypt.Cost(h)
			if err != nil {
				return nil, fmt.Errorf("inject: new server: auth users: %w", err)
			}
			cost = c
			break
		}
		h, err := bcrypt.GenerateFromPassword([]byte("mtad dummy password"), cost)
		if err != nil {
			return nil, fmt.Errorf("inject: new server: dummy hash: %w", err)
		}
		s.dummyHash = h
	}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.MaxMessageSize
	// Recipients are counted by the session so that the reply is ours and
	// the refusal is logged.
	srv.MaxRecipients = 0
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = opts.TLSConfig
	// go-smtp only knows "TLS or not"; AUTH on a plain connection is
	// allowed here and refused per connection by the session, which knows
	// whether the client is on loopback.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = zapErrorLog{s.log}
	s.smtp = srv
	return s, nil
}

// Start binds every Listen address and serves each in a goroutine the
// Server owns. If any address cannot be bound, the ones already bound are
// closed and the error names the address.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("inject: start: already started")
	}
	var lc net.ListenConfig
	for _, addr := range s.opts.Listen {
		l, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			for _, tl := range s.listeners {
				tl.Close()
			}
			s.listeners = nil
			return fmt.Errorf("inject: start: listen on %s: %w", addr, err)
		}
		s.listeners = append(s.listeners, &trackedListener{Listener: l, srv: s})
	}
	s.started = true
	for _, tl := range s.listeners {
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			err := s.smtp.Serve(tl)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("inject: serve stopped", zap.Stringer("addr", tl.Addr()), zap.Error(err))
			}
		}()
	}
	return nil
}

// Addrs returns the bound addresses, in Listen order; nil before Start.
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
	// Once every Serve has returned no new connection can be registered
	// with go-smtp, so its Shutdown below waits for a fixed set.
	s.serveWG.Wait()

	s.mu.Lock()
	for c := range s.conns {
		c.interruptIfIdle()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		// Waits for every connection goroutine; the listeners are closed
		// already, so its only error is a repeat close we ignore.
		_ = s.smtp.Shutdown(context.Background())
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Conn.Close()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("inject: shutdown: %w", ctx.Err())
}

// zapErrorLog adapts go-smtp's error log to zap. go-smtp reports mostly
// broken connections (a failed TLS handshake, a reset); panics are errors.
type zapErrorLog struct{ l *zap.Logger }

func (z zapErrorLog) Printf(format string, v ...any) { z.print(fmt.Sprintf(format, v...)) }
func (z zapErrorLog) Println(v ...any)               { z.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (z zapErrorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		z.l.Error("inject: smtp server", zap.String("msg", msg))
		return
	}
	z.l.Debug("inject: smtp server", zap.String("msg", msg))
}
