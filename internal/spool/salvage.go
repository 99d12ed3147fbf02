package spool

// Salvage of a damaged store at start-up.
//
// A read error in the store (a pebble block checksum, an EIO from a failing
// disk, a record failing its own crc32c) used to make start-up fail, and a
// supervisor restarting the daemon met the same error again, with every
// acknowledged message stuck behind it. Salvage instead moves the damaged
// store aside (never deleting it: it is the operator's evidence), opens a
// fresh one in its place and copies into it every message it can read
// whole; what it can read only in part goes to quarantine (q/ records, as
// Recover writes them), and a message whose envelope is readable is marked
// as owed a DSN (s/<id>), which the daemon sends once the scheduler runs.
//
// Reading a damaged store. A pebble iterator stops at the first block that
// fails its checksum, and a new iterator seeking into that block fails the
// same way; a seek past the block's last key does not touch it. So the
// walker below, on an error, bisects the key space between the last key it
// read and the end of its range for the smallest key a fresh iterator can
// seek to without an error, and goes on from there: it loses the keys of
// the damaged block (and, at worst, a few keys just above it) and nothing
// else, at ≤ 8·maxKeyBytes seeks per damaged block. Opening the tables one
// by one with pebble's sstable reader would give the block boundaries
// exactly, but that reader's block-level API is internal to pebble, and a
// table reader sees neither the memtable replayed from the WAL nor which
// version of a key is live: the DB iterator gives both.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/record"
	"go.uber.org/zap"
)

// prefixSalvageDSN marks a quarantined message (its records under q/) whose
// sender is still owed a DSN: s/<id>, with an empty value. Recover never
// visits the prefix.
const prefixSalvageDSN = "s/"

// maxKeyBytes bounds the keys the walker's bisection reasons about: every
// key the spool writes is shorter (the longest, a chunk key, is < 60).
const maxKeyBytes = 64

// maxSkips bounds the damaged ranges one walk skips, so a store that is
// nothing but damage ends the walk in bounded time.
const maxSkips = 100000

// IsDamage reports whether err, from Open or Recover, is a read error that
// Salvage is for: pebble's corruption (a block checksum, a corrupt WAL or
// MANIFEST), an I/O error from the disk (EIO), or a record failing mtad's
// own checksum. Anything else (a missing or unwritable directory, a lock
// held by another process, a full disk) is not fixed by a fresh store.
func IsDamage(err error) bool {
	// pebble marks corruption with cockroachdb/errors' Mark, which the
	// standard errors.Is does not see: pebble.IsCorruptionError does.
	return err != nil && (pebble.IsCorruptionError(err) || errors.Is(err, ErrCorrupt) || errors.Is(err, syscall.EIO))
}

// SalvageStats is what Salvage did.
type SalvageStats struct {
	DamagedDir  string // where the damaged store was moved: <dir>/damaged-<UTC time>
	Copied      int    // messages copied whole, with their recipient states
	Quarantined int    // messages with a readable meta record but some record missing or unsound
	DSNOwed     int    // of those, the ones owed a DSN: a non-null sender and a readable recipient still pending
	// NoticeOwed counts the quarantined messages owed a damage notice
	// instead: a non-null sender, some recipient records unreadable and
	// none readable still pending, so there is no recipient a DSN could
	// name, yet the sender was told 250 and must be told it failed.
	NoticeOwed int
	// Orphans counts messages of which only recipient records could be
	// read (their meta record was in a damaged range): those
	// records are quarantined too.
	Orphans int
	// KeptQuarantined counts the messages (q/ meta records) that were in
	// quarantine already, copied with their readable q/ records as they
	// were; KeptDSNOwed the DSN-owed markers (s/) copied with them.
	KeptQuarantined int
	KeptDSNOwed     int
	// DamagedRanges counts the key ranges the walk had to skip.
	DamagedRanges int
}

