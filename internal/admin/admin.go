// Package admin serves mtad's operator HTTP API: health, status, Prometheus
// metrics, and the policy endpoints (resolved shaping, suspensions, rule
// throttles; policy.go). It reads the daemon's state and passes the
// operator's orders through small interfaces the daemon plugs in; it never
// changes queues, the spool or policy state behind their owner's back, and
// never logs a policy change itself (the owner writes the one record).
//
// Access: with tokens (admin.tokens_file) every request needs
// "Authorization: Bearer TOKEN" and is logged under the token's name;
// without, Start refuses any listen address but loopback (auth.go). The
// profiler is served only when Options.Pprof is set.
//
// Every error answer is JSON, {"error": "..."} with a fitting HTTP status
// (a refused input names its parameter or field first: "domain: required"),
// so mtactl and scripts can rely on one shape. A method a path does not
// take gets 405 with an Allow header.
//
//	GET    /                             the live status page, and its assets under /ui/ (status.go)
//	GET    /healthz                      process alive
//	GET    /readyz                       spool writable, listeners up, scheduler ticking (health.go)
//	GET    /api/v1/status
//	GET    /api/v1/summary               totals, last-minute counts, queue, connections, spool, suspensions (summary.go)
//	GET    /api/v1/shaping?domain=D[&binding=B]
//	GET    /api/v1/suspensions
//	POST   /api/v1/suspensions          {"scope","name","binding","duration","reason","by"}
//	DELETE /api/v1/suspensions/{id}[?by=&reason=]
//	GET    /api/v1/throttles
//	DELETE /api/v1/throttles?scope=KEY[&by=&reason=]
//	POST   /api/v1/cancel               {"queue_id"|"domain"[+"binding"]|"sender","reason","by","dsn"} (actions.go)
//	POST   /api/v1/bounce               {"queue_id"|"domain"[+"binding"]|"sender","reason","by"}
//	POST   /api/v1/flush                {"domain","binding","by"}
//	POST   /api/v1/reload               {"by","reason"} (reload.go)
//	POST   /api/v1/rebind               {"domain","binding","group","duration","reason","by"}
//	GET    /api/v1/quarantine           (quarantine.go)
//	GET    /api/v1/quarantine/{id}
//	GET    /api/v1/quarantine/{id}/body
//	POST   /api/v1/quarantine/{id}/reinject {"reason","by"}
//	DELETE /api/v1/quarantine/{id}?reason=&by=
//	GET    /api/v1/queues?by=&sort=&order=&limit=&offset=&domain=&provider=&binding= (queues.go)
//	GET    /api/v1/messages?domain=|binding=|sender=&limit=&after= (messages.go)
//	GET    /api/v1/messages/{id}         envelope, recipients, header block
//	GET    /api/v1/messages/{id}/body    the raw message, message/rfc822
//	GET    /metrics
//	GET    /debug/pprof/                 only with Options.Pprof
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/config"
)

// StatusFunc returns a JSON-encodable snapshot of the daemon's state.
type StatusFunc func() any

// Options configure the admin server.
type Options struct {
	Listen   string              // host:port; "" disables the server
	Gatherer prometheus.Gatherer // metrics to expose on /metrics; nil = none
	Status   StatusFunc          // /api/v1/status; nil = {}
	Version  string              // reported by /api/v1/status
	Summary  SummaryFunc         // /api/v1/summary; nil leaves it out (404)
	// Policy serves the shaping, suspension and throttle endpoints; nil
	// leaves them out (404).
	Policy Policy
	// Actions serves cancel and flush, and bounce and rebind when it is a
	// BounceRebinder too (actions.go); nil leaves them out (404).
	Actions Actions
	// Reloader serves POST /api/v1/reload (reload.go); nil leaves it out
	// (404).
	Reloader Reloader
	// Quarantine serves the quarantine endpoints (quarantine.go); nil
	// leaves them out (404).
	Quarantine Quarantine
	// Queues serves the queue and message views (queues.go,
	// messages.go); nil leaves them out (404).
	Queues Queues
	// Tokens, when set, are required on every request; nil leaves the API
	// open, which Start allows only on a loopback Listen.
	Tokens *Tokens
	// Pprof serves /debug/pprof/; off, those paths answer 404.
	Pprof bool
	// ReadTimeout bounds reading a request (headers and body);
	// WriteTimeout writing its answer (a profile's or trace's ?seconds=
	// come on top); IdleTimeout a kept-alive connection's wait. Zero
	// means the defaults below.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// Cluster serves GET /api/v1/cluster (cluster.go); nil leaves it out.
	Cluster Cluster
	// Ready is what /readyz checks.
	Ready  Readiness
	Logger *zap.Logger
}

