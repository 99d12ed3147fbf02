package inject

import (
	"crypto/tls"
	"errors"
	"fmt"

	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/tokens"
)

// What a reload (SIGHUP) may change while sessions run: the AUTH users, the
// TLS certificate and the HTTP bearer tokens. Each lives behind an atomic
// pointer to a value that is never modified once stored, so a session reads
// it without a lock and a swap never tears. A session reads the current
// value when it uses it (EHLO's offer, the AUTH check, the TLS handshake):
// a revoked user cannot authenticate again, even on a connection opened
// before the reload, while what a session already did stands (it stays
// authenticated, its handshake keeps the old certificate).

// authState is the AUTH users with the dummy hash that unknown users are
// checked against.
type authState struct {
	users map[string][]byte
	// dummyHash has the cost of the users' hashes, so that "no such user"
	// and "wrong password" cost the same time.
	dummyHash []byte
}

// newAuthState checks the hashes and builds the dummy one; prevDummy is
// reused when its cost already matches, since hashing costs tens of ms.
func newAuthState(users map[string][]byte, prevDummy []byte) (*authState, error) {
	if len(users) == 0 {
		return &authState{}, nil
	}
	cost := -1
	for u, h := range users {
		c, err := bcrypt.Cost(h)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", u, err)
		}
		cost = max(cost, c)
	}
	if c, err := bcrypt.Cost(prevDummy); err == nil && c == cost {
		return &authState{users: users, dummyHash: prevDummy}, nil
	}
	h, err := bcrypt.GenerateFromPassword([]byte("mtad dummy password"), cost)
	if err != nil {
		return nil, fmt.Errorf("dummy hash: %w", err)
	}
	return &authState{users: users, dummyHash: h}, nil
}

// auth is the current AUTH state; never nil once New has returned, but a
// Server built as a literal (the HTTP server's core) has none.
func (s *Server) authState() *authState {
	if a := s.auth.Load(); a != nil {
		return a
	}
	return &authState{}
}

// tlsConfig is the current TLS configuration; nil means no TLS.
func (s *Server) tlsConfig() *tls.Config { return s.tlsConf.Load() }

// SetAuthUsers replaces the AUTH users (see LoadUsers) for every AUTH from
// now on; sessions already authenticated stay so. Empty means AUTH is no
// longer offered. users must not be modified afterwards. A hash that is not
// bcrypt is refused and the old users stay. Safe for concurrent use.
func (s *Server) SetAuthUsers(users map[string][]byte) error {
	old := s.authState()
	a, err := newAuthState(users, old.dummyHash)
	if err != nil {
		return fmt.Errorf("inject: set auth users: %w", err)
	}
	s.auth.Store(a)
	return nil
}

// SetTLSConfig replaces the TLS configuration (the certificate, typically)
// for every handshake from now on; sessions already under TLS keep theirs.
// nil stops offering STARTTLS, and is refused when the Server has
// TLSListen addresses, which cannot work without it. c must not be modified
// afterwards. Safe for concurrent use.
func (s *Server) SetTLSConfig(c *tls.Config) error {
	if c == nil && len(s.opts.TLSListen) > 0 {
		return errors.New("inject: set tls config: tls listen addresses without a TLS certificate")
	}
	s.tlsConf.Store(atLeastTLS12(c))
	return nil
}

// SetTokens replaces the accepted bearer tokens (see LoadTokens) for every
// request from now on. No tokens is refused when a listen address is not
// loopback, as NewHTTP refuses it; the old tokens then stay. Safe for
// concurrent use.
func (h *HTTPServer) SetTokens(toks *tokens.Tokens) error {
	if toks.Len() == 0 {
		for _, a := range h.opts.Listen {
			if !loopbackListen(a) {
				return fmt.Errorf("inject http: set tokens: listen %s is not a loopback address: refusing to serve unauthenticated injection", a)
			}
		}
	}
	if toks.Len() == 0 {
		toks = nil
	}
	h.tokens.Store(toks)
	return nil
}
