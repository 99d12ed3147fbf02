package spool

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// Queue ids are 128 bits written as 26 characters of Crockford base32: 48 bits
// of Unix milliseconds then 80 bits that start random each millisecond and
// are incremented for every further id in the same millisecond. The alphabet
// is in ASCII order and the width is fixed, so string order is creation order.
// Seeded from the largest id in the store at Open, the order also holds
// across restarts when the clock has stepped back.
const (
	idLen      = 26
	crockford  = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	maxIDBytes = 128 // caller-supplied ids are limited to this
)

var crockfordIndex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(crockford); i++ {
		t[crockford[i]] = byte(i)
	}
	return t
}()

// idGen hands out increasing ids; safe for concurrent use.
type idGen struct {
	mu     sync.Mutex
	now    func() time.Time
	lastMs uint64
	hi     uint16 // upper 16 of the 80 counter bits
	lo     uint64 // lower 64 of the 80 counter bits
}

// seed makes every later id greater than id, when id is one of ours.
func (g *idGen) seed(id string) {
	ms, hi, lo, ok := parseID(id)
	if !ok {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms > g.lastMs || (ms == g.lastMs && (hi > g.hi || (hi == g.hi && lo > g.lo))) {
		g.lastMs, g.hi, g.lo = ms, hi, lo
	}
}

func (g *idGen) next() string {
	ms := uint64(g.now().UnixMilli()) & (1<<48 - 1)
	g.mu.Lock()
	if ms > g.lastMs {
		var r [10]byte
		_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux (Go ≥1.24 it panics instead)
		// The top bit stays clear so that incrementing within one millisecond
		// cannot carry into the time bits.
		g.lastMs, g.hi, g.lo = ms, binary.BigEndian.Uint16(r[:2])&0x7fff, binary.BigEndian.Uint64(r[2:])
	} else {
		// Same millisecond, or the clock went back: stay on the last time and
		// count up.
		g.lo++
		if g.lo == 0 {
			g.hi++
		}
		if g.hi == 0 && g.lo == 0 { // 2^80 ids in one millisecond: move time on
			g.lastMs++
		}
	}
	ms, hi, lo := g.lastMs, g.hi, g.lo
	g.mu.Unlock()
	return formatID(ms, hi, lo)
}

func formatID(ms uint64, hi uint16, lo uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[0:8], ms<<16|uint64(hi))
	binary.BigEndian.PutUint64(b[8:16], lo)
	// 128 bits into 26 groups of 5 bits, most significant first; the first
	// group holds the top 3 bits (130 = 26*5).
	hiw, low := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	var out [idLen]byte
	for i := idLen - 1; i >= 0; i-- {
		out[i] = crockford[low&31]
		low = low>>5 | hiw<<59
		hiw >>= 5
	}
	return string(out[:])
}

// parseID is formatID's inverse; ok is false for anything formatID cannot produce.
func parseID(id string) (ms uint64, hi uint16, lo uint64, ok bool) {
	if len(id) != idLen {
		return 0, 0, 0, false
	}
	var hiw, low uint64
	for i := 0; i < idLen; i++ {
		v := crockfordIndex[id[i]]
		if v == 0xff || (i == 0 && v > 7) {
			return 0, 0, 0, false
		}
		hiw = hiw<<5 | low>>59
		low = low<<5 | uint64(v)
	}
	return hiw >> 16, uint16(hiw), low, true
}

// IDTime returns the creation time encoded in a queue id made by NewID.
func IDTime(id string) (time.Time, bool) {
	ms, _, _, ok := parseID(id)
	if !ok {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(ms)), true
}
