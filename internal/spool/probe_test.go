package spool

import (
	"context"
	"errors"
	"testing"
)

// TestProbe: a probe commits on a working spool and leaves nothing behind
// for Recover; it fails like a Put when the disk is low, and after Close.
func TestProbe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	if err := s.Probe(context.Background()); err != nil {
		t.Fatalf("probe of an open spool: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("probe of a closed spool: %v, want ErrClosed", err)
	}

	s = openTest(t, dir, Options{})
	st, err := s.Recover(func(*Message) error { return nil })
	if err != nil || st.Messages != 0 || st.Quarantined != 0 {
		t.Fatalf("recover after probes: %+v, %v; want nothing", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	low := openTest(t, dir, Options{MinFreeBytes: 1 << 62})
	if err := low.Probe(context.Background()); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("probe below MinFreeBytes: %v, want ErrNoSpace", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A probe whose caller has given up: either it was taken and
	// answered, or it names the context's error.
	if err := low.Probe(ctx); !errors.Is(err, context.Canceled) && !errors.Is(err, ErrNoSpace) {
		t.Fatalf("probe with a cancelled context: %v", err)
	}
}
