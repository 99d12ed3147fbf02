package admin

// Bearer-token authentication of the admin API (RFC 6750). The tokens come
// from admin.tokens_file; the server keeps only their SHA-256 sums, so a
// heap dump or a profile does not hand them out, and compares a presented
// token's sum with every one of them in constant time.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"go.uber.org/zap"
)

// MinTokenLen is the shortest token a tokens file may hold: 32 characters
// from RFC 6750's token alphabet (≥ 64 symbols) are ≥ 192 bits when drawn at
// random, and `openssl rand -hex 16` (128 bits, the least we want) is
// exactly 32. A shorter one is more likely a typed password than a
// generated secret.
const MinTokenLen = 32

// Limits on a tokens file, so that a wrong path (a log file, a device)
// fails fast instead of being read whole.
const (
	maxTokens      = 1000
	maxTokenLine   = 1024
	maxTokenName   = 64
	maxTokensBytes = 1 << 20
)

// Tokens is a loaded tokens file. It is immutable once loaded; the server
// swaps a new one in on reload.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	name string
	sum  [sha256.Size]byte
}

// Len is the number of tokens; 0 for a nil *Tokens.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// Lookup returns the name of the token equal to token. It compares
// token's SHA-256 with every entry's, always all of them and in constant
// time each, so neither the answer's timing nor a length difference tells
// how close a guess came or which entry matched.
func (t *Tokens) Lookup(token string) (name string, ok bool) {
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return t.entries[found].name, true
}

// LoadTokens reads a tokens file (see ParseTokens).
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("admin tokens: %w", err)
	}
	defer f.Close()
	t, err := ParseTokens(io.LimitReader(f, maxTokensBytes+1))
	if err != nil {
		return nil, fmt.Errorf("admin tokens %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens reads one token a line, "name:token" or "token"; blank lines
// and lines starting with '#' are skipped. A token is at least MinTokenLen
// characters of RFC 6750's b64token alphabet (letters, digits, - . _ ~ + /
// and trailing =), which holds no ':', so the first ':' always ends the
// name. A name (letters, digits, . _ @ -, at most 64) is what the log says
// acted; an unnamed token is called "line N". Errors give the line number
// and never the token. At least one token is required: an empty file
// would lock every client out, which is never what was meant.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	names := map[string]bool{}
	sums := map[[sha256.Size]byte]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxTokenLine)
	read := 0
	for n := 1; sc.Scan(); n++ {
		read += len(sc.Bytes()) + 1
		if read > maxTokensBytes {
			return nil, fmt.Errorf("longer than %d bytes", maxTokensBytes)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, tok, named := strings.Cut(line, ":")
		if !named {
			name, tok = fmt.Sprintf("line %d", n), line
		} else if err := checkTokenName(name); err != nil {
			return nil, fmt.Errorf("line %d: name: %w", n, err)
		}
		if err := checkToken(tok); err != nil {
			return nil, fmt.Errorf("line %d: token: %w", n, err)
		}
		if names[name] {
			return nil, fmt.Errorf("line %d: name %q is used twice", n, name)
		}
		sum := sha256.Sum256([]byte(tok))
		if sums[sum] {
			return nil, fmt.Errorf("line %d: the same token is on an earlier line", n)
		}
		if len(t.entries) == maxTokens {
			return nil, fmt.Errorf("line %d: more than %d tokens", n, maxTokens)
		}
		names[name], sums[sum] = true, true
		t.entries = append(t.entries, tokenEntry{name: name, sum: sum})
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, fmt.Errorf("a line is longer than %d bytes", maxTokenLine)
		}
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("no tokens: add one (\"name:token\", at least %d characters) or leave admin.tokens_file empty", MinTokenLen)
	}
	return t, nil
}

func checkTokenName(name string) error {
	if name == "" || len(name) > maxTokenName {
		return fmt.Errorf("must be 1 to %d characters", maxTokenName)
	}
	for _, c := range []byte(name) {
		if !(isAlnum(c) || strings.IndexByte("._@-", c) >= 0) {
			return fmt.Errorf("%q: only letters, digits and . _ @ - are allowed", name)
		}
	}
	return nil
}

// checkToken enforces RFC 6750's b64token syntax and MinTokenLen.
func checkToken(tok string) error {
	if len(tok) < MinTokenLen {
		return fmt.Errorf("%d characters, fewer than %d", len(tok), MinTokenLen)
	}
	body := strings.TrimRight(tok, "=")
	if body == "" {
		return fmt.Errorf("only '=' characters")
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; !(isAlnum(c) || strings.IndexByte("-._~+/", c) >= 0) {
			return fmt.Errorf("character %d is not one of letters, digits, - . _ ~ + / (or a trailing =)", i+1)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

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
