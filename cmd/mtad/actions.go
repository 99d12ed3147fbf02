package main

import (
	"errors"
	"fmt"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/scheduler"
)

// adminActions adapts the scheduler to the admin API's Actions: the
// scheduler cancels and flushes and logs each with who did it; the
// bindings answer which names exist.
type adminActions struct {
	s        *scheduler.Scheduler
	bindings *binding.Set
}

// Cancel is admin.Actions'.
func (a adminActions) Cancel(c admin.CancelOrder) (int, error) {
	n, err := a.s.Cancel(scheduler.Selector{QueueID: c.QueueID, Domain: c.Domain, Sender: c.Sender}, c.Reason, c.By, c.DSN)
	if errors.Is(err, scheduler.ErrNotQueued) {
		return n, fmt.Errorf("%w: %w", admin.ErrNotQueued, err)
	}
	return n, err
}

// Flush is admin.Actions'.
func (a adminActions) Flush(domain, b, by string) (int, error) { return a.s.Flush(domain, b, by) }

// HasBinding is admin.Actions'.
func (a adminActions) HasBinding(name string) bool { return a.bindings.ByName(name) != nil }
