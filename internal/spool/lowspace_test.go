package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// lowSpaceLines returns the messages of the low-space state changes logged.
func lowSpaceLines(logs *observer.ObservedLogs) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel && e.ContextMap()["min_free_bytes"] != nil {
			out = append(out, e)
		}
	}
	return out
}

// TestLowSpaceState: with a reserve larger than any disk, LowSpace is true
// from Open on, Open logs it once as a warning naming spool.min_free, the
// free bytes and the reserve, and refused Puts add no line; with the
// default reserve (on a disk with room) or the check off, it is false and
// nothing is logged.
func TestLowSpaceState(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	s := openTest(t, "", Options{MinFreeBytes: 1 << 62, Logger: zap.New(core)})
	if !s.LowSpace() {
		t.Fatal("LowSpace false with a reserve above the free space")
	}
	if s.MinFree() != 1<<62 {
		t.Errorf("MinFree %d", s.MinFree())
	}
	for i := range 5 {
		if err := s.Put(testMessage(i, 1), []byte("body")); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Put %d below the reserve: %v", i, err)
		}
		if !s.LowSpace() {
			t.Fatalf("LowSpace false after refused Put %d", i)
		}
	}
	lines := lowSpaceLines(logs)
	if len(lines) != 1 {
		t.Fatalf("%d low-space lines, want 1: %v", len(lines), lines)
	}
	if e := lines[0]; e.Level != zapcore.WarnLevel || !strings.Contains(e.Message, "spool.min_free") ||
		e.ContextMap()["min_free_bytes"] != int64(1<<62) || e.ContextMap()["free_bytes"] == nil {
		t.Errorf("low-space line %q %v", e.Message, e.ContextMap())
	}
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel {
			t.Errorf("error line for a refusal for space: %q", e.Message)
		}
	}

	for _, o := range []Options{{}, {MinFreeBytes: -1}} {
		core, logs := observer.New(zap.DebugLevel)
		o.Logger = zap.New(core)
		s := openTest(t, "", o)
		if s.LowSpace() {
			t.Errorf("LowSpace true with MinFreeBytes %d", o.MinFreeBytes)
		}
		if err := s.Put(testMessage(9, 1), []byte("body")); err != nil {
			t.Errorf("Put with MinFreeBytes %d: %v", o.MinFreeBytes, err)
		}
		if n := len(lowSpaceLines(logs)); n != 0 {
			t.Errorf("%d low-space lines with MinFreeBytes %d", n, o.MinFreeBytes)
		}
	}
}

// TestLowSpaceComesBack, on a real tmpfs: a spool opened with its disk
// below the reserve reports LowSpace and refuses Puts; once a file is
// deleted LowSpace turns false at its next call and the next Put is
// taken, and the two changes are logged once each.
func TestLowSpaceComesBack(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("tmpfs: Linux only")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", 64<<20)); err != nil {
		t.Skipf("mount tmpfs not permitted (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	// 44 MiB of filler leaves about 20 MiB, under the 24 MiB reserve;
	// deleting it leaves about 64 MiB less the empty store.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 44<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	s := openTest(t, filepath.Join(dir, "spool"), Options{MemTableSize: 2 << 20, CacheSize: 2 << 20,
		MinFreeBytes: 24 << 20, Logger: zap.New(core)})
	if !s.LowSpace() {
		t.Fatal("LowSpace false below the reserve")
	}
	if err := s.Put(testMessage(1, 1), []byte("body")); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put below the reserve: %v", err)
	}
	// Back above the reserve but within its margin (a tenth): Puts are
	// taken, yet the state holds, so it does not flap at the reserve.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	filler = filepath.Join(dir, "filler2")
	if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-(24<<20+1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	if !s.LowSpace() {
		t.Error("LowSpace false 1 MiB above a 24 MiB reserve: no margin")
	}
	if err := s.Put(testMessage(3, 1), []byte("body")); err != nil {
		t.Fatalf("Put above the reserve, within the margin: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// While low, LowSpace checks at every call: the first after the
	// space returned says so, with no Put in between.
	if s.LowSpace() {
		t.Error("LowSpace still true after space returned")
	}
	if err := s.Put(testMessage(2, 1), []byte("body")); err != nil {
		t.Fatalf("Put after space returned: %v", err)
	}
	lines := lowSpaceLines(logs)
	if len(lines) != 2 || !strings.Contains(lines[0].Message, "below the reserve") || !strings.Contains(lines[1].Message, "back above") {
		t.Fatalf("low-space lines %v, want one going below and one coming back", lines)
	}
}