// CheckDir checks that dir, the spool directory, can be used: it exists
// (it is created when its parent exists, as on a first start) and is
// writable (a file is created, synced and removed in it). The errors are
// one line each, naming the key: "spool.dir /x: does not exist".
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		parent := filepath.Dir(filepath.Clean(dir))
		if pfi, perr := os.Stat(parent); perr != nil || !pfi.IsDir() {
			return fmt.Errorf("spool.dir %s: does not exist (nor does its parent %s)", dir, parent)
		}
		if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("spool.dir %s: does not exist and cannot be created: %v", dir, errText(err))
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("spool.dir %s: %v", dir, errText(err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("spool.dir %s: not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return fmt.Errorf("spool.dir %s: not writable: %v", dir, errText(err))
	}
	_, werr := f.Write([]byte("mtad\n"))
	serr := f.Sync()
	cerr := f.Close()
	rerr := os.Remove(f.Name())
	if err := errors.Join(werr, serr, cerr, rerr); err != nil {
		return fmt.Errorf("spool.dir %s: not writable: %v", dir, errText(err))
	}
	return nil
}

// errText is the cause of a path error without the path, which the caller
// already names.
func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// Salvage replaces the damaged store in dir with a fresh one holding every
// message that can be read from it, and returns the fresh spool, open. The
// spool in dir must be closed. cause is the error that showed the damage
// (logged). The damaged store is left in SalvageStats.DamagedDir.
func Salvage(dir string, opts Options, cause error) (*Spool, SalvageStats, error) {
	var st SalvageStats
	log := zap.NewNop()
	if opts.Logger != nil {
		log = opts.Logger.With(zap.String("component", "spool"))
	}
	log.Error("spool: damaged store, salvaging what can be read", zap.String("dir", dir), errField(cause))
	damaged, err := moveAside(dir)
	if err != nil {
		return nil, st, fmt.Errorf("spool salvage %s: %w", dir, err)
	}
	st.DamagedDir = damaged
	old, err := openDamaged(filepath.Join(damaged, "db"), log)
	if IsDamage(err) {
		// pebble stops at a corrupt WAL record that has whole records
		// after it (a torn tail it tolerates by itself): cut the WAL
		// there, keeping the original beside it, and try again.
		var cut int
		cut, err = cutDamagedWALs(filepath.Join(damaged, "db"), log)
		if err == nil && cut > 0 {
			old, err = openDamaged(filepath.Join(damaged, "db"), log)
		}
	}
	if err != nil {
		return nil, st, fmt.Errorf("spool salvage %s: open the damaged store: %w", dir, err)
	}
	defer func() { _ = old.Close() }()
	s, err := Open(dir, opts)
	if err != nil {
		return nil, st, fmt.Errorf("spool salvage %s: %w", dir, err)
	}
	if err := s.salvageFrom(old, &st); err != nil {
		return nil, st, errors.Join(fmt.Errorf("spool salvage %s: %w", dir, err), s.Close())
	}
	// Every copy is synced (commit waits for the fsync): the fresh store
	// is complete.
	if err := salvageDone(dir); err != nil {
		return nil, st, errors.Join(fmt.Errorf("spool salvage %s: %w", dir, err), s.Close())
	}
	return s, st, nil
}

// salvageMarker, in the spool directory, names the damaged-<time>
// directory of a salvage under way. It is there from before the damaged
// store is moved until the fresh store holds all that could be copied, so a
// salvage cut short (a crash, a kill) is done again at the next start and
// not taken for a complete store.
const salvageMarker = "salvaging"

// SalvageUnfinished reports whether a salvage of the spool in dir was cut
// short: Salvage must then be called again before the spool is used.
func SalvageUnfinished(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, salvageMarker))
	return err == nil
}

