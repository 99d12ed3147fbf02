package cluster

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// Rate is a budget of N events per Per (policy.Rate's shape; this package
// may not import policy). The zero Rate is unlimited.
type Rate struct {
	N   float64
	Per time.Duration
}

func (r Rate) unlimited() bool    { return r.N <= 0 || r.Per <= 0 }
func (r Rate) perSecond() float64 { return r.N / r.Per.Seconds() }

// burst is policy.Rate.Burst's rule: one second's worth, at least 1.
func burst(perSecond float64) int {
	return int(min(max(math.Ceil(perSecond), 1), math.MaxInt32))
}

// limit is r for redis_rate: one event per emission interval (Per/N), so
// fractional rates ("2.5/s") are exact.
func (r Rate) limit() redis_rate.Limit {
	return redis_rate.Limit{Rate: 1, Period: time.Duration(float64(r.Per) / r.N), Burst: burst(r.perSecond())}
}

// batchWindow is how much of a budget a node takes at once: the tokens
// the rate grants in 100 ms (at least one, at most the burst). A message
// then costs a Redis round trip only once per batch, and a slow budget
// ("10/m") is taken one token at a time, so one node cannot hoard it.
const batchWindow = 100 * time.Millisecond

// batchLife is how long taken tokens may wait to be spent; later they are
// dropped, which only lowers the rate: spent long after they were granted
// they would add to a later burst.
const batchLife = time.Second

func batchSize(r Rate) int {
	return min(max(int(r.perSecond()*batchWindow.Seconds()), 1), burst(r.perSecond()))
}

// budgets are the node's local side of the shared rate budgets: per key,
// the tokens taken from Redis not yet spent, when Redis said the next one
// is due, and the local limiter used in fallback.
type budgets struct {
	mu sync.Mutex
	m  map[string]*batch
}

type batch struct {
	tokens    int
	expires   time.Time // tokens are dropped then
	notBefore time.Time // Redis refused a token until then
	local     *rate.Limiter
	localR    float64 // per second, local was made for
	// filling is closed when the refill in flight ends (nil: none).
	filling chan struct{}
}

func (b *budgets) init() { b.m = map[string]*batch{} }

func (b *budgets) get(key string) *batch {
	x := b.m[key]
	if x == nil {
		x = &batch{}
		b.m[key] = x
	}
	return x
}

// dropLocal forgets the fallback limiters (Redis is back).
func (b *budgets) dropLocal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, x := range b.m {
		x.local = nil
	}
}

// sweep forgets keys with nothing held.
func (b *budgets) sweep(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, x := range b.m {
		if x.filling == nil && (x.tokens == 0 || now.After(x.expires)) && !now.Before(x.notBefore) &&
			(x.local == nil || x.local.TokensAt(now) >= float64(x.local.Burst())) {
			delete(b.m, k)
		}
	}
}

// Take is TakeAll for one key.
func (c *Cluster) Take(key string, r Rate, now time.Time) (ok bool, next time.Time) {
	return c.TakeAll([]string{key}, []Rate{r}, now)
}

// TakeAll takes one token from each shared budget (keys[i], rates[i]) only
// if every one of them has one; otherwise nothing is spent and next is
// when all will (policy.Throttles.TakeAll's contract, so the scheduler can
// call either). Unlimited rates are skipped. Tokens come from Redis in
// batches (batchSize); a key whose batch is empty costs one round trip,
// bounded by Config.Timeout. In fallback the budgets are local, at the
// node's share (Config.Fallback).
func (c *Cluster) TakeAll(keys []string, rates []Rate, now time.Time) (ok bool, next time.Time) {
	if len(keys) != len(rates) {
		panic("cluster: TakeAll: keys and rates differ in length")
	}
	// Each pass takes the tokens if every key has one, or names one key
	// to refill (or a refill in flight to wait for). The Redis call is
	// made outside budgets.mu, so Takes of other keys do not wait on it,
	// and one refill per key is in flight at a time (the others wait for
	// it instead of asking too). Each key is refilled at most once per
	// call, and a refill in flight ends within Timeout: the passes are
	// bounded.
	for pass := 0; pass <= 2*len(keys); pass++ {
		c.budgets.mu.Lock()
		if c.local() {
			ok, next = c.takeLocal(keys, rates, now)
			c.budgets.mu.Unlock()
			return ok, next
		}
		ok, next, fill, wait := c.tryTake(keys, rates, now)
		if fill == nil && wait == nil {
			c.budgets.mu.Unlock()
			return ok, next
		}
		if wait != nil {
			c.budgets.mu.Unlock()
			<-wait
			continue
		}
		i := slices.Index(keys, fill.key)
		done := make(chan struct{})
		fill.x.filling = done
		c.budgets.mu.Unlock()

		k := batchSize(rates[i])
		ctx, cancel := c.callCtx()
		res, err := c.lim.AllowAtMost(ctx, fill.key, rates[i].limit(), k)
		cancel()
		c.calls.Add(1)

		c.budgets.mu.Lock()
		fill.x.filling = nil
		close(done)
		if c.failed("rate "+keys[i], err) {
			ok, next = c.takeLocal(keys, rates, now)
			c.budgets.mu.Unlock()
			return ok, next
		}
		if res.Allowed == 0 {
			fill.x.notBefore = now.Add(max(res.RetryAfter, time.Millisecond))
		} else {
			fill.x.tokens, fill.x.expires = res.Allowed, now.Add(batchLife)
		}
		c.budgets.mu.Unlock()
	}
	// Bounded: another caller spent each refill first; ask again soon.
	return false, now.Add(time.Millisecond)
}

