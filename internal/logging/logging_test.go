package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe to read while a logger writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// decodeLines parses one JSON object per line.
func decodeLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func keys(m map[string]any) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

func TestRecordsAsJSON(t *testing.T) {
	t.Parallel()
	received := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	common := []string{"level", "msg", "ts"}
	tests := []struct {
		name string
		log  func(*zap.Logger)
		want map[string]any // every non-common key, with its value
	}{
		{"received", Received{
			QueueID: "01JQ", MessageID: "<a@b>", Sender: "s@x.org", Recipients: []string{"a@y.org", "b@z.org"},
			Size: 1234, ClientIP: "127.0.0.1", AuthUser: "app",
		}.Log, map[string]any{
			"event": "received", "queue_id": "01JQ", "message_id": "<a@b>", "sender": "s@x.org",
			"recipients": []any{"a@y.org", "b@z.org"}, "size": 1234.0, "client_ip": "127.0.0.1", "auth_user": "app",
		}},
		{"rejected", Rejected{ClientIP: "::1", Command: "RCPT", Code: 550, Enhanced: "5.7.1", Reply: "relaying denied"}.Log,
			map[string]any{
				"event": "rejected", "client_ip": "::1", "command": "RCPT", "code": 550.0,
				"enhanced_code": "5.7.1", "response": "relaying denied",
			}},
		{"delivered", Delivered(Delivery{
			QueueID: "01JQ", Recipient: "a@y.org", Domain: "y.org", Binding: "mta1", MX: "mx.y.org",
			RemoteIP: "127.0.0.9", Phase: "data", Code: 250, Enhanced: "2.0.0", Response: "ok", Attempt: 1,
			Delay: 1500 * time.Millisecond,
		}).Log, map[string]any{
			"event": "delivered", "queue_id": "01JQ", "recipient": "a@y.org", "domain": "y.org", "binding": "mta1",
			"mx": "mx.y.org", "remote_ip": "127.0.0.9", "phase": "data", "code": 250.0, "enhanced_code": "2.0.0",
			"response": "ok", "attempt": 1.0, "delay": 1.5,
		}},
		{"deferred", Deferred(Delivery{
			QueueID: "01JQ", Recipient: "a@y.org", Domain: "y.org", Binding: "mta1", Phase: "connect",
			Response: "connection refused", Attempt: 2, Delay: time.Minute, NextAttempt: received, BounceClass: 70,
		}).Log, map[string]any{
			"event": "deferred", "queue_id": "01JQ", "recipient": "a@y.org", "domain": "y.org", "binding": "mta1",
			"mx": "", "remote_ip": "", "phase": "connect", "code": 0.0, "enhanced_code": "",
			"response": "connection refused", "attempt": 2.0, "delay": 60.0, "next_attempt": "2026-03-04T05:06:07.000Z",
			"bounce_class": 70.0,
		}},
		{"bounced", Bounced(Delivery{QueueID: "q", Recipient: "r@d", Domain: "d", Code: 550, Enhanced: "5.1.1", Response: "no such user", Attempt: 1, BounceClass: 10}).Log,
			map[string]any{
				"event": "bounced", "queue_id": "q", "recipient": "r@d", "domain": "d", "binding": "", "mx": "",
				"remote_ip": "", "phase": "", "code": 550.0, "enhanced_code": "5.1.1", "response": "no such user",
				"attempt": 1.0, "delay": 0.0, "bounce_class": 10.0,
			}},
		{"expired", Expired(Delivery{QueueID: "q", Recipient: "r@d", Domain: "d", Attempt: 9, Delay: 120 * time.Hour, BounceClass: 24}).Log,
			map[string]any{
				"event": "expired", "queue_id": "q", "recipient": "r@d", "domain": "d", "binding": "", "mx": "",
				"remote_ip": "", "phase": "", "code": 0.0, "enhanced_code": "", "response": "", "attempt": 9.0,
				"delay": 432000.0, "bounce_class": 24.0,
			}},
		{"cancelled", Cancelled(Delivery{QueueID: "q", Recipient: "r@d", Domain: "d"}).Log,
			map[string]any{
				"event": "cancelled", "queue_id": "q", "recipient": "r@d", "domain": "d", "binding": "", "mx": "",
				"remote_ip": "", "phase": "", "code": 0.0, "enhanced_code": "", "response": "", "attempt": 0.0,
				"delay": 0.0,
			}},
		{"connection", Connection{Domain: "y.org", Binding: "mta1", MX: "mx.y.org", RemoteIP: "127.0.0.9", FD: -3, ConnErr: "connection refused"}.Log,
			map[string]any{
				"event": "connection", "domain": "y.org", "binding": "mta1", "mx": "mx.y.org",
				"remote_ip": "127.0.0.9", "fd": -3.0, "conn_err": "connection refused",
			}},
		{"spool_recovered", SpoolRecovered{Messages: 3, Recipients: 5, Quarantined: 0}.Log,
			map[string]any{"event": "spool_recovered", "messages": 3.0, "recipients": 5.0, "quarantined": 0.0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf syncBuffer
			l, err := NewWriter(Options{}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			tt.log(l)
			recs := decodeLines(t, buf.String())
			if len(recs) != 1 {
				t.Fatalf("got %d records, want 1: %s", len(recs), buf.String())
			}
			rec := recs[0]
			if rec["msg"] != tt.want["event"] || rec["level"] != "info" {
				t.Errorf("msg %v level %v, want msg = event and level info", rec["msg"], rec["level"])
			}
			if _, err := time.Parse("2006-01-02T15:04:05.000Z0700", rec["ts"].(string)); err != nil {
				t.Errorf("ts %v is not ISO8601: %v", rec["ts"], err)
			}
			for _, k := range common {
				delete(rec, k)
			}
			if !reflect.DeepEqual(rec, tt.want) {
				t.Errorf("record keys %v\n got %v\nwant %v", keys(rec), rec, tt.want)
			}
		})
	}
}

// Records use typed fields only: zap.Any would reflect on every entry.
func TestNoReflectionFields(t *testing.T) {
	t.Parallel()
	all := [][]zap.Field{
		Received{Recipients: []string{"a"}}.Fields(),
		Rejected{}.Fields(),
		Deferred(Delivery{NextAttempt: time.Now(), BounceClass: 70}).Fields(),
		Connection{}.Fields(),
		SpoolRecovered{}.Fields(),
	}
	for _, fields := range all {
		if fields[0].Key != "event" {
			t.Errorf("first field %q, want event", fields[0].Key)
		}
		for _, f := range fields {
			if f.Type == zapcore.ReflectType || f.Type == zapcore.UnknownType {
				t.Errorf("field %q uses reflection", f.Key)
			}
		}
	}
}

func TestLevels(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	l, err := NewWriter(Options{Level: "warn"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	Delivered(Delivery{QueueID: "q"}).Log(l)           // info: dropped
	SpoolRecovered{Messages: 1}.Log(l)                 // info: dropped
	SpoolRecovered{Messages: 1, Quarantined: 2}.Log(l) // warn: kept
	l.Debug("noise")
	recs := decodeLines(t, buf.String())
	if len(recs) != 1 || recs[0]["event"] != "spool_recovered" || recs[0]["level"] != "warn" {
		t.Fatalf("records %v, want only the quarantine warning", recs)
	}

	// An unset Delivery.Event is still logged, visibly.
	var buf2 syncBuffer
	l2, _ := NewWriter(Options{Level: "debug"}, &buf2)
	Delivery{QueueID: "q"}.Log(l2)
	l2.Debug("shown")
	recs = decodeLines(t, buf2.String())
	if len(recs) != 2 || recs[0]["event"] != "delivery" || recs[1]["msg"] != "shown" {
		t.Fatalf("records %v", recs)
	}
}

func TestBadOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{Level: "loud"}, {Format: "xml"}} {
		if _, err := NewWriter(o, io.Discard); err == nil {
			t.Errorf("NewWriter(%+v) = nil error", o)
		}
	}
	if _, err := New(Options{File: filepath.Join(t.TempDir(), "no", "such", "dir", "log")}); err == nil ||
		!strings.Contains(err.Error(), "open log file") {
		t.Errorf("New with a bad file = %v", err)
	}
	if l, err := New(Options{}); err != nil || l == nil {
		t.Errorf("New(stdout) = %v, %v", l, err)
	}
}

func TestFileOutput(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mtad.log")
	for i := range 2 { // the second open appends
		l, out, err := Open(Options{File: path})
		if err != nil {
			t.Fatal(err)
		}
		Received{QueueID: []string{"first", "second"}[i]}.Log(l)
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs := decodeLines(t, string(data))
	if len(recs) != 2 || recs[0]["queue_id"] != "first" || recs[1]["queue_id"] != "second" {
		t.Fatalf("file holds %v", recs)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		t.Errorf("log file mode %v is world-accessible", perm)
	}
}

func TestConsoleFormat(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	l, err := NewWriter(Options{Format: "console"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	Delivered(Delivery{QueueID: "01JQ", Delay: 2 * time.Second}).Log(l)
	out := buf.String()
	for _, want := range []string{"INFO", "delivered", `"queue_id": "01JQ"`, `"delay": "2s"`} {
		if !strings.Contains(out, want) {
			t.Errorf("console output %q lacks %q", out, want)
		}
	}
}

func BenchmarkDeliveryLog(b *testing.B) {
	l, err := NewWriter(Options{}, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	d := Delivered(Delivery{
		QueueID: "01JQ", Recipient: "a@y.org", Domain: "y.org", Binding: "mta1", MX: "mx.y.org",
		RemoteIP: "127.0.0.9", Code: 250, Enhanced: "2.0.0", Response: "ok", Attempt: 1, Delay: time.Second,
	})
	b.ReportAllocs()
	for b.Loop() {
		d.Log(l)
	}
}

// A salvage's record is one error-level line carrying every count,
// including the quarantine that was there before the damage.
func TestSpoolSalvagedRecord(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	l, err := NewWriter(Options{}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	SpoolSalvaged{Copied: 42, Quarantined: 4, DSNOwed: 3, NoticeOwed: 1, Orphans: 1, KeptQuarantined: 5, KeptDSNOwed: 2,
		DamagedRanges: 6, DamagedDir: "/s/damaged-x", Cause: "checksum"}.Log(l)
	recs := decodeLines(t, buf.String())
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1: %s", len(recs), buf.String())
	}
	rec := recs[0]
	if rec["level"] != "error" {
		t.Errorf("level %v, want error", rec["level"])
	}
	for _, k := range []string{"level", "msg", "ts"} {
		delete(rec, k)
	}
	want := map[string]any{"event": "spool_salvaged", "copied": 42.0, "quarantined": 4.0, "dsn_owed": 3.0, "notice_owed": 1.0,
		"unreadable_envelopes": 1.0, "kept_quarantined": 5.0, "kept_dsn_owed": 2.0, "damaged_ranges": 6.0,
		"damaged_dir": "/s/damaged-x", "cause": "checksum"}
	if !reflect.DeepEqual(rec, want) {
		t.Errorf("record\n got %v\nwant %v", rec, want)
	}
}
