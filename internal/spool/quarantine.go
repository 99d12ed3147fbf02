package spool

// The quarantine, for an operator: Recover moves the records of a message
// it cannot read under q/ (quarantineOps, recover.go), keeping key and
// value as they were. These read them back, as far as they decode, stream
// a readable body, move a sound message back to the live keyspace, or
// delete it. Nothing here ever moves a record that does not decode back
// into the live keyspace: a restored message is exactly one that Recover
// would have accepted.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// ErrLive is what QuarantineRestore's error wraps when a live message
// already has the id: a conflict for the operator to look at, not a
// failure of the store.
var ErrLive = errors.New("spool: a live message has the id")

// QuarantineEntry is one quarantined message, as far as its records
// decode. The envelope fields are zero when its meta record does not.
type QuarantineEntry struct {
	ID string
	// Checked says every record was read (QuarantineGet), so Readable is
	// known; QuarantineList reads the meta record only.
	Checked bool
	// Readable says every record decodes and agrees with the meta record:
	// the message can be restored. Reason says why not, otherwise: the
	// decode error that also had Recover set it aside.
	Readable bool
	Reason   string
	// MetaReadable says the envelope fields below are known.
	MetaReadable bool
	Sender       string
	Recipients   int // the count the meta record gives
	Size         int64
	Received     time.Time
	MessageID    string
	// Rcpts are the recipients, from QuarantineGet only, when every one
	// of their records decodes.
	Rcpts []Recipient
}

// quarantineKey is key under the quarantine prefix.
func quarantineKey(key []byte) []byte { return append([]byte(prefixQuarantine), key...) }

// readQuarantined decodes what it can of the quarantined message id; m is
// the message with its recipients when every record is sound, nil
// otherwise. ErrNotFound when no q/ meta record of id exists.
func readQuarantined(db *pebble.DB, id string) (e QuarantineEntry, m *Message, err error) {
	e.ID = id
	if validID(id) != nil {
		return e, nil, ErrNotFound
	}
	rec, found, err := getCopy(db, quarantineKey(metaKey(id)))
	if err != nil {
		return e, nil, err
	}
	if !found {
		return e, nil, ErrNotFound
	}
	e = metaEntry(id, rec)
	e.Checked = true
	if !e.MetaReadable {
		return e, nil, nil
	}
	m, n, derr := decodeMeta(rec) // decodes: metaEntry said so
	if derr != nil {
		return e, nil, derr
	}
	m.ID = id
	p := quarantineKey(rcptPrefix(id))
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return e, nil, err
	}
	m.Recipients, derr = readRecipients(it, p, n)
	if err := it.Close(); err != nil {
		return e, nil, err
	}
	if derr != nil {
		e.Reason = "recipients: " + derr.Error()
		return e, nil, nil
	}
	if derr = checkQuarantinedBody(db, m); derr != nil {
		e.Reason = "body: " + derr.Error()
		return e, nil, nil
	}
	e.Readable, e.Rcpts = true, m.Recipients
	return e, m, nil
}

// checkQuarantinedBody checks that m's quarantined body records are all
// there, decode, and add up to m.Size, as checkMessage and checkChunks do
// for the live ones.
func checkQuarantinedBody(db *pebble.DB, m *Message) error {
	var size int64
	err := eachQuarantinedBodyRecord(db, m, func(b []byte) error { size += int64(len(b)); return nil })
	if err != nil {
		return err
	}
	if size != m.Size {
		return fmt.Errorf("%w: body is %d bytes, meta says %d", ErrCorrupt, size, m.Size)
	}
	return nil
}

// eachQuarantinedBodyRecord calls fn with each decoded body record of m in
// order; a missing, extra or undecodable one is an error wrapping
// ErrCorrupt. fn's slice is valid only during the call.
func eachQuarantinedBodyRecord(db *pebble.DB, m *Message, fn func([]byte) error) error {
	if m.chunks == 0 {
		v, found, err := getCopy(db, quarantineKey(bodyKey(m.ID)))
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: body missing", ErrCorrupt)
		}
		b, err := decodeBody(v)
		if err != nil {
			return err
		}
		return fn(b)
	}
	p := quarantineKey(chunkPrefix(m.bodyID))
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return err
	}
	i := 0
	for ok := it.First(); ok && err == nil; ok = it.Next() {
		if i == m.chunks || !bytes.Equal(it.Key(), quarantineKey(chunkKey(m.bodyID, i))) {
			err = fmt.Errorf("%w: unexpected body chunk key %q (want %d of %d)", ErrCorrupt, it.Key(), i, m.chunks)
			break
		}
		var b []byte
		v, verr := it.ValueAndErr()
		if verr == nil {
			b, verr = decodeBody(v)
		}
		if verr != nil {
			err = fmt.Errorf("body chunk %d: %w", i, verr)
			break
		}
		err = fn(b)
		i++
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return err
	}
	if i != m.chunks {
		return fmt.Errorf("%w: body has %d chunks, meta says %d", ErrCorrupt, i, m.chunks)
	}
	return nil
}

