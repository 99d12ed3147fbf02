package crash

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The salvage round (issue 12 point 2, "a salvage"): with the daemon
// stopped, its spool's memtable is flushed to a table and the table is
// damaged where the recipient records are (the last literal "@ok.test"
// in the file: r/ is the last keyspace with data, and start-up recovery
// reads it, so the damage is met at start). The daemon then starts,
// salvages, and is SIGKILLed while the salvage is under way (the
// spool's "salvaging" marker exists); the next start must resume the
// salvage, complete it and become ready.

// flushSpool writes the stopped spool's memtable (replayed from its WAL)
// to a table, so there is a table to damage: the runs before leave their
// mail in the WAL only.
func flushSpool(t *testing.T, spoolDir string) {
	t.Helper()
	db, err := pebble.Open(filepath.Join(spoolDir, "db"), &pebble.Options{FormatMajorVersion: pebble.FormatNewest, Logger: quiet{}})
	if err != nil {
		t.Fatalf("open the spool to flush it: %v", err)
	}
	if err := errors.Join(db.Flush(), db.Close()); err != nil {
		t.Fatalf("flush the spool: %v", err)
	}
}

// damageRecipients smears 64 bytes over the recipient records of the
// spool's largest table, as internal/spool's salvage tests do, and
// returns the table's name and offset.
func damageRecipients(t *testing.T, spoolDir string) (string, int64) {
	t.Helper()
	tables, err := filepath.Glob(filepath.Join(spoolDir, "db", "*.sst"))
	if err != nil || len(tables) == 0 {
		t.Fatalf("no table in the spool after the flush (%v)", err)
	}
	var table string
	var raw []byte
	for _, tb := range tables {
		b, err := os.ReadFile(tb)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > len(raw) {
			table, raw = tb, b
		}
	}
	at := bytes.LastIndex(raw, []byte("@ok.test"))
	if at < 0 {
		t.Fatalf("no recipient in %s (%d bytes): nothing queued to damage", table, len(raw))
	}
	off := int64(max(0, at-32))
	f, err := os.OpenFile(table, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), off); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(table), off
}

// salvageRound damages the stopped spool, starts the daemon and kills it
// while it salvages, then starts it again and waits for the resumed
// salvage to complete (a spool_salvaged record, the marker gone, ready).
// It returns the kill and the completed salvage's record.
func salvageRound(t *testing.T, e *env) (kill, map[string]any) {
	t.Helper()
	spoolDir := filepath.Join(e.dir, "spool")
	marker := filepath.Join(spoolDir, "salvaging")
	flushSpool(t, spoolDir)
	table, off := damageRecipients(t, spoolDir)

	k := kill{kind: killSalvage}
	d := launch(t, e)
	// Poll for the marker (a file: no event to wait on), bounded; the
	// kill must land before the salvage removes it.
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(marker); err == nil {
			d.kill()
			k.at = time.Now()
			break
		}
		if d.scanReady() || time.Now().After(deadline) {
			d.kill()
			k.at = time.Now()
			break
		}
		select {
		case <-d.done:
			t.Fatalf("mtad exited on a damaged spool (%v): %s\nlog:\n%s", d.cmd.ProcessState, d.out.String(), tail(d.logPath, 20))
		case <-time.After(200 * time.Microsecond):
		}
	}
	_, err := os.Stat(marker)
	k.fired = err == nil // the salvage was cut short
	k.detail = fmt.Sprintf("%s damaged at %d; salvage cut short: %v", table, off, k.fired)

	// The next start resumes the salvage, or (the kill came too late) finds
	// a complete fresh store; either way it gets ready.
	d2 := launch(t, e)
	d2.waitReady(2 * time.Minute)
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("salvage marker still there after a ready start")
	}
	rec := logRecord(t, d2.logPath, "spool_salvaged")
	if k.fired && rec == nil {
		t.Errorf("salvage cut short, yet the next start logged no spool_salvaged record; log:\n%s", tail(d2.logPath, 20))
	}
	if rec == nil {
		rec = logRecord(t, d.logPath, "spool_salvaged")
	}
	d2.stop(time.Minute)
	return k, rec
}

// logRecord is the first record of event ev in the log at path, nil when
// none.
func logRecord(t *testing.T, path, ev string) map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r map[string]any
		if json.Unmarshal(sc.Bytes(), &r) == nil && r["event"] == ev {
			return r
		}
	}
	return nil
}

