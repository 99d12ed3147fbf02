package spool

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// RecoverStats counts what Recover found.
type RecoverStats struct {
	Messages    int // messages handed to fn (with at least one pending recipient)
	Recipients  int // pending recipients among them
	Quarantined int // messages moved to quarantine as corrupt
	Finished    int // messages with no pending recipient, deleted
	// Owed counts messages with no pending recipient that still owe their
	// sender a DSN (a bounced or expired recipient, a non-null sender):
	// they are handed to fn too, not deleted, because the bounce that
	// finished them could not be written before the crash or the disk
	// filled. The scheduler spools the DSN, then deletes them.
	Owed int
}

// recoverFlushOps bounds the deletes and quarantine moves Recover buffers
// before committing them.
const recoverFlushOps = 4096

// Recover scans every message in id order (so in order of acceptance). It
// calls fn for each message with at least one Pending recipient or that is
// owed a DSN (see RecoverStats.Owed), deletes the other messages, and moves a message whose records are corrupt (bad
// checksum, unknown version, undecodable, missing body or recipient) to the
// quarantine keyspace with a warning, going on with the next. An error from
// fn stops the scan and is returned. Recover is meant to run once after Open,
// before new mail is accepted; fn must not call Update or Delete for ids it
// has not yet been handed.
func (s *Spool) Recover(fn func(m *Message) error) (RecoverStats, error) {
	var st RecoverStats
	err := s.withDB(func(db *pebble.DB) error { return s.recover(db, fn, &st) })
	if err != nil {
		return st, fmt.Errorf("spool recover: %w", err)
	}
	return st, nil
}

