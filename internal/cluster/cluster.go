// Package cluster owns the state mtad nodes share through Redis: rate
// budgets (GCRA, go-redis/redis_rate), connection leases that expire,
// shared records (suspensions, rule throttles) with a pub/sub channel, and
// node membership with a heartbeat.
//
// Every Redis call is bounded by Config.Timeout (200 ms default) and
// never retried in place. A call on the delivery path that fails is
// answered locally (Config.Fallback: the node's share of each limit, full
// local limits, or nothing sent), and so are the calls after it until the
// next heartbeat answers: so no delivery waits on a dead Redis longer than
// one timeout per heartbeat. The node declares fallback (logs it once,
// metrics, /readyz) only after two consecutive heartbeats failed: one slow
// reply under load is not an outage (with a 100 ms timeout nodes fell in
// and out of fallback under the cluster benchmark's load). Its background
// loop keeps beating each second and takes the shared limits up again when
// Redis answers.
//
// Redis may lose its content (a restart without persistence, a flush): a
// missing record is therefore never a lift (lifts are tombstones), every
// node writes its own records and changes again when it finds Redis back
// or emptied (an epoch key), and renews the leases it held through an
// outage before it leaves fallback.
//
// It must never import the packages above it (policy, scheduler): limits
// are given as plain rates and counts, records as opaque bytes, and the
// scheduler adapts them. It owns three goroutines per Cluster (the
// heartbeat/probe loop, the lease renewer, the pub/sub reader), started by
// New and stopped and waited for by Close.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Fallback is what a node does with the shared limits while Redis is
// unreachable.
type Fallback int

const (
	// FallbackShare divides each shared limit by the number of nodes last
	// seen (at least 1): together the nodes stay within the limit.
	FallbackShare Fallback = iota
	// FallbackLocal applies each limit in full on each node.
	FallbackLocal
	// FallbackStop delivers nothing under a shared limit until Redis is back.
	FallbackStop
)

// ParseFallback reads cluster.fallback's values.
func ParseFallback(s string) (Fallback, error) {
	switch s {
	case "", "share":
		return FallbackShare, nil
	case "local":
		return FallbackLocal, nil
	case "stop":
		return FallbackStop, nil
	}
	return 0, fmt.Errorf("fallback %q: want share, local or stop", s)
}

func (f Fallback) String() string {
	switch f {
	case FallbackLocal:
		return "local"
	case FallbackStop:
		return "stop"
	}
	return "share"
}

// Config is a Cluster's settings.
type Config struct {
	// Addrs is one Redis address, or several for Redis Cluster.
	Addrs    []string
	Password string
	TLS      *tls.Config // nil: plain TCP
	// Node is this node's name (unique in the cluster); Version is
	// reported in its membership record.
	Node, Version string
	Fallback      Fallback
	// LeaseTTL is how long a connection lease lives without renewal (30 s
	// default); leases are renewed every LeaseTTL/3.
	LeaseTTL time.Duration
	// Timeout bounds every Redis call (200 ms default).
	Timeout time.Duration
	// Prefix starts every key and channel name ("mtad:" default), so that
	// clusters can share one Redis.
	Prefix string
	// Heartbeat is the membership and probe period (1 s default); a node
	// is dropped from Members after 3 missed heartbeats.
	Heartbeat time.Duration
	// Queued, if set, is reported in the membership record.
	Queued func() int
	// OnShared, if set, is Follow's fn from the start.
	OnShared func(kind string, recs map[string]Record)
	// SharedKinds are the kinds OnShared follows.
	SharedKinds []string
	// StateFile, if set, keeps the names of the nodes last seen (written
	// when they change), so that a node that starts while Redis is down
	// falls back to its share among them instead of the whole limit.
	StateFile string
	Log       *zap.Logger
}