// moveAside renames dir/db to dir/damaged-<UTC time>/db, recording the
// move in the salvage marker first, so the fresh store is created in an
// empty place and the damaged one is kept. Resuming a salvage cut short,
// it removes the partial fresh store (a copy of records that are all in
// the damaged one: nothing was accepted into it) and reuses the damaged
// directory named in the marker.
func moveAside(dir string) (string, error) {
	db := filepath.Join(dir, "db")
	if name, err := os.ReadFile(filepath.Join(dir, salvageMarker)); err == nil {
		damaged := filepath.Join(dir, filepath.Base(strings.TrimSpace(string(name))))
		if _, err := os.Stat(filepath.Join(damaged, "db")); err == nil {
			if err := os.RemoveAll(db); err != nil {
				return "", err
			}
			return damaged, syncDir(dir)
		}
		if err := os.MkdirAll(damaged, 0o750); err != nil {
			return "", err
		}
		return damaged, errors.Join(os.Rename(db, filepath.Join(damaged, "db")), syncDir(dir))
	}
	base := filepath.Join(dir, "damaged-"+time.Now().UTC().Format("20060102T150405Z"))
	damaged := base
	for i := 1; ; i++ {
		err := os.Mkdir(damaged, 0o750)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || i > 100 {
			return "", err
		}
		damaged = fmt.Sprintf("%s-%d", base, i)
	}
	if err := writeSynced(filepath.Join(dir, salvageMarker), []byte(filepath.Base(damaged)+"\n")); err != nil {
		return "", err
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	if err := os.Rename(db, filepath.Join(damaged, "db")); err != nil {
		return "", err
	}
	return damaged, syncDir(dir)
}

// salvageDone removes the salvage marker: the fresh store is complete.
func salvageDone(dir string) error {
	if err := os.Remove(filepath.Join(dir, salvageMarker)); err != nil {
		return err
	}
	return syncDir(dir)
}

func writeSynced(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	return errors.Join(err, f.Sync(), f.Close())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// openDamaged opens the damaged store read-only: nothing in it is changed.
func openDamaged(path string, log *zap.Logger) (*pebble.DB, error) {
	sugar := log.Sugar()
	return pebble.Open(path, &pebble.Options{
		ReadOnly:           true,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{log: sugar, fatal: func(err error) { sugar.Errorw("pebble fatal error in the damaged store", "error", ErrLine(err)) }},
		EventListener: &pebble.EventListener{
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				sugar.Warnw("pebble data corruption in the damaged store", "info", corruptionLine(info))
			},
		},
	})
}

// cutDamagedWALs cuts each WAL file of the store at path before its first
// unreadable record: the original is renamed to <name>.damaged, and a copy
// of the part before the damage takes its name. The records after the
// damage are lost: a WAL record has no key of its own to resume from,
// and what follows a corrupt chunk cannot be told from leftover bytes of
// a recycled file. It returns how many files it cut.
func cutDamagedWALs(path string, log *zap.Logger) (int, error) {
	logs, err := filepath.Glob(filepath.Join(path, "*.log"))
	if err != nil {
		return 0, err
	}
	cut := 0
	for _, name := range logs {
		good, bad, err := walGoodPrefix(name)
		if err != nil {
			return cut, err
		}
		if !bad {
			continue
		}
		log.Warn("spool salvage: WAL damaged; records after the damage are lost", zap.String("file", name), zap.Int64("readable_bytes", good))
		if err := os.Rename(name, name+".damaged"); err != nil {
			return cut, err
		}
		if err := copyPrefix(name+".damaged", name, good); err != nil {
			return cut, err
		}
		cut++
	}
	return cut, nil
}

// walGoodPrefix reads the WAL file name record by record and returns the
// offset of the first record that cannot be read whole; bad is false when
// the file ends cleanly. A torn or unreadable record counts as bad
// wherever it is: pebble takes a torn tail in the newest WAL by itself
// (and drops what follows it, as the cut does), but not in an older one.
func walGoodPrefix(name string) (good int64, bad bool, err error) {
	base := filepath.Base(name)
	num, perr := strconv.ParseUint(base[:strings.IndexFunc(base, func(r rune) bool { return r < '0' || r > '9' })], 10, 64)
	if perr != nil {
		return 0, false, fmt.Errorf("WAL %s: %w", name, perr)
	}
	f, err := os.Open(name)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	r := newLogReader(record.NewReader, f, num)
	for { // ends at the end of the file: each Next reads past a record
		good = r.Offset()
		rec, err := r.Next()
		if err == nil {
			_, err = io.Copy(io.Discard, rec)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return good, false, nil
		case errors.Is(err, record.ErrUnexpectedEOF) || record.IsInvalidRecord(err) || pebble.IsCorruptionError(err):
			return good, true, nil
		default:
			return good, false, fmt.Errorf("WAL %s: %w", name, err)
		}
	}
}

// newLogReader calls record.NewReader, whose log number type lives in an
// internal package of pebble and cannot be named here.
func newLogReader[N ~uint64](mk func(io.Reader, N) *record.Reader, r io.Reader, num uint64) *record.Reader {
	return mk(r, N(num))
}

// copyPrefix writes the first n bytes of src to dst and syncs it.
func copyPrefix(src, dst string, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = io.CopyN(out, in, n)
	return errors.Join(err, out.Sync(), out.Close())
}

// kv is one readable record.
type kv struct{ k, v []byte }

// walk calls fn with every key in [lo, hi) whose key and value can be read,
// skipping the damaged ranges (see the file comment); keysOnly skips reading
// values (fn gets nil). It returns the number of ranges skipped.
func walk(db *pebble.DB, lo, hi []byte, keysOnly bool, fn func(k, v []byte) error) (int, error) {
	skips := 0
	from := lo
	width := 0 // the longest key read: the bisection's precision
	for {
		last, err := walkFrom(db, from, hi, keysOnly, 0, func(k, v []byte) error {
			width = max(width, len(k))
			return fn(k, v)
		})
		if err == nil {
			return skips, nil
		}
		var sw stopWalk
		if errors.As(err, &sw) {
			return skips, sw.error
		}
		if !IsDamage(err) && !errors.Is(err, errValue) {
			return skips, err
		}
		if skips++; skips > maxSkips {
			return skips, fmt.Errorf("more than %d damaged ranges: %w", maxSkips, err)
		}
		if last == nil {
			last = from
		}
		w := width
		if w == 0 {
			w = maxKeyBytes // no key read yet: no length to go by
		}
		next, ok := nextReadable(db, last, hi, w)
		if !ok {
			return skips, nil
		}
		from = next
	}
}

// errValue marks a key whose value could not be read; fn is not called
// for it and the walk goes on after it.
var errValue = errors.New("value unreadable")

// walkFrom iterates [from, hi) until the end, the first error or, when
// limit > 0, the limit-th key, returning the last key it read (nil when
// none) and the error. At the limit it stops without a further Next: that
// step may load the next block, past hi, and fail on its damage (pebble
// cannot always tell from the index that the next block starts above hi).
func walkFrom(db *pebble.DB, from, hi []byte, keysOnly bool, limit int, fn func(k, v []byte) error) (last []byte, err error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: from, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ignoreDamage(it.Close())) }()
	for ok := it.First(); ok; ok = it.Next() {
		last = append(last[:0], it.Key()...)
		var v []byte
		if !keysOnly {
			var verr error
			v, verr = it.ValueAndErr()
			if verr != nil {
				// A value in a damaged block, its key readable: go on
				// after the key; the bisection starts from it.
				return bytes.Clone(last), errors.Join(errValue, verr)
			}
		}
		if err := fn(last, v); err != nil {
			return last, stopWalk{err}
		}
		if limit--; limit == 0 {
			return last, nil
		}
	}
	if err := it.Error(); err != nil {
		return last, err
	}
	return last, nil
}

