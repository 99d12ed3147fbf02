package mx

import (
	"container/list"
	"time"
)

// The bounds put on DNS TTLs before caching. The floor stops a zero-TTL
// record from sending every connection attempt to the DNS; the ceiling lets
// a changed MX take effect within the hour whatever the zone says. Negative
// answers (the domain or its hosts do not exist) are kept only briefly, so
// a domain fixed by its owner is seen soon.
const (
	minTTL         = 5 * time.Second
	maxTTL         = time.Hour
	maxNegativeTTL = time.Minute
)

func clampTTL(ttl uint32, ceiling time.Duration) time.Duration {
	d := time.Duration(ttl) * time.Second
	return min(max(d, minTTL), ceiling)
}

// result is a finished resolution of one domain, as cached: either hosts
// (sorted by preference, not yet shuffled) or err.
type result struct {
	hosts []Host
	err   *Error
	ttl   time.Duration
	cache bool // answered by the DNS, not a transient failure
}

type cacheEntry struct {
	key     string
	res     result
	expires time.Time
}

// lru is a bounded map from domain to result, evicting the least recently
// used entry. Not goroutine-safe: the Resolver's mutex guards it.
type lru struct {
	size  int
	order *list.List // of *cacheEntry, most recently used first
	items map[string]*list.Element
}

func newLRU(size int) *lru {
	return &lru{size: size, order: list.New(), items: make(map[string]*list.Element)}
}

func (c *lru) get(key string, now time.Time) (result, bool) {
	el, ok := c.items[key]
	if !ok {
		return result{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.order.Remove(el)
		delete(c.items, key)
		return result{}, false
	}
	c.order.MoveToFront(el)
	return e.res, true
}

func (c *lru) put(key string, res result, now time.Time) {
	e := &cacheEntry{key: key, res: res, expires: now.Add(res.ttl)}
	if el, ok := c.items[key]; ok {
		el.Value = e
		c.order.MoveToFront(el)
		return
	}
	c.items[key] = c.order.PushFront(e)
	for c.order.Len() > c.size {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

func (c *lru) len() int { return c.order.Len() }
