package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/spool"
)

// TestQuarantineErr: each spool error an operator can cause is mapped to
// the admin error its HTTP status comes from (404, 409); others stay as
// they are (500).
func TestQuarantineErr(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want error // nil: none of the admin errors
	}{
		{fmt.Errorf("spool quarantine 01A: %w", spool.ErrNotFound), admin.ErrNotFound},
		{fmt.Errorf("spool quarantine 01A restore: %w: x", spool.ErrCorrupt), admin.ErrUnreadable},
		{fmt.Errorf("scheduler: reinject: %w", fmt.Errorf("spool quarantine 01A restore: %w: a live message", spool.ErrLive)), admin.ErrLive},
		{errors.New("disk on fire"), nil},
	} {
		got := quarantineErr(c.err)
		for _, e := range []error{admin.ErrNotFound, admin.ErrUnreadable, admin.ErrLive} {
			if errors.Is(got, e) != (e == c.want) {
				t.Errorf("quarantineErr(%v) = %v: matches %v %t, want %t", c.err, got, e, errors.Is(got, e), e == c.want)
			}
		}
		if !errors.Is(got, c.err) {
			t.Errorf("quarantineErr(%v) = %v lost the cause", c.err, got)
		}
	}
}