// stopWalk wraps an error from the walk's callback: it ends the walk
// whatever it is.
type stopWalk struct{ error }

func (s stopWalk) Unwrap() error { return s.error }

// ignoreDamage drops a damage error from an iterator's Close: it repeats
// the error the walk has met already.
func ignoreDamage(err error) error {
	if IsDamage(err) {
		return nil
	}
	return err
}

// nextReadable returns the smallest key x in (after, hi), to width bytes
// of precision, from which a fresh iterator can seek without an error, by
// bisection: seeks into a damaged block fail, seeks past it do not. ok is
// false when no such key is below hi.
//
// width is the length of the keys of the range (they all have one length
// in a keyspace of the spool): bisecting past it would only split the
// space between two adjacent possible keys, at the price of a failed read
// per step, and each failed read is dear (pebble looks for a single bit
// flip: 8·n checksums of an n-byte block).
func nextReadable(db *pebble.DB, after, hi []byte, width int) ([]byte, bool) {
	width = max(width, len(after))
	a := keyNum(after, width)
	a.Add(a, big.NewInt(1)) // after itself, or its value, was unreadable
	b := keyNum(hi, width)
	if len(hi) > width {
		b.Add(b, big.NewInt(1))
	}
	if a.Cmp(b) >= 0 {
		return nil, false
	}
	if seekOK(db, numKey(a, width), hi) {
		return numKey(a, width), true
	}
	// Invariant: a fails, b succeeds (hi is an exclusive bound: nothing
	// to read there). At most 8*width rounds.
	one := big.NewInt(1)
	end := new(big.Int).Set(b)
	for new(big.Int).Sub(b, a).Cmp(one) > 0 {
		mid := new(big.Int).Add(a, b)
		mid.Rsh(mid, 1)
		if seekOK(db, numKey(mid, width), hi) {
			b = mid
		} else {
			a = mid
		}
	}
	if b.Cmp(end) >= 0 {
		return nil, false
	}
	return numKey(b, width), true
}

