package inject

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/bcrypt"
)

// LoadUsers reads the AUTH users file: one "user bcrypt-hash" pair per
// line, separated by blanks; blank lines and lines starting with '#' are
// skipped. Errors name the file and line. A file with no users yields an
// empty map (AUTH not offered).
func LoadUsers(path string) (map[string][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("inject: load users: %w", err)
	}
	return parseUsers(path, data)
}

// parseUsers is LoadUsers without the file system, for the fuzz target.
func parseUsers(name string, data []byte) (map[string][]byte, error) {
	users := make(map[string][]byte)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("inject: load users: %s:%d: want \"user bcrypt-hash\", got %d fields", name, n, len(f))
		}
		user, hash := f[0], []byte(f[1])
		for _, c := range []byte(user) {
			if c < 33 || c > 126 {
				return nil, fmt.Errorf("inject: load users: %s:%d: user name must be printable ASCII", name, n)
			}
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("inject: load users: %s:%d: user %q listed twice", name, n, user)
		}
		if _, err := bcrypt.Cost(hash); err != nil {
			return nil, fmt.Errorf("inject: load users: %s:%d: user %q: not a bcrypt hash: %w", name, n, user, err)
		}
		users[user] = hash
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("inject: load users: %s: %w", name, err)
	}
	return users, nil
}

// HashPassword returns the bcrypt hash of pw at the default cost, in the
// form LoadUsers reads.
func HashPassword(pw string) (string, error) {
	return hashPassword(pw, bcrypt.DefaultCost)
}

func hashPassword(pw string, cost int) (string, error) {
	if pw == "" {
		return "", errors.New("inject: hash password: empty password")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		return "", fmt.Errorf("inject: hash password: %w", err)
	}
	return string(h), nil
}

func compareHash(hash []byte, password string) bool {
	return len(hash) > 0 && bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
}

// authFunc checks credentials; user "" never authenticates, and is what a
// malformed exchange is checked as, so it costs the same delay.
type authFunc func(identity, user, password string) error

// plainServer is SASL PLAIN (RFC 4616) on the server side.
type plainServer struct {
	auth authFunc
	done bool
}

func (p *plainServer) Next(resp []byte) ([]byte, bool, error) {
	if p.done {
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
	if resp == nil { // no initial response: ask for it
		return []byte{}, false, nil
	}
	p.done = true
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 {
		return nil, true, p.auth("", "", "")
	}
	return nil, true, p.auth(string(parts[0]), string(parts[1]), string(parts[2]))
}

// loginServer is the obsolete but still common LOGIN mechanism: the
// server asks "Username:" then "Password:". go-sasl has no server for it.
type loginServer struct {
	auth  authFunc
	step  int
	user  string
	ended bool
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case l.ended:
		return nil, true, sasl.ErrUnexpectedClientResponse
	case l.step == 0 && resp == nil:
		l.step = 1
		return []byte("Username:"), false, nil
	case l.step <= 1: // the user name, as initial response or answer
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	}
	l.ended = true
	return nil, true, l.auth("", l.user, string(resp))
}

// authFailures remembers recent AUTH failures per client IP, to make each
// further failure wait longer. It is bounded: entries expire after a quiet
// failWindow, and when maxFailEntries are tracked the oldest-looking ones
// are dropped (an attacker with that many addresses gains little anyway).
type authFailures struct {
	base time.Duration
	now  func() time.Time

	mu sync.Mutex
	m  map[netip.Addr]failEntry
}

type failEntry struct {
	n    int
	last time.Time
}

const (
	failWindow     = 15 * time.Minute
	maxFailEntries = 10000
	maxFailFactor  = 30 // the delay stops growing at 30 × base
)

func newAuthFailures(base time.Duration, now func() time.Time) *authFailures {
	return &authFailures{base: base, now: now, m: make(map[netip.Addr]failEntry)}
}

// fail records a failure from ip and returns how long to wait before
// answering it: base, 2×base, 4×base, ... up to 30×base.
func (a *authFailures) fail(ip netip.Addr) time.Duration {
	if a.base <= 0 {
		return 0
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[ip]
	if !ok && len(a.m) >= maxFailEntries {
		a.evictLocked(now)
	}
	if now.Sub(e.last) > failWindow {
		e.n = 0
	}
	e.n++
	e.last = now
	a.m[ip] = e
	return failDelay(a.base, e.n)
}

// failDelay is base × 2^(n-1), at most maxFailFactor × base.
func failDelay(base time.Duration, n int) time.Duration {
	f := 1
	for i := 1; i < n && f < maxFailFactor; i++ {
		f *= 2
	}
	return base * time.Duration(min(f, maxFailFactor))
}

// success forgets ip's failures.
func (a *authFailures) success(ip netip.Addr) {
	a.mu.Lock()
	delete(a.m, ip)
	a.mu.Unlock()
}

// evictLocked drops expired entries, and if none were, an arbitrary tenth
// of the map.
func (a *authFailures) evictLocked(now time.Time) {
	for ip, e := range a.m {
		if now.Sub(e.last) > failWindow {
			delete(a.m, ip)
		}
	}
	if len(a.m) < maxFailEntries {
		return
	}
	drop := maxFailEntries / 10
	for ip := range a.m {
		if drop == 0 {
			break
		}
		delete(a.m, ip)
		drop--
	}
}