// Paging of QuarantineList: a page holds DefaultQuarantinePage entries
// when the caller asks for none, and never more than MaxQuarantinePage.
const (
	DefaultQuarantinePage = 100
	MaxQuarantinePage     = 1000
)

// QuarantinePage is one page of QuarantineList: Next is the id to pass as
// after for the following page, "" on the last one.
type QuarantinePage struct {
	Items []QuarantineEntry
	Next  string
}

// QuarantineList returns up to limit quarantined messages with ids after
// after (exclusive; "" starts at the first), in id order. limit ≤ 0 means
// DefaultQuarantinePage; above MaxQuarantinePage it is cut to it.
//
// It reads each message's meta record only (the envelope and the
// recipient count it gives): after a salvage thousands of messages may be
// quarantined, and checking each body and recipient record here would
// read every byte of them in one request. So an entry's Readable is false
// and Reason says only why the meta record does not decode, if it does
// not; Checked is false. QuarantineGet checks the whole message.
func (s *Spool) QuarantineList(limit int, after string) (QuarantinePage, error) {
	if limit <= 0 {
		limit = DefaultQuarantinePage
	}
	limit = min(limit, MaxQuarantinePage)
	var page QuarantinePage
	err := s.withDB(func(db *pebble.DB) error {
		qm := prefixQuarantine + prefixMeta
		lo := []byte(qm)
		if after != "" {
			// The smallest key past q/m/<after>: after itself is excluded.
			lo = append([]byte(qm+after), 0)
		}
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(qm)})
		if err != nil {
			return err
		}
		for ok := it.First(); ok; ok = it.Next() {
			id := string(it.Key()[len(qm):])
			if len(page.Items) == limit {
				page.Next = page.Items[limit-1].ID
				break
			}
			v, verr := it.ValueAndErr()
			if verr != nil {
				return errors.Join(verr, it.Close())
			}
			page.Items = append(page.Items, metaEntry(id, v))
		}
		return errors.Join(it.Error(), it.Close())
	})
	if err != nil {
		return QuarantinePage{}, fmt.Errorf("spool quarantine list: %w", err)
	}
	return page, nil
}

// metaEntry is what the quarantined meta record rec of id says.
func metaEntry(id string, rec []byte) QuarantineEntry {
	e := QuarantineEntry{ID: id}
	m, n, derr := decodeMeta(rec)
	if derr != nil {
		e.Reason = "meta record: " + derr.Error()
		return e
	}
	e.MetaReadable, e.Sender, e.Recipients, e.Size, e.Received, e.MessageID = true, m.Sender, n, m.Size, m.Received, m.MessageID
	return e
}

// QuarantineGet returns the quarantined message id with its recipients
// when they decode, or an error wrapping ErrNotFound.
func (s *Spool) QuarantineGet(id string) (QuarantineEntry, error) {
	var e QuarantineEntry
	err := s.withDB(func(db *pebble.DB) error {
		var err error
		e, _, err = readQuarantined(db, id)
		return err
	})
	if err != nil {
		return e, fmt.Errorf("spool quarantine %s: %w", id, err)
	}
	return e, nil
}