func (s *Spool) recover(db *pebble.DB, fn func(m *Message) error, st *RecoverStats) (err error) {
	// Three iterators walk meta, recipient and body keys in step: all three
	// keyspaces are sorted by id, so each only moves forward.
	var iters []*pebble.Iterator
	newIter := func(prefix string) (*pebble.Iterator, error) {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
		if err == nil {
			iters = append(iters, it)
		}
		return it, err
	}
	defer func() {
		for _, it := range iters {
			err = errors.Join(err, it.Close())
		}
	}()
	mit, err := newIter(prefixMeta)
	if err != nil {
		return err
	}
	rit, err := newIter(prefixRcpt)
	if err != nil {
		return err
	}
	bit, err := newIter(prefixBody)
	if err != nil {
		return err
	}
	// The orphan sweep walks the chunks as they were before fn ran: an
	// iterator sees the store as of its creation, so the chunks of a DSN
	// that fn spools meanwhile (under a new meta key that mit, from the
	// same instant, never visits) are not taken for orphans.
	cit, err := newIter(prefixChunk)
	if err != nil {
		return err
	}

	var pending []op
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := s.commit(pending, false)
		pending = nil
		return err
	}
	// The body ids of chunked messages seen, for the orphan sweep below.
	kept := map[string]bool{}
	for ok := mit.First(); ok; ok = mit.Next() {
		id := string(mit.Key()[len(prefixMeta):])
		m, cerr := checkMessage(db, mit, rit, bit, id)
		if cerr == nil && m.bodyID != "" {
			kept[m.bodyID] = true
		}
		switch {
		case cerr != nil && !errors.Is(cerr, ErrCorrupt):
			return fmt.Errorf("read %s: %w", id, cerr)
		case cerr != nil:
			ops, qerr := quarantineOps(db, id, m)
			if qerr != nil {
				return fmt.Errorf("quarantine %s: %w", id, qerr)
			}
			s.log.Warn("spool: corrupt message moved to quarantine", zap.String("id", id), errField(cerr))
			pending = append(pending, ops...)
			st.Quarantined++
			if m != nil && m.chunks > 0 {
				// Its moves hold copies of its chunks: write them now,
				// so pending never holds more than one body's worth.
				if err := flush(); err != nil {
					return err
				}
			}
		default:
			np := 0
			for _, r := range m.Recipients {
				if r.State == Pending {
					np++
				}
			}
			if np == 0 && !owesDSN(m) {
				pending = append(pending, deleteOps(id, layout{rcpts: len(m.Recipients), bodyID: m.bodyID, chunks: m.chunks})...)
				st.Finished++
				break
			}
			if np == 0 {
				st.Owed++
				if err := fn(m); err != nil {
					return errors.Join(err, flush())
				}
				break
			}
			st.Messages++
			st.Recipients += np
			if err := fn(m); err != nil {
				return errors.Join(err, flush())
			}
		}
		if len(pending) >= recoverFlushOps {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := mit.Error(); err != nil {
		return errors.Join(err, flush())
	}
	if err := flush(); err != nil {
		return err
	}
	n, err := s.sweepOrphanChunks(cit, kept)
	if n > 0 {
		s.log.Info("spool: removed the chunks of bodies whose message was never stored", zap.Int("bodies", n))
	}
	return err
}

// sweepOrphanChunks deletes the chunk records of every body not in kept:
// bodies of messages that were refused or never committed, whose Abort a
// crash lost. It returns how many bodies it removed. it ranges over the
// chunk keys; the caller closes it.
func (s *Spool) sweepOrphanChunks(it *pebble.Iterator, kept map[string]bool) (int, error) {
	var ops []op
	n := 0
	for ok := it.First(); ok; {
		rest := it.Key()[len(prefixChunk):]
		slash := bytes.IndexByte(rest, '/')
		if slash < 0 {
			slash = len(rest)
		}
		bodyID := string(rest[:slash])
		p := chunkPrefix(bodyID)
		if !kept[bodyID] {
			ops = append(ops, op{key: p, end: prefixEnd(string(p)), del: true})
			n++
		}
		ok = it.SeekGE(prefixEnd(string(p)))
	}
	err := it.Error()
	if err == nil && len(ops) > 0 {
		err = s.commit(ops, false)
	}
	return n, err
}

// checkMessage decodes the message at mit and checks that its recipients
// (from rit) and body (from bit, or its chunk records) are all there and
// sound. When the meta record decodes, the message is returned with the
// error, so that its body id is known.
func checkMessage(db *pebble.DB, mit, rit, bit *pebble.Iterator, id string) (*Message, error) {
	if validID(id) != nil {
		return nil, fmt.Errorf("%w: bad id in key %q", ErrCorrupt, mit.Key())
	}
	v, err := mit.ValueAndErr()
	if err != nil {
		return nil, err
	}
	m, n, err := decodeMeta(v)
	if err != nil {
		return nil, err
	}
	m.ID = id
	m.Recipients, err = readRecipients(rit, rcptPrefix(id), n)
	if err != nil {
		return m, err
	}
	if m.chunks > 0 {
		return m, checkChunks(db, m)
	}
	bk := bodyKey(id)
	if !bit.SeekGE(bk) || !bytes.Equal(bit.Key(), bk) {
		if err := bit.Error(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: body missing", ErrCorrupt)
	}
	bv, err := bit.ValueAndErr()
	if err != nil {
		return nil, err
	}
	body, err := decodeBody(bv)
	if err != nil {
		return nil, err
	}
	if int64(len(body)) != m.Size {
		return nil, fmt.Errorf("%w: body is %d bytes, meta says %d", ErrCorrupt, len(body), m.Size)
	}
	return m, nil
}

// checkChunks checks that every chunk of m's body is there, sound, and that
// together they are m.Size bytes.
func checkChunks(db *pebble.DB, m *Message) error {
	p := chunkPrefix(m.bodyID)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return err
	}
	var size int64
	i := 0
	for ok := it.First(); ok; ok = it.Next() {
		if !bytes.Equal(it.Key(), chunkKey(m.bodyID, i)) || i == m.chunks {
			err = fmt.Errorf("%w: unexpected body chunk key %q (want %d of %d)", ErrCorrupt, it.Key(), i, m.chunks)
			break
		}
		v, verr := it.ValueAndErr()
		if verr != nil {
			err = verr
			break
		}
		b, derr := decodeBody(v)
		if derr != nil {
			err = fmt.Errorf("body chunk %d: %w", i, derr)
			break
		}
		size += int64(len(b))
		i++
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return err
	}
	if i != m.chunks || size != m.Size {
		return fmt.Errorf("%w: body has %d chunks of %d bytes, meta says %d of %d", ErrCorrupt, i, size, m.chunks, m.Size)
	}
	return nil
}

// quarantineOps moves every record of id under q/, keeping key and value as
// they were, for an operator to look at. m is the message as far as it
// could be decoded (nil when its meta record could not): its body chunks
// are moved too.
func quarantineOps(db *pebble.DB, id string, m *Message) ([]op, error) {
	var ops []op
	move := func(k, v []byte) {
		ops = append(ops,
			op{key: append([]byte(prefixQuarantine), k...), val: [][]byte{bytes.Clone(v)}},
			op{key: bytes.Clone(k), del: true})
	}
	for _, k := range [][]byte{metaKey(id), bodyKey(id)} {
		v, found, err := getCopy(db, k)
		if err != nil {
			return nil, err
		}
		if found {
			move(k, v)
		}
	}
	prefixes := [][]byte{rcptPrefix(id)}
	if m != nil && m.bodyID != "" {
		prefixes = append(prefixes, chunkPrefix(m.bodyID))
	}
	for _, p := range prefixes {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
		if err != nil {
			return nil, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			v, verr := it.ValueAndErr()
			if verr != nil {
				return nil, errors.Join(verr, it.Close())
			}
			move(it.Key(), v)
		}
		if err := errors.Join(it.Error(), it.Close()); err != nil {
			return nil, err
		}
	}
	return ops, nil
}

// Quarantined returns the ids of the messages in quarantine, in id order.
func (s *Spool) Quarantined() ([]string, error) {
	var ids []string
	err := s.withDB(func(db *pebble.DB) error {
		qm := prefixQuarantine + prefixMeta
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(qm), UpperBound: prefixEnd(qm)})
		if err != nil {
			return err
		}
		for ok := it.First(); ok; ok = it.Next() {
			ids = append(ids, string(it.Key()[len(qm):]))
		}
		return errors.Join(it.Error(), it.Close())
	})
	if err != nil {
		return nil, fmt.Errorf("spool quarantined: %w", err)
	}
	return ids, nil
}

// owesDSN reports whether a message whose recipients are all final still
// owes its sender a delivery status notification.
func owesDSN(m *Message) bool {
	if m.Sender == "" {
		return false
	}
	for _, r := range m.Recipients {
		if r.State == Bounced || r.State == Expired {
			return true
		}
	}
	return false
}
