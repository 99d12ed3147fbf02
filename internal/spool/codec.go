package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"
)

// Record layout. Every value stored by the spool is
//
//	version byte | payload | crc32c (4 bytes, little endian) over version+payload
//
// so that a torn or bit-rotted value is recognised (bad checksum) and a value
// written by a future format is refused (bad version) instead of misread.
// Payloads are hand-written binary: strings are uvarint length + bytes,
// integers are (zigzag) varints, times are a presence byte followed by a
// varint of Unix nanoseconds.
//
// Version 2 appends fields to the meta record (ENVID, RET, where the body
// is) and the recipient record (NOTIFY, ORCPT, delay notified); version 1
// records, written before those existed, are still read, with the new
// fields zero. Body records keep version 1: their payload never changed.
const (
	recordVersion = 2
	bodyVersion   = 1
	crcLen        = 4
	minRecordLen  = 1 + crcLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every error caused by a stored value that cannot be
// decoded: bad checksum, unknown version, truncated or malformed payload.
var ErrCorrupt = errors.New("spool: corrupt record")

// encoder appends the fields of a record to buf.
type encoder struct{ buf []byte }

func newEncoder(sizeHint int) *encoder {
	e := &encoder{buf: make([]byte, 0, sizeHint+minRecordLen)}
	e.buf = append(e.buf, recordVersion)
	return e
}

func (e *encoder) str(s string) {
	e.buf = binary.AppendUvarint(e.buf, uint64(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *encoder) uvarint(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) varint(v int64)   { e.buf = binary.AppendVarint(e.buf, v) }
func (e *encoder) byte(b byte)      { e.buf = append(e.buf, b) }

func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.buf = append(e.buf, 0)
		return
	}
	e.buf = append(e.buf, 1)
	e.varint(t.UnixNano())
}

// finish appends the checksum and returns the record.
func (e *encoder) finish() []byte {
	return binary.LittleEndian.AppendUint32(e.buf, crc32.Checksum(e.buf, castagnoli))
}

// decoder reads the fields written by encoder; the first failure sticks, so a
// record is decoded field by field and checked once at the end.
type decoder struct {
	buf     []byte
	err     error
	version byte
}

// openRecord checks version and checksum and returns a decoder over the payload.
func openRecord(kind string, rec []byte) *decoder {
	if len(rec) < minRecordLen {
		return &decoder{err: fmt.Errorf("%w: %s record of %d bytes is too short", ErrCorrupt, kind, len(rec))}
	}
	if rec[0] < 1 || rec[0] > recordVersion {
		return &decoder{err: fmt.Errorf("%w: %s record has unknown version %d", ErrCorrupt, kind, rec[0])}
	}
	body, sum := rec[:len(rec)-crcLen], binary.LittleEndian.Uint32(rec[len(rec)-crcLen:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return &decoder{err: fmt.Errorf("%w: %s record checksum %08x, want %08x", ErrCorrupt, kind, got, sum)}
	}
	return &decoder{buf: body[1:], version: rec[0]}
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: malformed %s", ErrCorrupt, what)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) str(what string) string {
	n := d.uvarint(what)
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.buf)) {
		d.fail(what)
		return ""
	}
	s := string(d.buf[:n])
	d.buf = d.buf[n:]
	return s
}

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.fail(what)
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

func (d *decoder) int(what string) int {
	v := d.varint(what)
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fail(what)
		return 0
	}
	return int(v)
}

func (d *decoder) time(what string) time.Time {
	switch d.byte(what) {
	case 0:
		return time.Time{}
	case 1:
		return time.Unix(0, d.varint(what))
	default:
		d.fail(what)
		return time.Time{}
	}
}

// done reports the first error, or trailing bytes as an error.
func (d *decoder) done(kind string) error {
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes in %s record", ErrCorrupt, len(d.buf), kind)
	}
	return d.err
}

// Meta flag bits.
const (
	flagSMTPUTF8 = 1 << iota
	flagEightBit
)

// encodeMeta encodes everything of m except ID (the key) and the recipients
// (their own keys); the recipient count is stored so a reader can tell a
// missing recipient record from a message that never had it.
func encodeMeta(m *Message) []byte {
	e := newEncoder(64 + len(m.EnvID) + len(m.bodyID) + len(m.Sender) + len(m.ClientIP) + len(m.Helo) + len(m.AuthUser) +
		len(m.MessageID) + len(m.Group) + len(m.Binding) + len(m.DSNFor))
	e.str(m.Sender)
	e.time(m.Received)
	e.str(m.ClientIP)
	e.str(m.Helo)
	e.str(m.AuthUser)
	e.str(m.MessageID)
	e.str(m.Group)
	e.str(m.Binding)
	e.varint(int64(m.Priority))
	e.varint(m.Size)
	var flags byte
	if m.SMTPUTF8 {
		flags |= flagSMTPUTF8
	}
	if m.EightBit {
		flags |= flagEightBit
	}
	e.byte(flags)
	e.str(m.DSNFor)
	e.uvarint(uint64(len(m.Recipients)))
	e.str(m.EnvID)
	e.byte(byte(m.Ret))
	e.str(m.bodyID)
	e.uvarint(uint64(m.chunks))
	return e.finish()
}