// Cluster is one node's connection to the shared state. Its methods are
// safe for concurrent use.
type Cluster struct {
	cfg  Config
	rdb  redis.UniversalClient
	lim  *redis_rate.Limiter
	log  *zap.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	down      atomic.Bool  // in fallback
	downSince atomic.Int64 // unix nanos
	downErr   atomic.Pointer[string]
	members   atomic.Int64 // nodes last seen, ≥ 1
	// seen is the last member list read (or, before one, the names the
	// state file kept), shown while Redis does not answer (Nodes).
	seen atomic.Pointer[[]Member]
	rank atomic.Int64 // this node's place among them by name, from 0
	// strikes counts consecutive failed heartbeats (fallback at 2);
	// suspect is until when (unix nanos) delivery calls answer locally
	// after a failed call, without asking Redis.
	strikes atomic.Int32
	suspect atomic.Int64

	budgets budgets
	leases  leaseSet
	shared  sharedState
	follow  atomic.Pointer[follower]

	// calls counts Redis commands sent, for the benchmarks' round trips
	// per message.
	calls atomic.Int64
	// epoch is the Redis epoch last seen (beat's goroutine only).
	epoch string
	// stateSaved is StateFile's content as last written.
	stateMu    sync.Mutex
	stateSaved string
}

// New connects to Redis and starts the node's background work. It does
// not fail when Redis is down (the node starts in fallback), only on a bad
// Config.
func New(cfg Config) (*Cluster, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("cluster: no redis address")
	}
	if cfg.Node == "" {
		return nil, errors.New("cluster: no node name")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "mtad:"
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:     cfg.Addrs,
		Password:  cfg.Password,
		TLSConfig: cfg.TLS,
		// One timeout for everything, and no retries: a retry doubles
		// the wait of a delivery on a dead Redis, and fallback is the
		// answer to a failure, not another try.
		DialTimeout:     cfg.Timeout,
		ReadTimeout:     cfg.Timeout,
		WriteTimeout:    cfg.Timeout,
		MaxRetries:      -1,
		PoolTimeout:     cfg.Timeout,
		DisableIdentity: true,
	})
	c := &Cluster{cfg: cfg, rdb: rdb, lim: redis_rate.NewLimiter(prefixedRDB{rdb, cfg.Prefix}), log: cfg.Log}
	c.ctx, c.stop = context.WithCancel(context.Background())
	c.members.Store(1)
	if cfg.OnShared != nil {
		c.follow.Store(&follower{kinds: cfg.SharedKinds, fn: cfg.OnShared})
	}
	c.budgets.init()
	c.leases.init()
	c.shared.init()
	c.loadMembers()
	// The first heartbeat before returning: a node knows at once whether
	// it starts shared or in fallback (a Redis that does not answer at the
	// start is not a slow reply: no second heartbeat is awaited), and how
	// many others there are.
	if !c.beat() {
		c.goDown()
	}
	c.wg.Add(3)
	go c.loop()
	go c.renewer()
	go c.subscriber()
	return c, nil
}

// Close stops the background work, releases this node's leases and
// membership (best effort, in one pipeline under one timeout: a hung
// Redis delays Close by Timeout, whatever the leases held) and closes the
// client.
func (c *Cluster) Close() error {
	c.stop()
	c.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	pipe := c.rdb.Pipeline()
	n := c.leases.releaseAll(ctx, pipe)
	if !c.down.Load() {
		pipe.Del(ctx, c.nodeKey(c.cfg.Node))
		pipe.SRem(ctx, c.key("nodes"), c.cfg.Node)
		n += 2
	}
	if n > 0 {
		c.calls.Add(int64(n))
		_, _ = pipe.Exec(ctx) // best effort: leases expire, the record too
	}
	return c.rdb.Close()
}

// Node is this node's name.
func (c *Cluster) Node() string { return c.cfg.Node }

// Calls is how many Redis commands this node has sent.
func (c *Cluster) Calls() int64 { return c.calls.Load() }

func (c *Cluster) key(parts ...string) string {
	k := c.cfg.Prefix
	for i, p := range parts {
		if i > 0 {
			k += ":"
		}
		k += p
	}
	return k
}

func (c *Cluster) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.ctx, c.cfg.Timeout)
}

