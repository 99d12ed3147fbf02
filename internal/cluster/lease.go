package cluster

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A lease is one connection counted under a shared cap: a member of a
// ZSET per key, scored by its expiry in Redis's own clock (TIME), so the
// nodes' clocks do not matter. Acquire drops the expired members, counts
// the rest and adds one only under the cap, in one script (atomic in
// Redis). The node's renewer pushes the expiry of every lease it holds
// each LeaseTTL/3; a node that dies stops renewing and its leases expire
// within LeaseTTL.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
`)

// renewScript pushes a held lease's expiry, adding it back if Redis lost
// it (a restart without persistence): the connection is still open, so it
// still counts, even if that puts the key over its cap for a while (new
// leases are then refused until it is under again).
var renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
`)

// Lease is one connection counted under a shared cap until Release.
type Lease struct {
	c      *Cluster
	key    string
	member string
	once   sync.Once
}

// leaseSet is the leases this node holds, renewed together.
type leaseSet struct {
	mu     sync.Mutex
	held   map[*Lease]struct{}
	local  map[string]int // fallback counts per key
	seq    uint64
	sendMu sync.Mutex // orders a renewal before a Release's ZREM
	// orphans are members that may be in Redis though no connection holds
	// them: an acquire whose reply was lost (timeout) and that fallback
	// then refused, a lease released while Redis did not answer. The next
	// heartbeat that answers removes them (bounded by maxOrphans; past it
	// they expire within LeaseTTL).
	orphans []orphan

	// waits is what this node last read of each key's waiting nodes
	// (OthersWaiting), under mu.
	waits map[string]*waitSeen
}

// waitSeen is one key's waiting marker as last read.
type waitSeen struct {
	at      time.Time
	others  bool // a node other than this one waited
	reading bool // a caller is reading it again
}

type orphan struct{ key, member string }

const maxOrphans = 10000

// orphaned notes members whose acquire may have run in Redis (mu held).
func (s *leaseSet) orphaned(ls ...*Lease) {
	for _, l := range ls {
		if len(s.orphans) < maxOrphans {
			s.orphans = append(s.orphans, orphan{l.key, l.member})
		}
	}
}

// dropOrphans removes the orphans from Redis in one pipeline (beat).
func (c *Cluster) dropOrphans() bool {
	s := &c.leases
	s.mu.Lock()
	os := s.orphans
	s.orphans = nil
	s.mu.Unlock()
	if len(os) == 0 {
		return true
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	pipe := c.rdb.Pipeline()
	for _, o := range os {
		pipe.ZRem(ctx, o.key, o.member)
	}
	c.calls.Add(int64(len(os)))
	if _, err := pipe.Exec(ctx); c.failed("orphan leases", err) {
		s.mu.Lock()
		s.orphans = append(s.orphans, os[:min(len(os), maxOrphans-min(len(s.orphans), maxOrphans))]...)
		s.mu.Unlock()
		return false
	}
	return true
}

func (s *leaseSet) init() {
	s.held = map[*Lease]struct{}{}
	s.local = map[string]int{}
	s.waits = map[string]*waitSeen{}
}

// Acquire takes a lease under key's shared cap (connections across all
// nodes). ok false: the cap is reached, and this node is marked waiting
// under key (a second round trip, only on refusal; OthersWaiting). In fallback the count is local,
// at the node's FallbackCap (which may be 0); a
// lease taken in fallback is added to Redis by the next renewal once Redis
// answers, so it counts there too. err is only for a closed Cluster.
func (c *Cluster) Acquire(key string, cap int) (*Lease, bool, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, false, err
	}
	s := &c.leases
	s.mu.Lock()
	s.seq++
	l := &Lease{c: c, key: c.key("conn", key), member: c.cfg.Node + ":" + strconv.FormatUint(s.seq, 10)}
	s.mu.Unlock()
	asked := false
	if !c.local() {
		asked = true
		ctx, cancel := c.callCtx()
		n, err := acquireScript.Run(ctx, c.rdb, []string{l.key}, cap, l.member, c.cfg.LeaseTTL.Milliseconds()).Int()
		cancel()
		c.calls.Add(1)
		if !c.failed("lease "+key, err) {
			if n == 0 {
				ctx, cancel := c.callCtx()
				defer cancel()
				c.calls.Add(1)
				c.failed("lease wait "+key, c.waitOn(ctx, c.rdb, key).Err())
				return nil, false, nil
			}
			s.mu.Lock()
			s.held[l] = struct{}{}
			s.local[l.key]++
			s.mu.Unlock()
			return l, true, nil
		}
	}
	limit := c.FallbackCap(cap)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.local[l.key] >= limit {
		if asked {
			s.orphaned(l)
		}
		return nil, false, nil
	}
	s.held[l] = struct{}{}
	s.local[l.key]++
	return l, true, nil
}