// QuarantineBody returns the body of the quarantined message id when it is
// readable; otherwise an error wrapping ErrNotFound or ErrCorrupt (saying
// why). The body is read a record at a time, not held whole.
func (s *Spool) QuarantineBody(id string) (io.ReadCloser, error) {
	var m *Message
	err := s.withDB(func(db *pebble.DB) error {
		e, msg, err := readQuarantined(db, id)
		if err == nil && msg == nil {
			err = fmt.Errorf("%w: %s", ErrCorrupt, e.Reason)
		}
		m = msg
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("spool quarantine %s body: %w", id, err)
	}
	return &quarantineBody{s: s, m: m}, nil
}

// quarantineBody streams a quarantined body one record at a time.
type quarantineBody struct {
	s    *Spool
	m    *Message
	next int    // the next chunk to load
	cur  []byte // what is left of the loaded one
	read int64
}

func (r *quarantineBody) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.read >= r.m.Size || (r.m.chunks == 0 && r.next > 0) {
			return 0, io.EOF
		}
		key := quarantineKey(bodyKey(r.m.ID))
		if r.m.chunks > 0 {
			key = quarantineKey(chunkKey(r.m.bodyID, r.next))
		}
		err := r.s.withDB(func(db *pebble.DB) error {
			v, found, err := getCopy(db, key)
			if err == nil && !found {
				err = fmt.Errorf("%w: body record %q gone", ErrNotFound, key)
			}
			if err == nil {
				r.cur, err = decodeBody(v)
			}
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("spool quarantine %s body: %w", r.m.ID, err)
		}
		r.next++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

func (r *quarantineBody) Close() error { r.cur = nil; return nil }

// QuarantineRestore moves every record of the quarantined message id back
// to the live keyspace in one synced batch and returns the message, with
// its recipients, for the scheduler to queue. Only a message whose
// records all decode is moved; otherwise the error wraps ErrCorrupt and
// says why, and nothing moves. A live message with the same id (which
// ids' uniqueness rules out) is refused too, with an error wrapping
// ErrLive.
func (s *Spool) QuarantineRestore(id string) (*Message, error) {
	// The quarantine is an operator's, one order at a time; holding the
	// lock keeps a concurrent restore or delete of the same id from
	// interleaving between the read and the commit.
	s.qmu.Lock()
	defer s.qmu.Unlock()
	var m *Message
	var ops []op
	err := s.withDB(func(db *pebble.DB) error {
		e, msg, err := readQuarantined(db, id)
		if err != nil {
			return err
		}
		if msg == nil {
			return fmt.Errorf("%w: not restored: %s", ErrCorrupt, e.Reason)
		}
		if _, found, err := getCopy(db, metaKey(id)); err != nil || found {
			if err != nil {
				return err
			}
			return fmt.Errorf("%w: not restored: a live message has the id %s", ErrLive, id)
		}
		m = msg
		ops, err = quarantinedOps(db, msg, id, true)
		return err
	})
	if err == nil {
		err = s.commit(ops, false)
	}
	if err != nil {
		return nil, fmt.Errorf("spool quarantine %s restore: %w", id, err)
	}
	return m, nil
}

// QuarantineDelete removes every quarantined record of id in one synced
// batch: its meta, body and recipient records and, when its meta record
// decodes, its body chunks, and its DSN-owed marker (s/<id>). An error
// wraps ErrNotFound for an id not in quarantine.
//
// A message still owed a DSN is deleted all the same (the operator asked
// for it, and the DSN is built from the very records being deleted): the
// spool logs a warning, with the id, that its sender was owed a DSN that
// will never be sent. (The signature stays error-only: the scheduler's
// Quarantine interface and its policy record are not changed by this.)
func (s *Spool) QuarantineDelete(id string) error {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	var ops []op
	dsnOwed := false
	err := s.withDB(func(db *pebble.DB) error {
		if validID(id) != nil {
			return ErrNotFound
		}
		rec, found, err := getCopy(db, quarantineKey(metaKey(id)))
		if err != nil {
			return err
		}
		if !found {
			return ErrNotFound
		}
		m, _, derr := decodeMeta(rec)
		if derr != nil {
			// Its chunks, if it had any, were never moved (quarantineOps
			// needs the meta record to find them): the live keyspace's
			// orphan sweep takes them at the next start.
			m = &Message{}
		}
		m.ID = id
		ops, err = quarantinedOps(db, m, id, false)
		if err != nil {
			return err
		}
		dsn := []byte(prefixSalvageDSN + id)
		if _, dsnOwed, err = getCopy(db, dsn); err != nil {
			return err
		}
		if dsnOwed {
			ops = append(ops, op{key: dsn, del: true})
		}
		return nil
	})
	if err == nil {
		err = s.commit(ops, false)
	}
	if err != nil {
		return fmt.Errorf("spool quarantine %s delete: %w", id, err)
	}
	if dsnOwed {
		s.log.Warn("spool: quarantined message deleted while its sender was owed a DSN: the DSN will not be sent", zap.String("id", id))
	}
	return nil
}

// quarantinedOps returns the writes that delete every q/ record of id (m
// gives its chunks' body id) and, with restore, put each back under its
// original key.
func quarantinedOps(db *pebble.DB, m *Message, id string, restore bool) ([]op, error) {
	var ops []op
	prefixes := [][]byte{quarantineKey(rcptPrefix(id))}
	if m.bodyID != "" {
		prefixes = append(prefixes, quarantineKey(chunkPrefix(m.bodyID)))
	}
	for _, k := range [][]byte{quarantineKey(metaKey(id)), quarantineKey(bodyKey(id))} {
		v, found, err := getCopy(db, k)
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		if restore {
			ops = append(ops, op{key: bytes.Clone(k[len(prefixQuarantine):]), val: [][]byte{v}})
		}
		ops = append(ops, op{key: k, del: true})
	}
	for _, p := range prefixes {
		if restore {
			it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
			if err != nil {
				return nil, err
			}
			for ok := it.First(); ok; ok = it.Next() {
				v, verr := it.ValueAndErr()
				if verr != nil {
					return nil, errors.Join(verr, it.Close())
				}
				ops = append(ops, op{key: bytes.Clone(it.Key()[len(prefixQuarantine):]), val: [][]byte{bytes.Clone(v)}})
			}
			if err := errors.Join(it.Error(), it.Close()); err != nil {
				return nil, err
			}
		}
		ops = append(ops, op{key: p, end: prefixEnd(string(p)), del: true})
	}
	return ops, nil
}