// failed notes a Redis error of a call and reports whether err was a
// Redis failure at all (redis.Nil is not). The caller answers locally, and
// so do the delivery calls until the next heartbeat answers (local); only
// heartbeats declare fallback (beat).
func (c *Cluster) failed(what string, err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	if c.ctx.Err() != nil {
		return true // closing: no fallback to announce
	}
	msg := what + ": " + err.Error()
	c.downErr.Store(&msg)
	c.suspect.Store(time.Now().Add(c.cfg.Heartbeat).UnixNano())
	return true
}

// local reports whether calls are answered without Redis now: in
// fallback, or since a failed call until the next heartbeat answers.
func (c *Cluster) local() bool {
	return c.down.Load() || time.Now().UnixNano() < c.suspect.Load()
}

// beatFailed counts a failed heartbeat; the second in a row declares
// fallback.
func (c *Cluster) beatFailed() {
	if c.strikes.Add(1) >= 2 {
		c.goDown()
	}
}

// goDown declares fallback (logged once).
func (c *Cluster) goDown() {
	if c.ctx.Err() != nil {
		return
	}
	if c.down.CompareAndSwap(false, true) {
		c.downSince.Store(time.Now().UnixNano())
		why := ""
		if p := c.downErr.Load(); p != nil {
			why = *p
		}
		c.log.Warn("cluster: redis unreachable, limits fall back",
			zap.String("fallback", c.cfg.Fallback.String()),
			zap.Int64("nodes", c.members.Load()), zap.String("error", why))
	}
}

// recovered takes the node out of fallback (logged once) after a
// heartbeat answered.
func (c *Cluster) recovered() {
	c.strikes.Store(0)
	c.suspect.Store(0)
	if c.down.CompareAndSwap(true, false) {
		since := time.Unix(0, c.downSince.Load())
		c.log.Info("cluster: redis answers again, shared limits resume",
			zap.Duration("down", time.Since(since).Round(time.Millisecond)))
		c.budgets.dropLocal()
	}
}

// Fallback reports whether the node is in fallback, and the mode.
func (c *Cluster) Fallback() (bool, Fallback) { return c.down.Load(), c.cfg.Fallback }

// Status is nil while Redis answers, else why not and what the node does
// instead: /readyz shows it (a node in fallback still delivers, within its
// share, unless the mode is stop).
func (c *Cluster) Status() error {
	if !c.down.Load() {
		return nil
	}
	why := ""
	if p := c.downErr.Load(); p != nil {
		why = *p
	}
	switch c.cfg.Fallback {
	case FallbackShare:
		return fmt.Errorf("redis unreachable (%s): fallback share, 1/%d of each shared rate, connection caps by name (this node %d of %d)",
			why, c.members.Load(), c.rank.Load()+1, c.members.Load())
	case FallbackLocal:
		return fmt.Errorf("redis unreachable (%s): fallback local, full limits on this node", why)
	}
	return fmt.Errorf("redis unreachable (%s): fallback stop, nothing under a shared limit is sent", why)
}

// loop beats the heart (which is also the probe that ends fallback),
// reads the shared records, and sweeps stale local budgets.
func (c *Cluster) loop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			if !c.beat() {
				c.beatFailed()
			}
			if !c.down.Load() {
				c.syncAll()
			}
			c.budgets.sweep(time.Now())
		}
	}
}

