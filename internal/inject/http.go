package inject

// The HTTP injection API: POST /api/v1/messages with a JSON body, for
// applications that would rather not speak SMTP. A request becomes one
// stored message per distinct rendered content (one for all recipients
// without substitutions, one per recipient with them), each going through
// the same content rules as an SMTP message (line ends, NUL, long lines,
// header parsing, binding fields, Received count), the same DKIM signing,
// the same spool write and the same "received" record. 202 is answered
// only after every message of the request is on stable storage.
//
// It must never answer 2xx for a message not yet synced, never accept a
// header value (subject, name, address, extra header) holding CR or LF,
// never listen beyond loopback without bearer tokens, and never answer a
// local storage failure with a 4xx (that is 503, to retry) nor bad input
// with a 5xx.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/dkim"
	"github.com/mtad/mtad/internal/tokens"
)

// HTTPPath is where messages are posted.
const HTTPPath = "/api/v1/messages"

// HTTPOptions configures an HTTPServer.
type HTTPOptions struct {
	// Listen are the host:port addresses to serve on; at least one.
	Listen []string
	// Tokens are the accepted bearer tokens (inject.http.tokens_file, read
	// by tokens.Load: the admin API's format). nil means no
	// authentication, allowed only when every Listen address is on
	// loopback. A token's name is the auth_user of the messages it injects.
	Tokens *tokens.Tokens
	// Hostname is our name in Received fields and Message-IDs; required.
	Hostname string
	// MaxMessageSize bounds each message as built (before the Received
	// field); required (> 0).
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one request; 0 = 10000.
	MaxRecipients int
	// MaxReceivedHeaders, LongLines and AllowAddressLiterals are as in
	// Options (the daemon passes inject.smtp's keys), so both APIs take
	// the same mail.
	MaxReceivedHeaders   int
	LongLines            LongLines
	AllowAddressLiterals bool
	// ReadTimeout bounds reading a whole request, WriteTimeout the handler
	// and its answer (spool writes included), IdleTimeout a kept-alive
	// connection between requests. 0 = 1 min, 2 min, 2 min.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// Logger receives the "received" records and errors; nil discards.
	Logger *zap.Logger
	// DKIM signs as in Options; nil signs nothing.
	DKIM *dkim.Signer
	// Watermark is as in Options: while it is over, requests get 503.
	Watermark *Watermark
}

// DefaultHTTPMaxRecipients is the recipients bound of a request when
// HTTPOptions.MaxRecipients is 0.
const DefaultHTTPMaxRecipients = 10000

// HTTPServer serves the HTTP injection API. Create it with NewHTTP, then
// Start; stop it with Shutdown. Not restartable.
type HTTPServer struct {
	opts    HTTPOptions
	tokens  atomic.Pointer[tokens.Tokens] // swapped by SetTokens; nil = none
	core    *Server                       // the content rules and store path shared with SMTP; never started
	handoff Handoff
	busy    busyHandoff
	log     *zap.Logger
	srv     *http.Server

	mu        sync.Mutex
	started   bool
	stopped   bool
	listeners []net.Listener
	wg        sync.WaitGroup // one Serve per listener
}

// NewHTTP checks opts and builds an HTTPServer; nothing is bound until
// Start. bindings and handoff may be nil.
func NewHTTP(opts HTTPOptions, store Store, bindings Bindings, handoff Handoff) (*HTTPServer, error) {
	if store == nil {
		return nil, errors.New("inject http: nil store")
	}
	if len(opts.Listen) == 0 {
		return nil, errors.New("inject http: no listen address")
	}
	if strings.TrimSpace(opts.Hostname) == "" {
		return nil, errors.New("inject http: empty hostname")
	}
	if opts.MaxMessageSize <= 0 {
		return nil, fmt.Errorf("inject http: max message size must be > 0, got %d", opts.MaxMessageSize)
	}
	if opts.MaxRecipients < 0 || opts.MaxReceivedHeaders < 0 {
		return nil, errors.New("inject http: negative limit")
	}
	if opts.Tokens.Len() == 0 {
		for _, a := range opts.Listen {
			if !loopbackListen(a) {
				return nil, fmt.Errorf("inject http: listen %s is not a loopback address and no tokens are configured: refusing to serve unauthenticated injection", a)
			}
		}
	}
	if opts.MaxRecipients == 0 {
		opts.MaxRecipients = DefaultHTTPMaxRecipients
	}
	if opts.MaxReceivedHeaders == 0 {
		opts.MaxReceivedHeaders = 50
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	opts.ReadTimeout = cmp0(opts.ReadTimeout, time.Minute)
	opts.WriteTimeout = cmp0(opts.WriteTimeout, 2*time.Minute)
	opts.IdleTimeout = cmp0(opts.IdleTimeout, 2*time.Minute)
	h := &HTTPServer{
		opts:    opts,
		handoff: handoff,
		log:     opts.Logger,
		core: &Server{
			opts: Options{
				Hostname:           opts.Hostname,
				MaxMessageSize:     opts.MaxMessageSize,
				MaxReceivedHeaders: opts.MaxReceivedHeaders,
				LongLines:          opts.LongLines,
				Logger:             opts.Logger,
				DKIM:               opts.DKIM,
			},
			store:     store,
			bindings:  bindings,
			log:       opts.Logger,
			traceHost: traceToken(strings.TrimSpace(opts.Hostname)),
		},
	}
	if opts.Tokens.Len() > 0 {
		h.tokens.Store(opts.Tokens)
	}
	h.busy, _ = handoff.(busyHandoff)
	h.core.space, _ = store.(lowSpaceStore)
	mux := http.NewServeMux()
	mux.HandleFunc(HTTPPath, h.serveMessages)
	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: opts.ReadTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(opts.Logger),
	}
	return h, nil
}

