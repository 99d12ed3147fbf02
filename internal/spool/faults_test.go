package spool

import (
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// faultFS fails the chosen file operations on pebble's WAL files with errno
// while its switch is on.
func faultFS(kinds []errorfs.OpKind, errno syscall.Errno) (vfs.FS, *errorfs.Toggle) {
	toggle := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		for _, k := range kinds {
			if op.Kind == k {
				return &os.PathError{Op: "injected", Path: op.Path, Err: errno}
			}
		}
		return nil
	})}
	return errorfs.Wrap(vfs.Default, toggle), toggle
}

var (
	walWrites = []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpCreate, errorfs.OpReuseForWrite, errorfs.OpFilePreallocate}
	walSyncs  = []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}
)

// TestWriteFailure: a failed WAL write or sync fails the Put with an error
// that says whether the disk is full, the spool neither crashes nor loses
// anything acknowledged before, refuses writes while the fault lasts, takes
// writes again once it is gone, and everything acknowledged is there after a
// reopen.
func TestWriteFailure(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		kinds   []errorfs.OpKind
		errno   syscall.Errno
		noSpace bool
	}{
		{"write ENOSPC", walWrites, syscall.ENOSPC, true},
		{"sync ENOSPC", walSyncs, syscall.ENOSPC, true},
		{"write EIO", walWrites, syscall.EIO, false},
		{"sync EIO", walSyncs, syscall.EIO, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			fs, toggle := faultFS(tc.kinds, tc.errno)
			s := openTest(t, dir, Options{FS: fs, ReopenInterval: -1})
			var acked []string
			for i := 0; i < 20; i++ {
				m := testMessage(i, 2)
				if err := s.Put(m, testBody(i, 5000)); err != nil {
					t.Fatal(err)
				}
				acked = append(acked, m.ID)
			}

			toggle.On()
			for try := 0; try < 3; try++ {
				err := s.Put(testMessage(100+try, 1), testBody(100, 5000))
				if err == nil {
					t.Fatalf("Put %d succeeded with the disk failing", try)
				}
				if got := errors.Is(err, ErrNoSpace); got != tc.noSpace {
					t.Fatalf("Put %d: errors.Is(ErrNoSpace) = %v: %v", try, got, err)
				}
				if got := errors.Is(err, syscall.ENOSPC); got != tc.noSpace {
					t.Fatalf("Put %d: errors.Is(ENOSPC) = %v: %v", try, got, err)
				}
			}
			if err := s.Update(acked[0], map[int]Recipient{0: {State: Delivered}}, false); err == nil {
				t.Fatal("Update succeeded with the disk failing")
			}
			// Reads go on.
			for _, id := range acked {
				if _, err := s.Get(id); err != nil {
					t.Fatalf("Get %s during the fault: %v", id, err)
				}
			}

			toggle.Off()
			m := testMessage(200, 1)
			if err := s.Put(m, testBody(200, 5000)); err != nil {
				t.Fatalf("Put after the fault cleared: %v", err)
			}
			acked = append(acked, m.ID)
			for _, id := range acked {
				if _, err := s.Body(id); err != nil {
					t.Fatalf("Body %s after the fault: %v", id, err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s = openTest(t, dir, Options{})
			found := map[string]bool{}
			if _, err := s.Recover(func(m *Message) error { found[m.ID] = true; return nil }); err != nil {
				t.Fatal(err)
			}
			for _, id := range acked {
				if !found[id] {
					t.Fatalf("acknowledged message %s lost", id)
				}
			}
		})
	}
}

// TestWriteFailureConcurrent: 64 writers put a message each, then another
// with the disk failing, then another after it recovered. Every Put with the
// disk failing gets ErrNoSpace, nothing crashes or hangs, the spool takes
// writes again afterwards, and every acknowledged message survives a reopen.
func TestWriteFailureConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fs, toggle := faultFS(slices.Concat(walWrites, walSyncs), syscall.ENOSPC)
	s := openTest(t, dir, Options{FS: fs, ReopenInterval: -1})
	// Little enough data that pebble's first memtable (256 KiB) never fills:
	// a WAL failure during a memtable rotation kills the process (see the
	// package comment), which a test cannot survive.
	const writers, size = 64, 800
	var (
		mu    sync.Mutex
		acked []string
	)
	phase := func(name string, wantFail bool) {
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := testMessage(w, 1)
				err := s.Put(m, testBody(w, size))
				switch {
				case wantFail && !errors.Is(err, ErrNoSpace):
					t.Errorf("%s: Put: %v, want ErrNoSpace", name, err)
				case !wantFail && err != nil:
					t.Errorf("%s: Put: %v", name, err)
				case err == nil:
					mu.Lock()
					acked = append(acked, m.ID)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	phase("before", false)
	toggle.On()
	phase("failing", true)
	toggle.Off()
	phase("after", false)
	if t.Failed() {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir, Options{})
	found := map[string]bool{}
	if _, err := s.Recover(func(m *Message) error { found[m.ID] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, id := range acked {
		if !found[id] {
			t.Fatalf("acknowledged message %s lost", id)
		}
	}
	if len(acked) != 2*writers {
		t.Fatalf("%d acknowledged, want %d", len(acked), 2*writers)
	}
}

// TestUnavailableBetweenReopens: after a failure, writes are refused with
// ErrUnavailable (still carrying the cause) without touching the disk until
// ReopenInterval has passed.
func TestUnavailableBetweenReopens(t *testing.T) {
	t.Parallel()
	fs, toggle := faultFS(walSyncs, syscall.ENOSPC)
	s := openTest(t, "", Options{FS: fs, ReopenInterval: time.Hour})
	m := testMessage(1, 1)
	if err := s.Put(m, []byte("body")); err != nil {
		t.Fatal(err)
	}
	toggle.On()
	if err := s.Put(testMessage(2, 1), []byte("body")); !errors.Is(err, ErrNoSpace) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("first failing Put: %v", err)
	}
	toggle.Off()
	for _, err := range []error{
		s.Put(testMessage(3, 1), []byte("body")),
		s.Update(m.ID, map[int]Recipient{0: {State: Delivered}}, false),
		s.Delete(m.ID),
	} {
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrNoSpace) {
			t.Fatalf("write while broken: %v, want ErrUnavailable and ErrNoSpace", err)
		}
	}
	if _, err := s.Get(m.ID); err != nil {
		t.Fatalf("Get while broken: %v", err)
	}
}

// TestLowSpaceRefusesPutsOnly: below MinFreeBytes (here: more than any disk
// has) Put fails with ErrNoSpace before pebble sees the disk fill, while
// Update and Delete, which let deliveries free space, still work.
func TestLowSpaceRefusesPutsOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	m := testMessage(1, 2)
	if err := s.Put(m, []byte("body")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, Options{MinFreeBytes: 1 << 62})
	err := s.Put(testMessage(2, 1), []byte("body"))
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put with the disk below reserve: %v", err)
	}
	if err := s.Update(m.ID, map[int]Recipient{0: {State: Delivered}}, false); err != nil {
		t.Fatalf("Update with the disk below reserve: %v", err)
	}
	if err := s.Delete(m.ID); err != nil {
		t.Fatalf("Delete with the disk below reserve: %v", err)
	}
}