// beat writes this node's membership record and counts the members; it
// reports whether Redis answered (and if so ends fallback).
func (c *Cluster) beat() bool {
	ctx, cancel := c.callCtx()
	defer cancel()
	q := 0
	if c.cfg.Queued != nil {
		q = c.cfg.Queued()
	}
	now := time.Now()
	k := c.nodeKey(c.cfg.Node)
	pipe := c.rdb.Pipeline()
	pipe.HSet(ctx, k, "name", c.cfg.Node, "version", c.cfg.Version,
		"queued", q, "heartbeat", now.UnixMilli())
	pipe.PExpire(ctx, k, 3*c.cfg.Heartbeat)
	pipe.SAdd(ctx, c.key("nodes"), c.cfg.Node)
	// The epoch is set by the first node to find it missing: a new one
	// means Redis lost its content (a restart without persistence, a
	// flush), even between two heartbeats, so every node writes its
	// records again.
	pipe.SetNX(ctx, c.key("epoch"), c.cfg.Node+"-"+strconv.FormatInt(now.UnixNano(), 36), 0)
	epoch := pipe.Get(ctx, c.key("epoch"))
	c.calls.Add(5)
	if _, err := pipe.Exec(ctx); c.failed("heartbeat", err) {
		return false
	}
	// Members counts the live nodes (and forgets the dead), which sets the
	// share this node would fall back to.
	if _, err := c.Members(ctx); c.failed("heartbeat", err) {
		return false
	}
	wasDown := c.down.Load()
	newEpoch := epoch.Val() != c.epoch
	if wasDown {
		// The leases held through fallback count in Redis before the
		// node takes new ones against Redis's count (re-added if they
		// expired there or Redis lost them).
		if !c.renew() {
			return false
		}
	}
	if wasDown || newEpoch || c.pendingOps() {
		if !c.replay(wasDown || newEpoch) {
			return false
		}
	}
	if !c.dropOrphans() {
		return false
	}
	c.epoch = epoch.Val()
	c.recovered()
	return true
}

// Member is one node's membership record.
type Member struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Queued    int       `json:"queued"`
	Heartbeat time.Time `json:"last_heartbeat"`
}

func (c *Cluster) nodeKey(name string) string { return c.key("node", name) }

// Members lists the nodes whose heartbeat is current, by name; nodes whose
// record expired are dropped from the set. The count also sets the share
// each node falls back to.
func (c *Cluster) Members(ctx context.Context) ([]Member, error) {
	ctx, cancel := context.WithTimeout(ctx, 4*c.cfg.Timeout)
	defer cancel()
	names, err := c.rdb.SMembers(ctx, c.key("nodes")).Result()
	c.calls.Add(1)
	if err != nil {
		return nil, fmt.Errorf("cluster members: %w", err)
	}
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(names))
	for i, n := range names {
		cmds[i] = pipe.HGetAll(ctx, c.nodeKey(n))
	}
	c.calls.Add(int64(len(names)))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("cluster members: %w", err)
	}
	var out []Member
	var gone []any
	for i, cmd := range cmds {
		m := cmd.Val()
		if len(m) == 0 {
			gone = append(gone, names[i])
			continue
		}
		q, _ := strconv.Atoi(m["queued"])
		hb, _ := strconv.ParseInt(m["heartbeat"], 10, 64)
		out = append(out, Member{Name: m["name"], Version: m["version"], Queued: q, Heartbeat: time.UnixMilli(hb)})
	}
	if len(gone) > 0 {
		c.rdb.SRem(ctx, c.key("nodes"), gone...)
		c.calls.Add(1)
	}
	sortMembers(out)
	for i, m := range out {
		if m.Name == c.cfg.Node {
			// Only a list with this node in it sets the share: the
			// ranks must add up over the nodes that see each other.
			c.members.Store(int64(len(out)))
			c.rank.Store(int64(i))
			c.saveMembers(out)
			c.seen.Store(&out)
		}
	}
	return out, nil
}

// Nodes is Members for a display: while Redis does not answer (fallback,
// or this read failing) it returns at once the last list seen, stale
// (their heartbeats as last read; only names when read from the state
// file), instead of an error.
func (c *Cluster) Nodes(ctx context.Context) (ms []Member, stale bool) {
	if !c.local() {
		if ms, err := c.Members(ctx); err == nil {
			return ms, false
		}
	}
	if p := c.seen.Load(); p != nil {
		return slices.Clone(*p), true
	}
	return []Member{}, true
}