// seekOK reports whether a fresh iterator seeks to k without an error.
func seekOK(db *pebble.DB, k, hi []byte) bool {
	if bytes.Compare(k, hi) >= 0 {
		return true
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: k, UpperBound: hi})
	if err != nil {
		return false
	}
	it.First()
	err = it.Error()
	_ = it.Close()
	return err == nil
}

// keyNum reads the first width bytes of k, padded with zero bytes, as a
// big-endian number; numKey is its inverse, without the padding.
func keyNum(k []byte, width int) *big.Int {
	b := make([]byte, width)
	copy(b, k)
	return new(big.Int).SetBytes(b)
}

func numKey(n *big.Int, width int) []byte {
	b := n.FillBytes(make([]byte, width))
	return bytes.TrimRight(b, "\x00")
}

// salvageFrom copies what can be read of old into s, a fresh store.
func (s *Spool) salvageFrom(old *pebble.DB, st *SalvageStats) error {
	var ops []op
	size := 0
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		err := s.commit(ops, false)
		ops, size = nil, 0
		return err
	}
	add := func(o ...op) error {
		for i := range o {
			size += o[i].size()
		}
		ops = append(ops, o...)
		if size >= s.opts.MaxGroupBytes {
			return flush()
		}
		return nil
	}
	var walkErr error
	n, err := walk(old, []byte(prefixMeta), prefixEnd(prefixMeta), false, func(k, v []byte) error {
		id := string(k[len(prefixMeta):])
		recs, m, whole, err := readWhole(old, id, bytes.Clone(v), st)
		if err != nil {
			return err
		}
		if whole {
			st.Copied++
			for _, r := range recs {
				if err := add(op{key: r.k, val: [][]byte{r.v}}); err != nil {
					return err
				}
			}
			return nil
		}
		st.Quarantined++
		s.log.Warn("spool salvage: message damaged, moved to quarantine", zap.String("id", id), zap.Int("records_readable", len(recs)))
		for _, r := range recs {
			if err := add(op{key: append([]byte(prefixQuarantine), r.k...), val: [][]byte{r.v}}); err != nil {
				return err
			}
		}
		if m == nil || m.Sender == "" {
			return nil
		}
		switch {
		case pendingReadable(recs, id) || bouncedReadable(recs, id):
			st.DSNOwed++
		case recipientsMissing(recs, id, recs[0].v):
			st.NoticeOwed++
		default:
			return nil // every recipient is final: nothing is owed
		}
		// One marker for both: SalvageOwed returns the envelope with
		// its readable recipients, and the scheduler sends a DSN when
		// one is pending, else the notice.
		return add(op{key: append([]byte(prefixSalvageDSN), id...), val: [][]byte{nil}})
	})
	st.DamagedRanges += n
	walkErr = err
	if walkErr != nil {
		return errors.Join(walkErr, flush())
	}
	if err := flush(); err != nil {
		return err
	}
	if err := s.salvageOrphans(old, st); err != nil {
		return err
	}
	return s.salvageKept(old, st)
}