// maxRecipients bounds the recipient count read from a meta record, so a
// corrupt count cannot make a reader allocate without limit.
const maxRecipients = 1 << 20

// decodeMeta decodes a meta record into a Message without ID or Recipients and
// returns the recipient count it records.
func decodeMeta(rec []byte) (*Message, int, error) {
	d := openRecord("meta", rec)
	m := &Message{}
	m.Sender = d.str("sender")
	m.Received = d.time("received")
	m.ClientIP = d.str("client ip")
	m.Helo = d.str("helo")
	m.AuthUser = d.str("auth user")
	m.MessageID = d.str("message-id")
	m.Group = d.str("group")
	m.Binding = d.str("binding")
	m.Priority = d.int("priority")
	m.Size = d.varint("size")
	flags := d.byte("flags")
	m.SMTPUTF8 = flags&flagSMTPUTF8 != 0
	m.EightBit = flags&flagEightBit != 0
	m.DSNFor = d.str("dsn-for")
	n := d.uvarint("recipient count")
	if d.version >= 2 {
		m.EnvID = d.str("envid")
		m.Ret = Ret(d.byte("ret"))
		m.bodyID = d.str("body id")
		m.chunks = int(min(d.uvarint("chunks"), maxChunks+1))
	}
	if d.err == nil && (m.Ret > RetHdrs) {
		d.fail("ret")
	}
	if d.err == nil && ((m.bodyID == "") != (m.chunks == 0) || m.chunks > maxChunks ||
		m.bodyID != "" && validID(m.bodyID) != nil) {
		d.fail("body layout")
	}
	if d.err == nil && (flags&^(flagSMTPUTF8|flagEightBit) != 0) {
		d.fail("flags")
	}
	if d.err == nil && (n == 0 || n > maxRecipients) {
		d.fail("recipient count")
	}
	if d.err == nil && m.Size < 0 {
		d.fail("size")
	}
	if err := d.done("meta"); err != nil {
		return nil, 0, err
	}
	return m, int(n), nil
}

// Recipient flag bits (version 2).
const rflagDelayNotified = 1

func encodeRecipient(r *Recipient) []byte {
	e := newEncoder(48 + len(r.Addr) + len(r.LastEnh) + len(r.LastText) + len(r.LastMX) + len(r.ORcpt))
	e.str(r.Addr)
	e.byte(byte(r.State))
	e.varint(int64(r.Attempts))
	e.time(r.NextAttempt)
	e.varint(int64(r.LastCode))
	e.str(r.LastEnh)
	e.str(r.LastText)
	e.str(r.LastMX)
	e.time(r.UpdatedAt)
	e.byte(byte(r.Notify))
	e.str(r.ORcpt)
	var flags byte
	if r.DelayNotified {
		flags |= rflagDelayNotified
	}
	e.byte(flags)
	return e.finish()
}

func decodeRecipient(rec []byte) (Recipient, error) {
	d := openRecord("recipient", rec)
	var r Recipient
	r.Addr = d.str("address")
	r.State = State(d.byte("state"))
	r.Attempts = d.int("attempts")
	r.NextAttempt = d.time("next attempt")
	r.LastCode = d.int("last code")
	r.LastEnh = d.str("last enhanced code")
	r.LastText = d.str("last text")
	r.LastMX = d.str("last mx")
	r.UpdatedAt = d.time("updated at")
	if d.version >= 2 {
		r.Notify = Notify(d.byte("notify"))
		r.ORcpt = d.str("orcpt")
		flags := d.byte("recipient flags")
		r.DelayNotified = flags&rflagDelayNotified != 0
		if d.err == nil && flags&^rflagDelayNotified != 0 {
			d.fail("recipient flags")
		}
	}
	if d.err == nil && r.State > Cancelled {
		d.fail("state")
	}
	if d.err == nil && (r.Notify >= NotifyDelay<<1 || r.Notify&NotifyNever != 0 && r.Notify != NotifyNever) {
		d.fail("notify")
	}
	return r, d.done("recipient")
}

// bodyParts returns the version byte and checksum that frame body, so that the
// body itself is copied once, straight into the write batch.
func bodyParts(body []byte) (head [1]byte, tail [crcLen]byte) {
	head[0] = bodyVersion
	sum := crc32.Update(crc32.Checksum(head[:], castagnoli), castagnoli, body)
	binary.LittleEndian.PutUint32(tail[:], sum)
	return head, tail
}

// encodeBody frames body as a record (used by tests and fuzzing; Put writes
// the same bytes piecewise).
func encodeBody(body []byte) []byte {
	head, tail := bodyParts(body)
	rec := make([]byte, 0, len(body)+minRecordLen)
	rec = append(rec, head[:]...)
	rec = append(rec, body...)
	return append(rec, tail[:]...)
}

// decodeBody checks a body record and returns the body, aliasing rec.
func decodeBody(rec []byte) ([]byte, error) {
	d := openRecord("body", rec)
	if d.err == nil && d.version != bodyVersion {
		d.err = fmt.Errorf("%w: body record has unknown version %d", ErrCorrupt, d.version)
	}
	if d.err != nil {
		return nil, d.err
	}
	return d.buf, nil
}