// Timeout defaults, the config's (internal/config Default).
const (
	defaultReadTimeout  = 10 * time.Second
	defaultWriteTimeout = 30 * time.Second
	defaultIdleTimeout  = 2 * time.Minute
	// maxProfileSeconds bounds a profile's or trace's ?seconds=, and so
	// how long one request may hold the connection.
	maxProfileSeconds = 600
)

// Server is the admin HTTP server. Start it once, Shutdown it once.
type Server struct {
	opts   Options
	tokens atomic.Pointer[Tokens] // nil: open (loopback only)
	ln     net.Listener
	srv    *http.Server
	wg     sync.WaitGroup
	start  time.Time
	probes probeCache // /readyz's spool probe, at most one a second
}

// New builds the server; it does not listen yet.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = defaultReadTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = defaultWriteTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	s := &Server{opts: opts, start: time.Now()}
	s.tokens.Store(opts.Tokens)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.get(s.healthz))
	mux.HandleFunc("/readyz", s.get(s.readyz))
	mux.HandleFunc("/api/v1/status", s.get(s.status))
	if opts.Summary != nil {
		mux.HandleFunc("/api/v1/summary", s.get(s.summary))
	}
	if opts.Policy != nil {
		mux.HandleFunc("/api/v1/shaping", methods(route{http.MethodGet, s.shaping}))
		mux.HandleFunc("/api/v1/suspensions", methods(route{http.MethodGet, s.suspensions}, route{http.MethodPost, s.suspend}))
		mux.HandleFunc("/api/v1/suspensions/{id}", methods(route{http.MethodDelete, s.resume}))
		mux.HandleFunc("/api/v1/throttles", methods(route{http.MethodGet, s.throttles}, route{http.MethodDelete, s.unthrottle}))
	}
	if opts.Queues != nil {
		mux.HandleFunc("/api/v1/queues", s.get(s.queues))
		mux.HandleFunc("/api/v1/messages", s.get(s.messages))
		mux.HandleFunc("/api/v1/messages/{id}", s.get(s.message))
		mux.HandleFunc("/api/v1/messages/{id}/body", s.get(s.messageBody))
	}
	if opts.Cluster != nil {
		mux.HandleFunc("/api/v1/cluster", s.get(s.cluster))
	}
	if opts.Actions != nil {
		mux.HandleFunc("/api/v1/cancel", methods(route{http.MethodPost, s.cancel}))
		mux.HandleFunc("/api/v1/flush", methods(route{http.MethodPost, s.flush}))
	}
	if opts.Reloader != nil {
		mux.HandleFunc("/api/v1/reload", methods(route{http.MethodPost, s.reload}))
	}
	if _, ok := opts.Actions.(BounceRebinder); ok {
		mux.HandleFunc("/api/v1/bounce", methods(route{http.MethodPost, s.bounce}))
		mux.HandleFunc("/api/v1/rebind", methods(route{http.MethodPost, s.rebind}))
	}
	if opts.Quarantine != nil {
		mux.HandleFunc("/api/v1/quarantine", methods(route{http.MethodGet, s.quarantineList}))
		mux.HandleFunc("/api/v1/quarantine/{id}", methods(route{http.MethodGet, s.quarantineGet}, route{http.MethodDelete, s.quarantineDelete}))
		mux.HandleFunc("/api/v1/quarantine/{id}/body", methods(route{http.MethodGet, s.quarantineBody}))
		mux.HandleFunc("/api/v1/quarantine/{id}/reinject", methods(route{http.MethodPost, s.quarantineReinject}))
	}
	if opts.Gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	// Go's profiler, for finding where time goes in production; only
	// when asked for, as a profile shows the process's internals (and its
	// command line) to whoever holds a token.
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	page, assets := statusPage()
	mux.HandleFunc("/{$}", s.get(page))
	mux.HandleFunc(uiPrefix+"{name}", s.get(assets))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	// The write timeout is set per request (writeDeadline), not as
	// http.Server.WriteTimeout: a CPU profile or a trace writes only after
	// its ?seconds=, and pprof refuses any duration past the server's
	// WriteTimeout. The header timeout equals the read timeout: an admin
	// request's body is small, so one bound covers both.
	s.srv = &http.Server{
		Handler:           s.logRequests(s.authenticate(s.writeDeadline(mux))),
		ReadHeaderTimeout: opts.ReadTimeout,
		ReadTimeout:       opts.ReadTimeout,
		IdleTimeout:       opts.IdleTimeout,
		ErrorLog:          zap.NewStdLog(opts.Logger.Named("admin-http")),
	}
	return s
}