// pendingReadable reports whether recs, a message's readable records,
// hold a recipient still pending: a DSN needs one to report on (RFC 3464
// requires a Final-Recipient), and one whose recipients are all final
// owes its sender nothing. A message whose sender is readable but whose
// recipient records are not is not owed a DSN that could never be sent:
// counted as owed, it told the operator its sender had been told.
func pendingReadable(recs []kv, id string) bool {
	p := rcptPrefix(id)
	for _, r := range recs {
		if !bytes.HasPrefix(r.k, p) {
			continue
		}
		if rc, err := decodeRecipient(r.v); err == nil && rc.State == Pending {
			return true
		}
	}
	return false
}

// bouncedReadable reports whether recs hold a recipient that bounced or
// expired: the message was kept for the DSN reporting it (Recover's
// owesDSN), which a quarantine must not swallow.
func bouncedReadable(recs []kv, id string) bool {
	p := rcptPrefix(id)
	for _, r := range recs {
		if !bytes.HasPrefix(r.k, p) {
			continue
		}
		if rc, err := decodeRecipient(r.v); err == nil && (rc.State == Bounced || rc.State == Expired) {
			return true
		}
	}
	return false
}

// recipientsMissing reports whether fewer of a message's recipient records
// decode among recs than its meta record (meta) counts: the recipients it
// cannot name may still be pending, so its sender is owed a notice that
// the message was damaged (see scheduler.BounceDamaged). A message whose
// recipients all read and are all final owes nothing.
func recipientsMissing(recs []kv, id string, meta []byte) bool {
	_, n, err := decodeMeta(meta)
	if err != nil {
		return false
	}
	p := rcptPrefix(id)
	read := 0
	for _, r := range recs {
		if !bytes.HasPrefix(r.k, p) {
			continue
		}
		if _, err := decodeRecipient(r.v); err == nil {
			read++
		}
	}
	return read < n
}

// salvageKept copies, as they are, the readable records the damaged store
// already had set aside: the quarantine (q/, from Recover or an earlier
// salvage, with its messages' recipient records and body chunks, which
// quarantineOps and salvageFrom both keep under q/) and the DSN-owed
// markers (s/). Without them a second damage event would drop the
// quarantine, and with it the DSNs still owed for it. Nothing is decoded:
// the quarantine's readers say what of a message is sound, as before.
func (s *Spool) salvageKept(old *pebble.DB, st *SalvageStats) error {
	qm := []byte(prefixQuarantine + prefixMeta)
	for _, prefix := range []string{prefixQuarantine, prefixSalvageDSN} {
		var ops []op
		size := 0
		n, err := walk(old, []byte(prefix), prefixEnd(prefix), false, func(k, v []byte) error {
			switch {
			case prefix == prefixSalvageDSN:
				st.KeptDSNOwed++
			case bytes.HasPrefix(k, qm):
				st.KeptQuarantined++
			}
			o := op{key: bytes.Clone(k), val: [][]byte{bytes.Clone(v)}}
			ops, size = append(ops, o), size+o.size()
			if size >= s.opts.MaxGroupBytes || len(ops) >= recoverFlushOps {
				err := s.commit(ops, false)
				ops, size = nil, 0
				return err
			}
			return nil
		})
		st.DamagedRanges += n
		if err != nil {
			return err
		}
		if len(ops) > 0 {
			if err := s.commit(ops, false); err != nil {
				return err
			}
		}
	}
	if st.KeptQuarantined > 0 || st.KeptDSNOwed > 0 {
		s.log.Warn("spool salvage: the quarantine already there copied as it was",
			zap.Int("messages", st.KeptQuarantined), zap.Int("dsn_owed", st.KeptDSNOwed))
	}
	return nil
}