// AcquireAll takes a lease under each of keys[i]'s cap caps[i], all or
// none, for one connection: the scripts go in one pipeline (one round
// trip; a refusal costs a second, to give back the others and mark this
// node waiting under the keys that refused). In fallback
// it counts locally as Acquire does. err is only for a closed Cluster.
func (c *Cluster) AcquireAll(keys []string, caps []int) ([]*Lease, bool, error) {
	if len(keys) != len(caps) {
		panic("cluster: AcquireAll: keys and caps differ in length")
	}
	if err := c.ctx.Err(); err != nil {
		return nil, false, err
	}
	s := &c.leases
	ls := make([]*Lease, len(keys))
	s.mu.Lock()
	for i, k := range keys {
		s.seq++
		ls[i] = &Lease{c: c, key: c.key("conn", k), member: c.cfg.Node + ":" + strconv.FormatUint(s.seq, 10)}
	}
	s.mu.Unlock()
	asked := false
	if !c.local() {
		asked = true
		ctx, cancel := c.callCtx()
		defer cancel()
		pipe := c.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(ls))
		for i, l := range ls {
			// EVAL, not EVALSHA: a pipeline cannot load a script a
			// restarted Redis forgot.
			cmds[i] = acquireScript.Eval(ctx, pipe, []string{l.key}, caps[i], l.member, c.cfg.LeaseTTL.Milliseconds())
		}
		c.calls.Add(int64(len(ls)))
		_, err := pipe.Exec(ctx)
		if !c.failed("leases", err) {
			all := true
			for _, cmd := range cmds {
				if n, _ := cmd.Int(); n != 1 {
					all = false
				}
			}
			if !all {
				// One round trip gives back the leases taken and marks
				// this node waiting under the keys that refused.
				rel := c.rdb.Pipeline()
				for i, l := range ls {
					if n, _ := cmds[i].Int(); n == 1 {
						rel.ZRem(ctx, l.key, l.member)
					} else {
						c.waitOn(ctx, rel, keys[i])
					}
				}
				if rel.Len() > 0 {
					c.calls.Add(int64(rel.Len()))
					_, err := rel.Exec(ctx)
					c.failed("lease release", err) // else they expire, and nobody waits
				}
				return nil, false, nil
			}
			s.mu.Lock()
			for _, l := range ls {
				s.held[l] = struct{}{}
				s.local[l.key]++
			}
			s.mu.Unlock()
			return ls, true, nil
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, l := range ls {
		if s.local[l.key] >= c.FallbackCap(caps[i]) {
			if asked {
				s.orphaned(ls...)
			}
			return nil, false, nil
		}
	}
	for _, l := range ls {
		s.held[l] = struct{}{}
		s.local[l.key]++
	}
	return ls, true, nil
}

// Release gives the lease back; later calls do nothing. It waits for a
// renewal in flight, so that renewal cannot add the lease back after it.
func (l *Lease) Release() {
	l.once.Do(func() {
		c, s := l.c, &l.c.leases
		s.mu.Lock()
		delete(s.held, l)
		if s.local[l.key]--; s.local[l.key] <= 0 {
			delete(s.local, l.key)
		}
		if c.down.Load() {
			s.orphaned(l) // removed when Redis answers, else it expires
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.sendMu.Lock()
		defer s.sendMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
		defer cancel()
		c.calls.Add(1)
		c.failed("lease release", c.rdb.ZRem(ctx, l.key, l.member).Err())
	})
}

// Held is the number of leases this node holds under key.
func (c *Cluster) Held(key string) int {
	c.leases.mu.Lock()
	defer c.leases.mu.Unlock()
	return c.leases.local[c.key("conn", key)]
}

// countScript counts a key's live leases by Redis's clock, in one round
// trip.
var countScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`)

// Count is the live leases under key across the cluster.
func (c *Cluster) Count(ctx context.Context, key string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	c.calls.Add(1)
	return countScript.Run(ctx, c.rdb, []string{c.key("conn", key)}).Int()
}

// Snapshot is the live leases under key across the cluster (total) and
// how many of them this node held when it asked (mine), for deciding how
// many of its connections to end when a cap is lowered. In fallback it
// does not ask Redis and err says so.
func (c *Cluster) Snapshot(key string) (total, mine int, err error) {
	if c.local() {
		return 0, 0, errors.New("cluster: redis unreachable")
	}
	mine = c.Held(key)
	total, err = c.Count(c.ctx, key)
	if c.failed("lease count "+key, err) {
		return 0, 0, err
	}
	return total, mine, nil
}

// renewer pushes the expiry of every held lease each LeaseTTL/3, one
// script call per key in one pipeline (EVAL, not EVALSHA: a restarted
// Redis has forgotten the script, and a pipeline cannot retry).
func (c *Cluster) renewer() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			if !c.down.Load() {
				c.renew()
			}
		}
	}
}

// renew pushes the expiry of every held lease (re-adding those Redis
// lost); it reports whether Redis answered.
func (c *Cluster) renew() bool {
	s := &c.leases
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	byKey := map[string][]any{}
	s.mu.Lock()
	for l := range s.held {
		byKey[l.key] = append(byKey[l.key], l.member)
	}
	s.mu.Unlock()
	if len(byKey) == 0 {
		return true
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	pipe := c.rdb.Pipeline()
	for k, ms := range byKey {
		renewScript.Eval(ctx, pipe, []string{k}, append([]any{c.cfg.LeaseTTL.Milliseconds()}, ms...)...)
	}
	c.calls.Add(int64(len(byKey)))
	_, err := pipe.Exec(ctx)
	return !c.failed("lease renewal", err)
}

// releaseAll gives back every lease held (Close): one ZREM per key, all
// in pipe, so that a hung Redis costs Close one timeout, not one per
// lease.
func (s *leaseSet) releaseAll(ctx context.Context, pipe redis.Pipeliner) int {
	s.mu.Lock()
	ls := make([]*Lease, 0, len(s.held))
	for l := range s.held {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	byKey := map[string][]any{}
	for _, l := range ls {
		l.once.Do(func() {
			s.mu.Lock()
			delete(s.held, l)
			if s.local[l.key]--; s.local[l.key] <= 0 {
				delete(s.local, l.key)
			}
			s.mu.Unlock()
			byKey[l.key] = append(byKey[l.key], l.member)
		})
	}
	for k, ms := range byKey {
		pipe.ZRem(ctx, k, ms...)
	}
	return len(byKey)
}

// Fairness between nodes (finding of issue 13): a node refused a lease
// under a key marks itself waiting there, a member of a ZSET
// <prefix>wait:<key> scored by its expiry in Redis's clock (WaitTTL,
// pushed on each refusal: a node that stops asking stops waiting). A node
// holding more than its fair share of the key (FairShare) that sees
// another node waiting (OthersWaiting) ends a session after its current
// message and takes no more leases there; without the marker a node with
// a long queue kept every lease of a shared cap until its queue was empty
// (another node with 78 queued waited some 20 s). One key per marker, not
// a field of the lease ZSET's script, so that Redis Cluster may put the
// two in different slots.
var waitScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
`)

// othersScript counts the nodes other than ARGV[1] waiting under a key.
var othersScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if m ~= ARGV[1] then n = n + 1 end
end
return n
`)

// WaitTTL is how long a refusal marks its node waiting under a key.
const WaitTTL = 2 * time.Second

// waitEvery is how old this node's reading of a key's waiters may be: at
// most one round trip per key a second per node.
const waitEvery = time.Second

// waitOn marks this node waiting under key (EVAL: it may go in a
// pipeline).
func (c *Cluster) waitOn(ctx context.Context, r redis.Scripter, key string) *redis.Cmd {
	return waitScript.Eval(ctx, r, []string{c.key("wait", key)}, c.cfg.Node, WaitTTL.Milliseconds())
}

// OthersWaiting reports whether another node was refused a lease under
// key within WaitTTL, as read at most waitEvery ago (one caller reads it
// again, the others use the last reading). In fallback, or when Redis does
// not answer, nobody is seen waiting: the caps are split then.
func (c *Cluster) OthersWaiting(key string) bool {
	if c.local() {
		return false
	}
	now := time.Now() // Redis's markers are in real time
	s := &c.leases
	s.mu.Lock()
	w := s.waits[key]
	if w == nil {
		w = &waitSeen{}
		s.waits[key] = w
	}
	if w.reading || (!w.at.IsZero() && now.Sub(w.at) < waitEvery) {
		v := w.others
		s.mu.Unlock()
		return v
	}
	w.reading = true
	s.mu.Unlock()
	ctx, cancel := c.callCtx()
	n, err := othersScript.Run(ctx, c.rdb, []string{c.key("wait", key)}, c.cfg.Node).Int()
	cancel()
	c.calls.Add(1)
	failed := c.failed("lease waiters "+key, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	w.reading = false
	if failed {
		return false
	}
	w.at, w.others = now, n > 0
	if len(s.waits) > 10000 {
		// Bounded: keys long unread are read again if needed.
		for k, o := range s.waits {
			if now.Sub(o.at) > time.Minute && !o.reading {
				delete(s.waits, k)
			}
		}
	}
	return w.others
}

// FairShare is this node's fair part of a shared cap: the cap divided by
// the nodes last seen, rounded up (so the parts cover the cap; a node
// never gives up a lease it holds at or below it).
func (c *Cluster) FairShare(cap int) int {
	n := int(max(c.members.Load(), 1))
	return (cap + n - 1) / n
}