// queueIDs maps the Message-IDs of the messages the daemon received to
// their queue ids, from the "received" records of every run's log.
func queueIDs(t *testing.T, dir string) map[string]string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "mtad-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, name := range logs {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r map[string]any
			if json.Unmarshal(sc.Bytes(), &r) != nil || r["event"] != "received" {
				continue
			}
			mid, _ := r["message_id"].(string)
			qid, _ := r["queue_id"].(string)
			ids[strings.Trim(mid, "<>")] = qid
		}
		f.Close()
	}
	return ids
}

// inDamage reports which of the queue ids have an unreadable meta record
// (envelope) in the damaged store (the salvage's damaged-*/db), and which
// a readable meta but an unreadable recipient record. Only the first may
// be lost to the damage in silence: the second are owed a notice.
func inDamage(t *testing.T, spoolDir string, qids []string) (envelope, rcpts map[string]bool) {
	t.Helper()
	envelope, rcpts = map[string]bool{}, map[string]bool{}
	if len(qids) == 0 {
		return envelope, rcpts
	}
	dirs, err := filepath.Glob(filepath.Join(spoolDir, "damaged-*", "db"))
	if err != nil || len(dirs) == 0 {
		t.Errorf("no damaged store kept in %s (%v)", spoolDir, err)
		return envelope, rcpts
	}
	for _, dbDir := range dirs {
		// pebble's default event listener makes a data corruption fatal
		// (os.Exit): the reads below are meant to meet it.
		db, err := pebble.Open(dbDir, &pebble.Options{ReadOnly: true, FormatMajorVersion: pebble.FormatNewest,
			Logger: quiet{}, EventListener: &pebble.EventListener{DataCorruption: func(pebble.DataCorruptionInfo) {}}})
		if err != nil {
			t.Errorf("open the damaged store %s: %v", dbDir, err)
			continue
		}
		for _, q := range qids {
			if _, c, err := db.Get([]byte("m/" + q)); err == nil {
				_ = c.Close()
			} else if !errors.Is(err, pebble.ErrNotFound) {
				envelope[q] = true
				continue
			}
			lo := []byte("r/" + q + "/")
			it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: []byte("r/" + q + "0")})
			if err != nil {
				rcpts[q] = true
				continue
			}
			for ok := it.First(); ok; ok = it.Next() {
				if _, err := it.ValueAndErr(); err != nil {
					break
				}
			}
			if it.Error() != nil {
				rcpts[q] = true
			}
			_ = it.Close()
		}
		_ = db.Close()
	}
	return envelope, rcpts
}

// noticeSubject is the Subject of a salvage's damage notice, sent for a
// message whose envelope reads and whose recipients do not; it names the
// message's queue id in X-Mtad-Queue-ID and, when its body's start reads,
// quotes its Message-ID.
const noticeSubject = "Undelivered Mail: damaged in the spool"

func isNotice(data []byte) bool {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	return err == nil && m.Header.Get("Subject") == noticeSubject && m.Header.Get("Auto-Submitted") == "auto-replied"
}

func noticeQID(data []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(m.Header.Get("X-Mtad-Queue-ID"))
}

// damagedFor matches a DSN for a message a salvage quarantined (5.3.0):
// it carries no header of the original, whose body may be damaged, so the
// message is known by its recipient, u<N> or bad<N>.
var (
	damagedStatus = regexp.MustCompile(`(?m)^Status: 5\.3\.0`)
	damagedRcpt   = regexp.MustCompile(`(?mi)^Final-Recipient: rfc822;\s*(?:u|bad)(\d+)@ok\.test`)
)

// damagedMsgs returns the message numbers a 5.3.0 DSN names.
func damagedMsgs(data []byte) []int {
	if !damagedStatus.Match(data) {
		return nil
	}
	var out []int
	for _, m := range damagedRcpt.FindAllSubmatch(data, -1) {
		if n, err := strconv.Atoi(string(m[1])); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// quiet is a pebble logger that drops its lines (the harness's own reads
// of a store it damaged on purpose); Fatalf does not exit the test.
type quiet struct{}

func (quiet) Infof(string, ...any)  {}
func (quiet) Errorf(string, ...any) {}
func (quiet) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble fatal: "+format, args...))
}