func cmp0(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// loopbackListen says whether a host:port binds only loopback: an IP in
// 127.0.0.0/8 or ::1, or "localhost". An empty host binds every address.
func loopbackListen(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// LoadTokens reads inject.http.tokens_file: "name:token" a line, the
// format of admin.tokens_file (see tokens.Parse).
func LoadTokens(path string) (*tokens.Tokens, error) {
	t, err := tokens.Load(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	return t, nil
}

// Start binds every Listen address and serves each in a goroutine the
// HTTPServer owns. If one cannot be bound, those bound are closed and the
// error names the address.
func (h *HTTPServer) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started || h.stopped {
		return errors.New("inject http: start: already started or shut down")
	}
	var lc net.ListenConfig
	for _, a := range h.opts.Listen {
		l, err := lc.Listen(context.Background(), "tcp", a)
		if err != nil {
			for _, l := range h.listeners {
				l.Close()
			}
			h.listeners = nil
			return fmt.Errorf("inject http: listen on %s: %w", a, err)
		}
		h.listeners = append(h.listeners, l)
	}
	h.started = true
	for _, l := range h.listeners {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			if err := h.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.log.Error("inject http: serve", zap.Stringer("addr", l.Addr()), zap.Error(err))
			}
		}()
	}
	return nil
}

// Addrs returns the bound addresses; nil before Start.
func (h *HTTPServer) Addrs() []net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	var as []net.Addr
	for _, l := range h.listeners {
		as = append(as, l.Addr())
	}
	return as
}

// Shutdown stops accepting and waits for the requests being handled (each
// finishes its spool writes and answers) until ctx ends; then the
// remaining connections are closed. It returns when every goroutine of
// the server has ended.
func (h *HTTPServer) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return errors.New("inject http: shutdown: already shut down")
	}
	h.stopped = true
	started := h.started
	h.mu.Unlock()
	if !started {
		return nil
	}
	err := h.srv.Shutdown(ctx)
	if err != nil {
		h.srv.Close()
	}
	h.wg.Wait()
	if err != nil {
		return fmt.Errorf("inject http: shutdown: %w", err)
	}
	return nil
}

// authorized checks the bearer token against every configured one in
// constant time (tokens.Lookup), and says under which name: "" when no
// tokens are required.
func (h *HTTPServer) authorized(r *http.Request) (name string, ok bool) {
	toks := h.tokens.Load()
	if toks == nil {
		return "", true
	}
	a := r.Header.Get("Authorization")
	const pfx = "Bearer "
	if len(a) <= len(pfx) || !strings.EqualFold(a[:len(pfx)], pfx) {
		return "", false
	}
	return toks.Lookup(strings.TrimSpace(a[len(pfx):]))
}

// httpError is an answer other than 202.
type httpError struct {
	status int
	field  string // the request field at fault; "" when none is
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badField(field, format string, a ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, field: field, msg: fmt.Sprintf(format, a...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *HTTPServer) fail(w http.ResponseWriter, e *httpError) {
	body := map[string]any{"error": e.msg}
	if e.field != "" {
		body["field"] = e.field
	}
	switch e.status {
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "30")
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="mtad"`)
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", http.MethodPost)
	}
	writeJSON(w, e.status, body)
}

// HTTPResult is the 202 answer.
type HTTPResult struct {
	Accepted int           `json:"accepted"`
	Refused  []HTTPRefusal `json:"refused"`
	IDs      []string      `json:"ids"`
}

// HTTPRefusal names a recipient not accepted and why (an SMTP-style code,
// enhanced code and text).
type HTTPRefusal struct {
	Recipient string `json:"recipient"`
	Reason    string `json:"reason"`
}

func (h *HTTPServer) serveMessages(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		h.fail(w, &httpError{status: http.StatusMethodNotAllowed, msg: "use POST"})
		return
	}
	who, ok := h.authorized(r)
	if !ok {
		h.fail(w, &httpError{status: http.StatusUnauthorized, msg: "missing or bad bearer token"})
		return
	}
	if !jsonContentType(r.Header.Get("Content-Type")) {
		h.fail(w, &httpError{status: http.StatusUnsupportedMediaType, field: "Content-Type",
			msg: fmt.Sprintf("content type %q: want application/json", r.Header.Get("Content-Type"))})
		return
	}
	if h.busy != nil && h.busy.Busy() {
		h.fail(w, &httpError{status: http.StatusServiceUnavailable, msg: "intake busy: the queue is not keeping up; retry later"})
		return
	}
	if h.opts.Watermark.Over() {
		h.fail(w, &httpError{status: http.StatusServiceUnavailable, msg: "queue above its high watermark; retry later"})
		return
	}
	if lowSpace(h.core.space) {
		h.fail(w, &httpError{status: http.StatusServiceUnavailable, msg: "spool full; retry later"})
		return
	}
	req, e := h.decode(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	plan, e := h.plan(req)
	if e != nil {
		h.fail(w, e)
		return
	}
	res, e := h.storeAll(r, who, req, plan)
	if e != nil {
		h.fail(w, e)
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}