// readRange calls fn for each record of [lo, hi) up to the first that
// cannot be read, and says whether it met one. It does not look past the
// damage, as walk does: the range is one message's records, and one
// unreadable record is enough to set the message aside, while every read
// of a damaged block is dear (pebble's bit-flip search runs up to 320,000
// checksums of the whole block, seconds for a 256 KiB body chunk).
//
// want > 0 is the number of records the message's meta names: the read
// stops after that many, never stepping past the message's last key into
// the next block, whose damage is another message's. A message whose
// records all read was once quarantined for its neighbour's damage, and
// its sender told it failed (found by a new-user test); records beyond
// the count, if any, are not the message's and are not copied.
func readRange(db *pebble.DB, lo, hi []byte, want int, fn func(k, v []byte) error) (damaged bool, err error) {
	_, err = walkFrom(db, lo, hi, false, want, fn)
	var sw stopWalk
	switch {
	case err == nil:
		return false, nil
	case errors.As(err, &sw):
		return false, sw.error
	case IsDamage(err) || errors.Is(err, errValue):
		return true, nil
	}
	return false, err
}

// readWhole reads every record of message id whose meta value is meta. recs
// are the records that could be read, meta first; whole says they are all
// there and sound; m is the decoded meta (nil when it does not decode).
func readWhole(db *pebble.DB, id string, meta []byte, st *SalvageStats) (recs []kv, m *Message, whole bool, err error) {
	recs = []kv{{metaKey(id), meta}}
	whole = validID(id) == nil
	m, n, derr := decodeMeta(meta)
	if derr != nil {
		m, whole = nil, false
	}
	p := rcptPrefix(id)
	idx := 0
	if m == nil {
		n = 0 // no count to stop at: read to the end of the range
	}
	damaged, err := readRange(db, p, prefixEnd(string(p)), n, func(k, v []byte) error {
		recs = append(recs, kv{bytes.Clone(k), bytes.Clone(v)})
		if len(k) != len(p)+4 || int(binary.BigEndian.Uint32(k[len(p):])) != idx {
			whole = false
		} else if _, derr := decodeRecipient(v); derr != nil {
			whole = false
		}
		idx++
		return nil
	})
	if err != nil {
		return nil, nil, false, err
	}
	if damaged || m == nil || idx != n {
		whole = false
	}
	var bodySize int64
	if m != nil && m.chunks > 0 {
		cp := chunkPrefix(m.bodyID)
		ci := 0
		damaged, err := readRange(db, cp, prefixEnd(string(cp)), m.chunks, func(k, v []byte) error {
			recs = append(recs, kv{bytes.Clone(k), bytes.Clone(v)})
			b, derr := decodeBody(v)
			if derr != nil || !bytes.Equal(k, chunkKey(m.bodyID, ci)) {
				whole = false
			}
			bodySize += int64(len(b))
			ci++
			return nil
		})
		if err != nil {
			return nil, nil, false, err
		}
		if damaged || ci != m.chunks {
			whole = false
		}
	} else {
		v, found, gerr := getCopy(db, bodyKey(id))
		switch {
		case gerr != nil && !IsDamage(gerr):
			return nil, nil, false, gerr
		case gerr != nil || !found:
			whole = false
		default:
			recs = append(recs, kv{bodyKey(id), v})
			b, derr := decodeBody(v)
			if derr != nil {
				whole = false
			}
			bodySize = int64(len(b))
		}
	}
	if m != nil && bodySize != m.Size {
		whole = false
	}
	return recs, m, whole, nil
}

// salvageOrphans quarantines the recipient records of messages whose meta
// record could not be read at all: an operator may still learn from them
// who was not sent what.
func (s *Spool) salvageOrphans(old *pebble.DB, st *SalvageStats) error {
	seen := map[string]bool{}
	// Recipient records only: a body without its envelope cannot be
	// delivered, and bodies sit in large blocks whose damaged reads cost
	// seconds each (see readRange). They stay in the damaged store.
	for _, prefix := range []string{prefixRcpt} {
		var ops []op
		n, err := walk(old, []byte(prefix), prefixEnd(prefix), false, func(k, v []byte) error {
			rest := string(k[len(prefix):])
			id, _, _ := strings.Cut(rest, "/")
			if _, found, gerr := getCopy(old, metaKey(id)); gerr == nil && found {
				return nil // handled with its message
			}
			if !seen[id] {
				seen[id] = true
				st.Orphans++
			}
			ops = append(ops, op{key: append([]byte(prefixQuarantine), k...), val: [][]byte{bytes.Clone(v)}})
			if len(ops) >= recoverFlushOps {
				err := s.commit(ops, false)
				ops = nil
				return err
			}
			return nil
		})
		st.DamagedRanges += n
		if err != nil {
			return err
		}
		if len(ops) > 0 {
			if err := s.commit(ops, false); err != nil {
				return err
			}
		}
	}
	if st.Orphans > 0 {
		s.log.Warn("spool salvage: records of messages whose envelope is lost moved to quarantine", zap.Int("messages", st.Orphans))
	}
	return nil
}

