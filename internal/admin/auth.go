package admin

// Bearer-token authentication of the admin API (RFC 6750). The tokens come
// from admin.tokens_file, read by package tokens, which keeps only their
// SHA-256 sums and compares a presented token with all of them in constant
// time.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/tokens"
)

// MinTokenLen is the shortest token a tokens file may hold (tokens.MinLen).
const MinTokenLen = tokens.MinLen

// Tokens is a loaded tokens file; the format and its rules are package
// tokens', shared with inject.http.tokens_file.
type Tokens = tokens.Tokens

// LoadTokens reads a tokens file (see tokens.Parse).
func LoadTokens(path string) (*Tokens, error) {
	t, err := tokens.Load(path)
	if err != nil {
		return nil, fmt.Errorf("admin tokens: %w", err)
	}
	return t, nil
}

// ParseTokens is tokens.Parse: "name:token" a line, each token at least
// MinTokenLen characters of RFC 6750's b64token alphabet.
func ParseTokens(r io.Reader) (*Tokens, error) { return tokens.Parse(r) }

// whoSlot keys the *string in a request's context where authenticate
// writes the token's name, for the handlers and the request log
// (logRequests puts it there, outside authenticate).
type whoSlot struct{}

// Who is the name of the token that authenticated r, "" when the server
// has no tokens (a loopback listener left open).
func Who(r *http.Request) string {
	if p, ok := r.Context().Value(whoSlot{}).(*string); ok {
		return *p
	}
	return ""
}

// authenticate lets a request through when the server has no tokens (Start
// allows that only on loopback) or when it carries one of them as
// "Authorization: Bearer TOKEN"; otherwise it answers 401 with the
// challenge RFC 6750 asks for.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		toks := s.tokens.Load()
		if toks == nil || r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || isStatusPage(r.URL.Path) {
			// The probes stay open: a load balancer or systemd's
			// health check cannot send a token, and they say no more
			// than up or not and why. So does the status page's shell
			// (status.go): a browser navigating to / cannot send one
			// either, and the page and its assets are the same embedded
			// files for everyone, with no data; its script asks for the
			// token and sends it on every API call.
			next.ServeHTTP(w, r)
			return
		}
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		tok = strings.TrimSpace(tok)
		if !strings.EqualFold(scheme, "Bearer") || tok == "" {
			s.unauthorized(w, r, `Bearer realm="mtad admin"`, "authorization: a bearer token is required (Authorization: Bearer TOKEN; mtactl --token or MTAD_ADMIN_TOKEN)")
			return
		}
		name, ok := toks.Lookup(tok)
		if !ok {
			s.unauthorized(w, r, `Bearer realm="mtad admin", error="invalid_token"`, "authorization: the bearer token is not one of admin.tokens_file's")
			return
		}
		p, ok := r.Context().Value(whoSlot{}).(*string)
		if !ok {
			p = new(string)
			r = r.WithContext(context.WithValue(r.Context(), whoSlot{}, p))
		}
		*p = name
		next.ServeHTTP(w, r)
	})
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, challenge, msg string) {
	// Logged without the token; one line per refused request, which the
	// read timeout and the client's own pace bound.
	s.opts.Logger.Warn("admin request refused: not authenticated", zap.String("remote", r.RemoteAddr),
		zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("why", msg))
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, msg)
}