// refill names the key TakeAll refills next.
type refill struct {
	key string // the limiter's key (prefixed)
	x   *batch
}

// tryTake takes a token of each key if all have one (budgets.mu held);
// else it reports when they will (next), or the first key with no tokens
// that Redis has not refused (fill), or a refill in flight (wait). A key
// refused makes no round trips for the keys after it.
func (c *Cluster) tryTake(keys []string, rates []Rate, now time.Time) (ok bool, next time.Time, fill *refill, wait chan struct{}) {
	next = now
	var arr [4]*batch
	held := arr[:0]
	for i, key := range keys {
		r := rates[i]
		if r.unlimited() {
			continue
		}
		x := c.budgets.get(key)
		if x.tokens > 0 && now.After(x.expires) {
			x.tokens = 0
		}
		if x.tokens == 0 && now.Before(x.notBefore) {
			next = later(next, x.notBefore)
			continue
		}
		if x.tokens == 0 {
			if next.After(now) {
				continue
			}
			if x.filling != nil {
				return false, now, nil, x.filling
			}
			return false, now, &refill{c.rateKey(key), x}, nil
		}
		held = append(held, x)
	}
	if next.After(now) {
		return false, next, nil, nil
	}
	for _, x := range held {
		x.tokens--
	}
	return true, now, nil, nil
}

// rateKey is key's name for the limiter (redis_rate puts "rate:" before
// it, prefixedRDB then Prefix before that).
func (c *Cluster) rateKey(key string) string { return key }

// prefixedRDB is the client redis_rate is given: it puts the cluster's
// Prefix before every key, so that the limiter's keys start with it like
// all the others (ACL key patterns such as ~mtad:*), not with redis_rate's
// fixed "rate:".
type prefixedRDB struct {
	redis.UniversalClient
	prefix string
}

func (p prefixedRDB) keys(ks []string) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = p.prefix + k
	}
	return out
}

func (p prefixedRDB) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.UniversalClient.Eval(ctx, script, p.keys(keys), args...)
}

func (p prefixedRDB) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.UniversalClient.EvalSha(ctx, sha1, p.keys(keys), args...)
}

func (p prefixedRDB) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.UniversalClient.EvalRO(ctx, script, p.keys(keys), args...)
}

func (p prefixedRDB) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.UniversalClient.EvalShaRO(ctx, sha1, p.keys(keys), args...)
}

func (p prefixedRDB) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return p.UniversalClient.Del(ctx, p.keys(keys)...)
}

// Ready reports whether each budget has a token for this node now without
// taking one or asking Redis: a batch in hand, or Redis has not refused
// one recently. It is the cheap check of a maintenance tick.
func (c *Cluster) Ready(keys []string, rates []Rate, now time.Time) (ok bool, next time.Time) {
	c.budgets.mu.Lock()
	defer c.budgets.mu.Unlock()
	down := c.local()
	next = now
	for i, key := range keys {
		r := rates[i]
		x := c.budgets.m[key]
		if r.unlimited() || x == nil {
			continue
		}
		if down {
			if c.cfg.Fallback == FallbackStop {
				next = later(next, now.Add(c.cfg.Heartbeat))
			} else if l := c.localLimiter(x, r, now); l.TokensAt(now) < 1 {
				next = later(next, now.Add(untilOne(l.TokensAt(now), l.Limit())))
			}
			continue
		}
		if x.tokens == 0 && now.Before(x.notBefore) {
			next = later(next, x.notBefore)
		}
	}
	return !next.After(now), next
}

// takeLocal is TakeAll in fallback; budgets.mu is held.
func (c *Cluster) takeLocal(keys []string, rates []Rate, now time.Time) (bool, time.Time) {
	if c.cfg.Fallback == FallbackStop {
		for _, r := range rates {
			if !r.unlimited() {
				return false, now.Add(c.cfg.Heartbeat)
			}
		}
		return true, now
	}
	next := now
	var arr [4]*rate.Limiter
	ls := arr[:0]
	for i, key := range keys {
		r := rates[i]
		if r.unlimited() {
			continue
		}
		l := c.localLimiter(c.budgets.get(key), r, now)
		if tok := l.TokensAt(now); tok < 1 {
			next = later(next, now.Add(untilOne(tok, l.Limit())))
		}
		ls = append(ls, l)
	}
	if next.After(now) {
		return false, next
	}
	for _, l := range ls {
		l.AllowN(now, 1)
	}
	return true, now
}

// localLimiter is the key's fallback bucket at this node's share of r.
func (c *Cluster) localLimiter(x *batch, r Rate, now time.Time) *rate.Limiter {
	ps := r.perSecond()
	if c.cfg.Fallback == FallbackShare {
		ps = c.share(ps)
	}
	if x.local == nil {
		// Starts empty-ish (one token): a node entering fallback must not
		// add a full burst on top of what the shared budget just granted.
		x.local = rate.NewLimiter(rate.Limit(ps), burst(ps))
		x.local.SetBurstAt(now, burst(ps))
		x.local.AllowN(now, max(burst(ps)-1, 0))
		x.localR = ps
	} else if x.localR != ps {
		x.local.SetLimitAt(now, rate.Limit(ps))
		x.local.SetBurstAt(now, burst(ps))
		x.localR = ps
	}
	return x.local
}

func untilOne(tok float64, l rate.Limit) time.Duration {
	if l <= 0 {
		return time.Hour
	}
	return time.Duration(math.Ceil((1 - tok) / float64(l) * float64(time.Second)))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
