// Package tokens reads the bearer-token files of mtad's two HTTP listeners
// (admin.tokens_file and inject.http.tokens_file), so that both take one
// format, "name:token" a line, and one set of rules, and answers whether a
// presented token is one of them and under which name.
//
// It keeps only the tokens' SHA-256 sums, so a heap dump or a profile does
// not hand them out, and compares a presented token's sum with every one of
// them in constant time. It must never put a token (or a part of one) into
// an error or a log line, and never accept an empty file: a tokens file
// with no token would lock every client out, which is never what was meant.
package tokens

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// MinLen is the shortest token a tokens file may hold: 32 characters
// from RFC 6750's token alphabet (≥ 64 symbols) are ≥ 192 bits when drawn at
// random, and `openssl rand -hex 16` (128 bits, the least we want) is
// exactly 32. A shorter one is more likely a typed password than a
// generated secret.
const MinLen = 32

// Limits on a tokens file, so that a wrong path (a log file, a device)
// fails fast instead of being read whole.
const (
	maxTokens      = 1000
	maxTokenLine   = 1024
	maxTokenName   = 64
	maxTokensBytes = 1 << 20
)

// Tokens is a loaded tokens file. It is immutable once loaded; a server
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

// Load reads a tokens file (see Parse). Its errors name the file and the
// line, never a token.
func Load(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError names the file
	}
	defer f.Close()
	t, err := Parse(io.LimitReader(f, maxTokensBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse reads one token a line, "name:token" or "token"; blank lines
// and lines starting with '#' are skipped. A token is at least MinLen
// characters of RFC 6750's b64token alphabet (letters, digits, - . _ ~ + /
// and trailing =), which holds no ':', so the first ':' always ends the
// name. A name (letters, digits, . _ @ -, at most 64) is what the logs say
// acted; an unnamed token is called "line N". Errors give the line number
// and never the token. At least one token is required.
func Parse(r io.Reader) (*Tokens, error) {
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
		} else if err := checkName(name); err != nil {
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
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("a line is longer than %d bytes", maxTokenLine)
		}
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("no tokens: add one (\"name:token\", at least %d characters, e.g. from `openssl rand -hex 16`) or leave the tokens_file key empty", MinLen)
	}
	return t, nil
}

func checkName(name string) error {
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

// checkToken enforces RFC 6750's b64token syntax and MinLen.
func checkToken(tok string) error {
	if len(tok) < MinLen {
		return fmt.Errorf("%d characters, fewer than %d", len(tok), MinLen)
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