// SetTokens swaps the tokens in force (a reload of admin.tokens_file);
// requests already authenticated finish. nil opens the API, which is
// refused unless the listen address is loopback.
func (s *Server) SetTokens(t *Tokens) error {
	if t == nil && !config.LoopbackListen(s.opts.Listen) {
		return fmt.Errorf("admin: %q is not a loopback address: its tokens cannot be removed", s.opts.Listen)
	}
	s.tokens.Store(t)
	return nil
}

// writeDeadline sets each request's write deadline: WriteTimeout from now,
// plus a profile's or a trace's ?seconds=. A duration past
// maxProfileSeconds is refused.
func (s *Server) writeDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := s.opts.WriteTimeout
		if s.opts.Pprof && strings.HasPrefix(r.URL.Path, "/debug/pprof/") && r.URL.Query().Has("seconds") {
			sec, err := strconv.ParseFloat(r.URL.Query().Get("seconds"), 64)
			if err != nil || sec < 0 || sec > maxProfileSeconds {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("seconds: %q is not a number of seconds from 0 to %d", r.URL.Query().Get("seconds"), maxProfileSeconds))
				return
			}
			d += time.Duration(sec * float64(time.Second))
		}
		// An error means the connection cannot take deadlines (not a
		// net.Conn the server made); nothing to bound then.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
		next.ServeHTTP(w, r)
	})
}

// statusWriter remembers the status code for the request log.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs every request that may change something (any method
// but GET and HEAD) at info, with who made it, and the reads at debug.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		var who string
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), whoSlot{}, &who)))
		lvl := zap.DebugLevel
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			lvl = zap.InfoLevel
		}
		if ce := s.opts.Logger.Check(lvl, "admin request"); ce != nil {
			ce.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path),
				zap.Int("status", sw.code), zap.String("token", who), zap.String("remote", r.RemoteAddr))
		}
	})
}

// Start listens on Options.Listen and serves in a goroutine that Shutdown
// waits for.
func (s *Server) Start() error {
	if s.opts.Listen == "" {
		return nil
	}
	// Checked before listening, so an open API is never reachable from
	// the network even for a moment.
	if s.tokens.Load() == nil && !config.LoopbackListen(s.opts.Listen) {
		return fmt.Errorf("admin: admin.listen %q is not a loopback address and admin.tokens_file gives no tokens", s.opts.Listen)
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return err
	}
	s.ln = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.opts.Logger.Error("admin server stopped", zap.Error(err))
		}
	}()
	return nil
}

// Addr is the address the server listens on, or nil before Start.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the server and waits for its goroutine.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.ln == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	s.wg.Wait()
	return err
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	var st any = struct{}{}
	if s.opts.Status != nil {
		st = s.opts.Status()
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"version":        s.opts.Version,
		"uptime_seconds": int64(time.Since(s.start).Seconds()),
		"state":          st,
	})
}

// get wraps a handler so that any method but GET/HEAD answers 405 in JSON.
func (s *Server) get(h http.HandlerFunc) http.HandlerFunc {
	return methods(route{http.MethodGet, h})
}

// route is one method of a path and its handler.
type route struct {
	method string
	h      http.HandlerFunc
}

// methods dispatches a path's requests on their method; GET also serves
// HEAD. Any other method answers 405 in JSON with the Allow header. (The
// mux's own method patterns would answer 405 in plain text.)
func methods(routes ...route) http.HandlerFunc {
	var allow []string
	for _, rt := range routes {
		allow = append(allow, rt.method)
		if rt.method == http.MethodGet {
			allow = append(allow, http.MethodHead)
		}
	}
	allowed := strings.Join(allow, ", ")
	return func(w http.ResponseWriter, r *http.Request) {
		m := r.Method
		if m == http.MethodHead {
			m = http.MethodGet
		}
		for _, rt := range routes {
			if rt.method == m {
				rt.h(w, r)
				return
			}
		}
		w.Header().Set("Allow", allowed)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on "+r.URL.Path+" (allowed: "+allowed+")")
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
