package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Record is one shared record (a suspension, a rule throttle): opaque
// Data the scheduler encodes, under an ID unique within its kind, with
// the node that set it.
type Record struct {
	ID     string          `json:"id"`
	Source string          `json:"source"` // the node that set it
	Data   json.RawMessage `json:"data"`
}

// sharedState is the last content seen of each kind, to call OnShared
// only on a change.
type sharedState struct {
	mu   sync.Mutex
	last map[string]map[string]Record
}

func (s *sharedState) init() { s.last = map[string]map[string]Record{} }

func (c *Cluster) hashKey(kind string) string { return c.key("shared", kind) }
func (c *Cluster) channel() string            { return c.key("changes") }

// Put stores rec under kind (HSET) and tells every node (PUBLISH). The
// record's Source is this node.
func (c *Cluster) Put(ctx context.Context, kind, id string, data []byte) error {
	b, err := json.Marshal(Record{ID: id, Source: c.cfg.Node, Data: data})
	if err != nil {
		return err
	}
	return c.change(ctx, kind, func(ctx context.Context) error {
		return c.rdb.HSet(ctx, c.hashKey(kind), id, b).Err()
	})
}

// Delete removes the record kind/id from every node.
func (c *Cluster) Delete(ctx context.Context, kind, id string) error {
	return c.change(ctx, kind, func(ctx context.Context) error {
		return c.rdb.HDel(ctx, c.hashKey(kind), id).Err()
	})
}

func (c *Cluster) change(ctx context.Context, kind string, do func(context.Context) error) error {
	if c.down.Load() {
		return fmt.Errorf("cluster: redis unreachable: %s change kept on this node only", kind)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	c.calls.Add(2)
	if err := do(ctx); err != nil {
		c.failed("shared "+kind, err)
		return fmt.Errorf("cluster: sharing %s: %w", kind, err)
	}
	if err := c.rdb.Publish(ctx, c.channel(), kind).Err(); err != nil {
		// Stored: the others read it within a second anyway.
		c.failed("publish "+kind, err)
	}
	return nil
}

// Shared reads every record of kind.
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
// time, with the complete set of records of each of kinds whenever it
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

// sync reads kind and calls the follower when it changed.
func (c *Cluster) sync(kind string) {
	f := c.follow.Load()
	if f == nil || !slices.Contains(f.kinds, kind) {
		return
	}
	recs, err := c.Shared(c.ctx, kind)
	if c.failed("read "+kind, err) {
		return
	}
	c.shared.mu.Lock()
	defer c.shared.mu.Unlock() // OnShared runs under it: one call at a time, in order
	if old, ok := c.shared.last[kind]; ok && sameRecords(old, recs) {
		return
	}
	c.shared.last[kind] = recs
	f.fn(kind, recs)
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
		if !ok || x.Source != y.Source || !bytes.Equal(x.Data, y.Data) {
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
