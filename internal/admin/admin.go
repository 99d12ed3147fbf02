// Package admin serves mtad's operator HTTP API: health, status, Prometheus
// metrics, and the policy endpoints (resolved shaping, suspensions, rule
// throttles; policy.go). It reads the daemon's state and passes the
// operator's orders through small interfaces the daemon plugs in; it never
// changes queues, the spool or policy state behind their owner's back, and
// never logs a policy change itself (the owner writes the one record).
//
// Every error answer is JSON, {"error": "..."} with a fitting HTTP status
// (a refused input names its parameter or field first: "domain: required"),
// so mtactl and scripts can rely on one shape. A method a path does not
// take gets 405 with an Allow header.
//
//	GET    /healthz
//	GET    /api/v1/status
//	GET    /api/v1/shaping?domain=D[&binding=B]
//	GET    /api/v1/suspensions
//	POST   /api/v1/suspensions          {"scope","name","binding","duration","reason","by"}
//	DELETE /api/v1/suspensions/{id}[?by=&reason=]
//	GET    /api/v1/throttles
//	DELETE /api/v1/throttles?scope=KEY[&by=&reason=]
//	GET    /metrics, /debug/pprof/
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// StatusFunc returns a JSON-encodable snapshot of the daemon's state.
type StatusFunc func() any

// Options configure the admin server.
type Options struct {
	Listen   string              // host:port; "" disables the server
	Gatherer prometheus.Gatherer // metrics to expose on /metrics; nil = none
	Status   StatusFunc          // /api/v1/status; nil = {}
	Version  string              // reported by /api/v1/status
	// Policy serves the shaping, suspension and throttle endpoints; nil
	// leaves them out (404).
	Policy Policy
	Logger *zap.Logger
}

// Server is the admin HTTP server. Start it once, Shutdown it once.
type Server struct {
	opts  Options
	ln    net.Listener
	srv   *http.Server
	wg    sync.WaitGroup
	start time.Time
}

// New builds the server; it does not listen yet.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{opts: opts, start: time.Now()}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.get(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	mux.HandleFunc("/api/v1/status", s.get(s.status))
	if opts.Policy != nil {
		mux.HandleFunc("/api/v1/shaping", methods(route{http.MethodGet, s.shaping}))
		mux.HandleFunc("/api/v1/suspensions", methods(route{http.MethodGet, s.suspensions}, route{http.MethodPost, s.suspend}))
		mux.HandleFunc("/api/v1/suspensions/{id}", methods(route{http.MethodDelete, s.resume}))
		mux.HandleFunc("/api/v1/throttles", methods(route{http.MethodGet, s.throttles}, route{http.MethodDelete, s.unthrottle}))
	}
	if opts.Gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	// Go's profiler, for finding where time goes in production. The admin
	// listener is private (loopback by default), like the rest of this API.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Start listens on Options.Listen and serves in a goroutine that Shutdown
// waits for.
func (s *Server) Start() error {
	if s.opts.Listen == "" {
		return nil
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