// SalvageOwed returns the quarantined messages whose sender is owed a DSN
// (or, with no readable recipient pending, a damage notice) because
// Salvage could not copy them, as far as they can be read from quarantine:
// the envelope, and the recipients whose records are readable (in index
// order). Each is reported with SalvageDSNSent once its DSN is spooled.
func (s *Spool) SalvageOwed() ([]*Message, error) {
	var out []*Message
	err := s.withDB(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixSalvageDSN), UpperBound: prefixEnd(prefixSalvageDSN)})
		if err != nil {
			return err
		}
		var ids []string
		for ok := it.First(); ok; ok = it.Next() {
			ids = append(ids, string(it.Key()[len(prefixSalvageDSN):]))
		}
		if err := errors.Join(it.Error(), it.Close()); err != nil {
			return err
		}
		for _, id := range ids {
			m, err := readQuarantinedEnvelope(db, id)
			if err != nil {
				s.log.Warn("spool: quarantined message owed a DSN cannot be read", zap.String("id", id), errField(err))
				continue
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spool salvage owed: %w", err)
	}
	return out, nil
}

// readQuarantinedEnvelope reads the envelope of quarantined message id
// and the recipients whose records decode, for its DSN: unlike
// readQuarantined (quarantine.go), a message with some damaged records
// still has one.
func readQuarantinedEnvelope(db *pebble.DB, id string) (*Message, error) {
	v, found, err := getCopy(db, append([]byte(prefixQuarantine), metaKey(id)...))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, ErrNotFound
	}
	m, _, err := decodeMeta(v)
	if err != nil {
		return nil, err
	}
	m.ID = id
	p := append([]byte(prefixQuarantine), rcptPrefix(id)...)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return nil, err
	}
	for ok := it.First(); ok; ok = it.Next() {
		if r, derr := decodeRecipient(it.Value()); derr == nil {
			m.Recipients = append(m.Recipients, r)
		}
	}
	return m, errors.Join(it.Error(), it.Close())
}

// SalvageHead returns up to max bytes from the start of quarantined
// message id's body (its first body record), for the header block a damage
// notice quotes. It returns nil and no error when that record is missing
// or does not decode: the body is what may have been damaged, and a notice
// goes out without the headers then.
func (s *Spool) SalvageHead(id string, max int) ([]byte, error) {
	var head []byte
	err := s.withDB(func(db *pebble.DB) error {
		v, found, err := getCopy(db, quarantineKey(metaKey(id)))
		if err != nil || !found {
			return err
		}
		m, _, err := decodeMeta(v)
		if err != nil {
			return nil
		}
		key := quarantineKey(bodyKey(id))
		if m.chunks > 0 {
			key = quarantineKey(chunkKey(m.bodyID, 0))
		}
		v, found, err = getCopy(db, key)
		if err != nil || !found {
			return err
		}
		b, err := decodeBody(v)
		if err != nil {
			return nil
		}
		head = bytes.Clone(b[:min(len(b), max)])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spool salvage head %s: %w", id, err)
	}
	return head, nil
}

// SalvageDSNSent records that the DSN owed for quarantined message id has
// been spooled, so a restart does not send it again. Called after the
// DSN's own Put: a crash between the two syncs sends it twice, never not
// at all.
func (s *Spool) SalvageDSNSent(id string) error {
	if err := s.commit([]op{{key: append([]byte(prefixSalvageDSN), id...), del: true}}, false); err != nil {
		return fmt.Errorf("spool salvage dsn sent %s: %w", id, err)
	}
	return nil
}
