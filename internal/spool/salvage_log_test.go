package spool

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A salvage's log lines carry errors as their message, one line each:
// cockroachdb/errors' %+v (through zap's errorVerbose or pebble's format
// strings) put ~5 KB stack traces into the JSON fields.
func TestSalvageLogsNoStacks(t *testing.T) {
	t.Parallel()
	f := writeFlushed(t, 300)
	table := largestTable(t, f.dir)
	fi, err := os.Stat(table)
	if err != nil {
		t.Fatal(err)
	}
	corruptAt(t, table, fi.Size()/2)
	cause := openOrRecover(t, f.dir)
	if !IsDamage(cause) {
		t.Fatalf("open+recover of a damaged table: %v, want a damage error", cause)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	s, _, err := Salvage(f.dir, Options{MemTableSize: 4 << 20, CacheSize: 4 << 20, Logger: zap.New(core)}, cause)
	if err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if logs.Len() == 0 {
		t.Fatal("a salvage logged nothing")
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + strings.TrimSpace(toString(v))
		}
		if _, ok := e.ContextMap()["errorVerbose"]; ok || strings.Contains(line, "\n") || strings.Contains(line, ".go:") || len(line) > 1500 {
			t.Errorf("log line with a stack or over 1500 bytes (%d): %.600s", len(line), line)
		}
	}
}

func toString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case error:
		return v.Error()
	}
	return fmt.Sprint(v)
}

func TestErrLine(t *testing.T) {
	t.Parallel()
	cause := errors.New("pebble: file 000006: block 44735/644: crc32c checksum mismatch")
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{cause, cause.Error()},
		{fmt.Errorf("spool recover: read X: %w", errors.Join(cause, errors.New("<corruption detail carrier>"))),
			"spool recover: read X: " + cause.Error()},
		{errors.Join(cause, cause, errors.New("second")), cause.Error() + "; second"},
	} {
		if got := ErrLine(tt.err); got != tt.want {
			t.Errorf("ErrLine(%q) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
