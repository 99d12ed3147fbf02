package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Record is one shared record (a suspension, a rule throttle): opaque
// Data the scheduler encodes, under an ID unique within its kind, with
// the node that set it, when it was set (At) and until when it holds.
//
// A lift is a record too (Lifted, a tombstone, kept until the lifted
// record's Until): a record missing from Redis is never a lift, because
// Redis may have lost it (a restart without persistence, a flush, an
// eviction), and the nodes that set their records publish them again
// (see replay).
type Record struct {
	ID     string          `json:"id"`
	Source string          `json:"source"` // the node that set (or lifted) it
	Data   json.RawMessage `json:"data,omitempty"`
	Lifted bool            `json:"lifted,omitempty"`
	// By and Reason are who lifted it and why (a tombstone), for the
	// other nodes' logs.
	By     string `json:"by,omitempty"`
	Reason string `json:"reason,omitempty"`
	// At and Until are unix milliseconds: when it was set (or lifted),
	// until when it holds (a tombstone: until when the lifted record
	// would have held).
	At    int64 `json:"at"`
	Until int64 `json:"until"`
}

// ErrPending says a change was kept on this node and queued: it is
// written to Redis when Redis answers again.
var ErrPending = errors.New("cluster: redis unreachable, change queued until it answers")

// maxOps bounds the changes a node keeps for replay (its own live records
// and lifts); past it, those ending first are dropped.
const maxOps = 10000

// sharedState is the last content seen of each kind, to call OnShared
// only on a change, and this node's own changes, replayed to Redis.
type sharedState struct {
	// mu is held across a read and its apply, so that a stale read is
	// never applied after a newer one.
	mu   sync.Mutex
	last map[string]map[string]Record

	opMu sync.Mutex
	// ops are this node's changes still in force (its live records and
	// its lifts, by kind and id, the latest per id), written again after
	// Redis came back or was found empty; unwritten says which ones have
	// not reached Redis yet.
	ops       map[opKey]op
	unwritten map[opKey]bool
	seq       uint64
}

// op is one of this node's changes; seq tells a later change of the same
// id from the one a write in flight sent.
type op struct {
	rec Record
	seq uint64
}

type opKey struct{ kind, id string }

func (s *sharedState) init() {
	s.last = map[string]map[string]Record{}
	s.ops = map[opKey]op{}
	s.unwritten = map[opKey]bool{}
}

func (c *Cluster) hashKey(kind string) string { return c.key("shared", kind) }
func (c *Cluster) channel() string            { return c.key("changes") }

// putScript stores a live record only if it holds longer than the one
// there (so the last writer does not shorten a longer suspension), or if
// it was set after the tombstone there (a lift does not undo a later
// suspension; a replayed record older than its lift is refused).
var putScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' then
    if o.lifted then
      if tonumber(ARGV[3]) <= (tonumber(o.at) or 0) then return 0 end
    elseif tonumber(ARGV[4]) <= (tonumber(o['until']) or 0) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// liftScript writes a tombstone, kept as long as the record it lifts
// would have held.
var liftScript = redis.NewScript(`
local u = tonumber(ARGV[4])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' and not o.lifted and (tonumber(o['until']) or 0) > u then
    u = tonumber(o['until'])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], '{"id":' .. cjson.encode(ARGV[1]) .. ',"source":' .. cjson.encode(ARGV[2]) ..
  ',"by":' .. cjson.encode(ARGV[5]) .. ',"reason":' .. cjson.encode(ARGV[6]) ..
  ',"lifted":true,"at":' .. string.format('%d', tonumber(ARGV[3])) .. ',"until":' .. string.format('%d', u) .. '}')
return 1
`)