// saveMembers writes the names of the nodes seen to StateFile when they
// changed (write, fsync, rename: a crash leaves the old list or the new).
func (c *Cluster) saveMembers(ms []Member) {
	if c.cfg.StateFile == "" {
		return
	}
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.Name
	}
	text := strings.Join(names, "\n") + "\n"
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if text == c.stateSaved {
		return
	}
	tmp := c.cfg.StateFile + ".tmp"
	f, err := os.Create(tmp)
	if err == nil {
		_, err = f.WriteString(text)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, c.cfg.StateFile)
	}
	if err != nil {
		c.log.Warn("cluster: nodes seen not saved", zap.String("file", c.cfg.StateFile), zap.Error(err))
		return
	}
	c.stateSaved = text
}

// loadMembers sets the share from StateFile's list (New, before the first
// heartbeat, which replaces it if Redis answers). A list without this
// node counts it as one more, ranked last.
func (c *Cluster) loadMembers() {
	if c.cfg.StateFile == "" {
		return
	}
	b, err := os.ReadFile(c.cfg.StateFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("cluster: nodes seen not read", zap.String("file", c.cfg.StateFile), zap.Error(err))
		}
		return
	}
	names := strings.Fields(string(b))
	if len(names) == 0 || len(names) > 10000 {
		return
	}
	i := slices.Index(names, c.cfg.Node)
	if i < 0 {
		names = append(names, c.cfg.Node)
		i = len(names) - 1
	}
	c.stateSaved = string(b)
	ms := make([]Member, len(names))
	for j, n := range names {
		ms[j] = Member{Name: n}
	}
	c.seen.Store(&ms)
	c.members.Store(int64(len(names)))
	c.rank.Store(int64(i))
}

// share is the part of a shared rate this node may use in fallback: the
// rate divided by the nodes last seen.
func (c *Cluster) share(limit float64) float64 {
	n := float64(max(c.members.Load(), 1))
	return limit / n
}

// FallbackCap is the part of a shared connection cap this node may use
// while it answers without Redis: the whole cap in mode local, none in
// mode stop, and in mode share its part by rank (ShareOf).
func (c *Cluster) FallbackCap(cap int) int {
	switch c.cfg.Fallback {
	case FallbackLocal:
		return cap
	case FallbackStop:
		return 0
	}
	return ShareOf(cap, int(c.members.Load()), int(c.rank.Load()))
}

// ShareOf is node i's (0-based, of n ranked by name) part of a cap: the
// nodes ranked first get the remainder, floor(cap/n) + (1 if i < cap mod
// n), so the parts add up to the cap exactly and, for a cap below n, some
// nodes get 0 (they do not connect under it until Redis is back; with
// "at least 1 each" three nodes kept a cap of 1 at 3).
func ShareOf(cap, n, i int) int {
	if n < 1 {
		n = 1
	}
	if cap <= 0 {
		return 0
	}
	p := cap / n
	if i >= 0 && i < cap%n {
		p++
	}
	return p
}

// InFallback reports whether the node answers without Redis now (in
// fallback, or after a failed call until the next heartbeat).
func (c *Cluster) InFallback() bool { return c.local() }

// Stopped reports whether the node is in fallback stop: nothing under a
// shared limit is sent.
func (c *Cluster) Stopped() bool { return c.local() && c.cfg.Fallback == FallbackStop }

// Register adds the cluster's metrics to r: mtad_cluster_fallback (1 while
// Redis is unreachable and the limits are the fallback's),
// mtad_cluster_nodes and mtad_cluster_redis_commands_total.
func (c *Cluster) Register(r prometheus.Registerer) error {
	for _, col := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mtad_cluster_fallback",
			Help: "1 while Redis is unreachable and this node applies cluster.fallback to the shared limits, else 0."},
			func() float64 {
				if c.down.Load() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mtad_cluster_nodes",
			Help: "Nodes with a current heartbeat, as last seen (the divisor of fallback share)."},
			func() float64 { return float64(c.members.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mtad_cluster_redis_commands_total",
			Help: "Redis commands this node sent (rate batches, leases, heartbeats, shared records)."},
			func() float64 { return float64(c.calls.Load()) }),
	} {
		if err := r.Register(col); err != nil {
			return fmt.Errorf("cluster metrics: %w", err)
		}
	}
	return nil
}
