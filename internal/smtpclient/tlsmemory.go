package smtpclient

import (
	"strings"
	"sync"
	"time"
)

// TLSMemory remembers hosts whose TLS handshake failed, for a while, so
// that the next connection to them skips STARTTLS instead of failing the
// same way and redialing. It is safe for concurrent use and holds at most
// max hosts.
type TLSMemory struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	until map[string]time.Time // host → end of the clear-text period
}

// NewTLSMemory returns a TLSMemory that skips TLS to a failed host for ttl
// and remembers at most max hosts (at least 1). now is the clock; nil means
// time.Now.
func NewTLSMemory(ttl time.Duration, max int, now func() time.Time) *TLSMemory {
	if now == nil {
		now = time.Now
	}
	if max < 1 {
		max = 1
	}
	return &TLSMemory{ttl: ttl, max: max, now: now, until: make(map[string]time.Time)}
}

// Failed records a failed TLS handshake with host (an MX name; case and a
// trailing dot are ignored). When the memory is full, expired hosts go
// first, then the one closest to expiry: forgetting a host costs only one
// more failed handshake.
func (m *TLSMemory) Failed(host string) {
	key := hostKey(host)
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.until[key]; !ok && len(m.until) >= m.max {
		m.evict(now)
	}
	m.until[key] = now.Add(m.ttl)
}

// Skip reports whether connections to host should not try STARTTLS.
func (m *TLSMemory) Skip(host string) bool {
	key := hostKey(host)
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	until, ok := m.until[key]
	if !ok {
		return false
	}
	if !now.Before(until) {
		delete(m.until, key)
		return false
	}
	return true
}

// Len returns the number of hosts remembered, expired or not.
func (m *TLSMemory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.until)
}

// evict makes room for one host. It walks the whole map, which is fine:
// it runs only on a TLS failure while the memory is full.
func (m *TLSMemory) evict(now time.Time) {
	var (
		oldest    string
		oldestEnd time.Time
		first     = true
	)
	for k, until := range m.until {
		if !now.Before(until) {
			delete(m.until, k)
			continue
		}
		if first || until.Before(oldestEnd) {
			oldest, oldestEnd, first = k, until, false
		}
	}
	if len(m.until) >= m.max && !first {
		delete(m.until, oldest)
	}
}

func hostKey(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