// expireScript deletes a record (live or tombstone) only if it ends no
// later than the one the caller saw end: a longer one set meanwhile, by
// any node, stays.
var expireScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local ok, o = pcall(cjson.decode, old)
if ok and type(o) == 'table' and (tonumber(o['until']) or 0) > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`)

// Put stores a record under kind/id (set at, holding until) unless a
// longer one is there or it was lifted after at, and tells every node
// (PUBLISH). Its Source is this node. While Redis does not answer it is
// queued (ErrPending) and written when Redis answers again; it is also
// written again whenever Redis is found to have lost its records.
func (c *Cluster) Put(ctx context.Context, kind, id string, at, until time.Time, data []byte) error {
	rec := Record{ID: id, Source: c.cfg.Node, Data: data, At: at.UnixMilli(), Until: until.UnixMilli()}
	return c.change(ctx, kind, rec)
}

// Lift lifts kind/id on every node: a tombstone (lifted at, kept at least
// until the given until, by whom and why: the other nodes log them),
// whoever set the record. Queued like Put. The
// times are wall-clock times, compared across nodes: a node whose clock
// is off by d may see a record set within d of a lift taken for after it.
func (c *Cluster) Lift(ctx context.Context, kind, id string, at, until time.Time, by, reason string) error {
	rec := Record{ID: id, Source: c.cfg.Node, Lifted: true, By: by, Reason: reason, At: at.UnixMilli(), Until: until.UnixMilli()}
	return c.change(ctx, kind, rec)
}

// Expire removes kind/id, a record that ended by itself at until, unless
// a record that holds longer took its place. Any node may call it (the
// node that set it may be gone); it is not queued.
func (c *Cluster) Expire(ctx context.Context, kind, id string, until time.Time) error {
	k := opKey{kind, id}
	c.shared.opMu.Lock()
	if o, ok := c.shared.ops[k]; ok && o.rec.Until <= until.UnixMilli() {
		delete(c.shared.ops, k)
		delete(c.shared.unwritten, k)
	}
	c.shared.opMu.Unlock()
	if c.local() {
		return ErrPending
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	c.calls.Add(1)
	err := expireScript.Run(ctx, c.rdb, []string{c.hashKey(kind)}, id, until.UnixMilli()).Err()
	if c.failed("expire "+kind, err) {
		return fmt.Errorf("cluster: expiring %s: %w", kind, err)
	}
	return nil
}

func (c *Cluster) change(ctx context.Context, kind string, rec Record) error {
	k := opKey{kind, rec.ID}
	c.shared.opMu.Lock()
	c.shared.seq++
	seq := c.shared.seq
	c.shared.ops[k] = op{rec, seq}
	c.shared.unwritten[k] = true
	c.trimOps()
	c.shared.opMu.Unlock()
	if c.local() {
		return ErrPending
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.write(ctx, kind, rec); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrPending, kind, err)
	}
	c.shared.opMu.Lock()
	if c.shared.ops[k].seq == seq {
		delete(c.shared.unwritten, k)
	}
	c.shared.opMu.Unlock()
	c.calls.Add(1)
	if err := c.rdb.Publish(ctx, c.channel(), kind).Err(); err != nil {
		// Stored: the others read it within a second anyway.
		c.failed("publish "+kind, err)
	}
	return nil
}

// write sends one change (conditional set or tombstone).
func (c *Cluster) write(ctx context.Context, kind string, rec Record) error {
	c.calls.Add(1)
	var err error
	if rec.Lifted {
		err = liftScript.Run(ctx, c.rdb, []string{c.hashKey(kind)}, rec.ID, rec.Source, rec.At, rec.Until, rec.By, rec.Reason).Err()
	} else {
		var b []byte
		if b, err = json.Marshal(rec); err == nil {
			err = putScript.Run(ctx, c.rdb, []string{c.hashKey(kind)}, rec.ID, b, rec.At, rec.Until).Err()
		}
	}
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	c.failed("shared "+kind, err)
	return err
}

// trimOps drops ended changes, and past maxOps those ending first
// (opMu held).
func (c *Cluster) trimOps() {
	s := &c.shared
	now := time.Now().UnixMilli()
	for k, o := range s.ops {
		if o.rec.Until <= now {
			delete(s.ops, k)
			delete(s.unwritten, k)
		}
	}
	if len(s.ops) <= maxOps {
		return
	}
	keys := make([]opKey, 0, len(s.ops))
	for k := range s.ops {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return s.ops[keys[i]].rec.Until < s.ops[keys[j]].rec.Until })
	for _, k := range keys[:len(keys)-maxOps] {
		delete(s.ops, k)
		delete(s.unwritten, k)
	}
}

// replay writes this node's changes again (all of them after Redis was
// found empty or came back from fallback, else the unwritten ones), in
// one pipeline, and clears the last-read content so that the next read
// is applied in full. It reports whether Redis answered.
func (c *Cluster) replay(all bool) bool {
	s := &c.shared
	s.opMu.Lock()
	c.trimOps()
	var kinds []string
	recs := map[opKey]op{}
	for k, o := range s.ops {
		if all || s.unwritten[k] {
			recs[k] = o
		}
	}
	s.opMu.Unlock()
	if len(recs) > 0 {
		ctx, cancel := context.WithTimeout(c.ctx, 4*c.cfg.Timeout)
		defer cancel()
		pipe := c.rdb.Pipeline()
		for k, o := range recs {
			r := o.rec
			if r.Lifted {
				liftScript.Eval(ctx, pipe, []string{c.hashKey(k.kind)}, r.ID, r.Source, r.At, r.Until, r.By, r.Reason)
			} else if b, err := json.Marshal(r); err == nil {
				putScript.Eval(ctx, pipe, []string{c.hashKey(k.kind)}, r.ID, b, r.At, r.Until)
			}
			if !slices.Contains(kinds, k.kind) {
				kinds = append(kinds, k.kind)
			}
		}
		for _, k := range kinds {
			pipe.Publish(ctx, c.channel(), k)
		}
		c.calls.Add(int64(len(recs) + len(kinds)))
		if _, err := pipe.Exec(ctx); c.failed("replay", err) {
			return false
		}
		s.opMu.Lock()
		for k, o := range recs {
			if s.ops[k].seq == o.seq {
				delete(s.unwritten, k)
			}
		}
		s.opMu.Unlock()
	}
	s.mu.Lock()
	s.last = map[string]map[string]Record{}
	s.mu.Unlock()
	return true
}

// pendingOps reports whether changes wait to be written.
func (c *Cluster) pendingOps() bool {
	c.shared.opMu.Lock()
	defer c.shared.opMu.Unlock()
	return len(c.shared.unwritten) > 0
}

// Shared reads every record of kind, tombstones included.
func (c *Cluster) Shared(ctx context.Context, kind string) (map[string]Record, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	c.calls.Add(1)
	m, err := c.rdb.HGetAll(ctx, c.hashKey(kind)).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]Record, len(m))
	for id, v := range m {
		var r Record
		if json.Unmarshal([]byte(v), &r) != nil {
			continue // not ours to interpret; a bad record must not stop the rest
		}
		r.ID = id
		out[id] = r
	}
	return out, nil
}

// follower is who Follow named.
type follower struct {
	kinds []string
	fn    func(kind string, recs map[string]Record)
}

// Follow has fn called, from the node's sync goroutine and one call at a
// time, with the complete set of records of each of kinds (tombstones
// included: a lift is a Lifted record, never a missing one) whenever it
// changed (after another node's pub/sub message, or the periodic read each
// Heartbeat), and once now with what is there. It replaces an earlier
// Follow.
func (c *Cluster) Follow(kinds []string, fn func(kind string, recs map[string]Record)) {
	c.shared.mu.Lock()
	c.shared.last = map[string]map[string]Record{}
	c.shared.mu.Unlock()
	c.follow.Store(&follower{kinds: kinds, fn: fn})
	if !c.down.Load() {
		c.syncAll()
	}
}

// sync reads kind and calls the follower when it changed. The read and
// the apply are under one lock: the pub/sub reader and the periodic read
// cannot apply an older read after a newer one.
func (c *Cluster) sync(kind string) {
	f := c.follow.Load()
	if f == nil || !slices.Contains(f.kinds, kind) {
		return
	}
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock() // OnShared runs under it: one call at a time, in order
	recs, err := c.Shared(c.ctx, kind)
	if c.failed("read "+kind, err) {
		return
	}
	c.forgetLifted(kind, recs)
	c.sweepEnded(kind, recs)
	if old, ok := c.shared.last[kind]; ok && sameRecords(old, recs) {
		return
	}
	c.shared.last[kind] = recs
	f.fn(kind, recs)
}

// endedGrace is how long past its Until a record stays before any node
// sweeps it: the node that holds it removes it itself when it ends there.
const endedGrace = time.Minute

// sweepEnded removes records and tombstones that ended more than
// endedGrace ago, whoever set them (their node may be gone; a tombstone
// has no node that ends it), at most 100 a read, by compare-and-delete
// (a longer one written meanwhile stays).
func (c *Cluster) sweepEnded(kind string, recs map[string]Record) {
	cut := time.Now().Add(-endedGrace).UnixMilli()
	var ended []Record
	for _, r := range recs {
		if r.Until < cut && len(ended) < 100 {
			ended = append(ended, r)
		}
	}
	if len(ended) == 0 {
		return
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	pipe := c.rdb.Pipeline()
	for _, r := range ended {
		expireScript.Eval(ctx, pipe, []string{c.hashKey(kind)}, r.ID, r.Until)
	}
	c.calls.Add(int64(len(ended)))
	_, err := pipe.Exec(ctx)
	c.failed("sweep "+kind, err)
}

// forgetLifted drops this node's records that another node lifted since
// (they must not be written again if Redis loses the tombstone).
func (c *Cluster) forgetLifted(kind string, recs map[string]Record) {
	s := &c.shared
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for id, r := range recs {
		k := opKey{kind, id}
		if own, ok := s.ops[k]; ok && r.Lifted && !own.rec.Lifted && r.At >= own.rec.At && !s.unwritten[k] {
			delete(s.ops, k)
		}
	}
}

func (c *Cluster) syncAll() {
	if f := c.follow.Load(); f != nil {
		for _, k := range f.kinds {
			c.sync(k)
		}
	}
}

func sameRecords(a, b map[string]Record) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.Source != y.Source || x.Lifted != y.Lifted || x.By != y.By || x.Reason != y.Reason || x.At != y.At || x.Until != y.Until || !bytes.Equal(x.Data, y.Data) {
			return false
		}
	}
	return true
}

// subscriber applies the changes other nodes publish as they come; the
// periodic read in loop covers a lost message or a reconnection.
func (c *Cluster) subscriber() {
	defer c.wg.Done()
	ps := c.rdb.Subscribe(c.ctx, c.channel())
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-c.ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			c.sync(m.Payload)
		}
	}
}

func sortMembers(ms []Member) {
	sort.Slice(ms, func(i, j int) bool { return strings.Compare(ms[i].Name, ms[j].Name) < 0 })
}
