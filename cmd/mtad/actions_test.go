package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/scheduler"
)

// TestNotQueuedMapsRefusals: each scheduler refusal the admin API answers
// 4xx reaches it as the API's own error, so a reload racing an order is
// answered 400, not 500; other errors pass through unchanged.
func TestNotQueuedMapsRefusals(t *testing.T) {
	for _, c := range []struct{ in, want error }{
		{scheduler.ErrNotQueued, admin.ErrNotQueued},
		{scheduler.ErrUnknownBinding, admin.ErrUnknownBinding},
		{scheduler.ErrUnknownGroup, admin.ErrUnknownGroup},
		{scheduler.ErrBadSelector, admin.ErrBadSelector},
	} {
		_, err := notQueued(0, fmt.Errorf("scheduler: x: %w", c.in))
		if !errors.Is(err, c.want) || !errors.Is(err, c.in) {
			t.Errorf("notQueued(%v) = %v, want it to wrap %v too", c.in, err, c.want)
		}
	}
	other := errors.New("spool: fsync: no space left on device")
	if _, err := notQueued(0, other); err != other {
		t.Errorf("notQueued(%v) = %v, want it unchanged", other, err)
	}
}
