package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/scheduler"
	"github.com/mtad/mtad/internal/spool"
)

// adminActions adapts the scheduler to the admin API's Actions: the
// scheduler cancels, bounces, flushes and rebinds and logs each with who
// did it; the bindings answer which names exist.
type adminActions struct {
	s        *scheduler.Scheduler
	bindings *binding.Set
}

// The bounce and rebind endpoints are served only for an Actions that is
// a BounceRebinder too: make sure this one stays one.
var _ admin.BounceRebinder = adminActions{}

// selector is the scheduler's Selector for a checked order.
func selector(c admin.CancelOrder) scheduler.Selector {
	return scheduler.Selector{QueueID: c.QueueID, Domain: c.Domain, Binding: c.Binding, Sender: c.Sender}
}

// notQueued makes the scheduler's errors for an order it refuses the
// API's too: ErrNotQueued (404), and the unknown binding, unknown group
// and bad selector a reload racing the request brings (400).
func notQueued(n int, err error) (int, error) {
	for _, e := range [...][2]error{
		{scheduler.ErrNotQueued, admin.ErrNotQueued},
		{scheduler.ErrUnknownBinding, admin.ErrUnknownBinding},
		{scheduler.ErrUnknownGroup, admin.ErrUnknownGroup},
		{scheduler.ErrBadSelector, admin.ErrBadSelector},
	} {
		if errors.Is(err, e[0]) {
			return n, fmt.Errorf("%w: %w", e[1], err)
		}
	}
	return n, err
}

// Cancel is admin.Actions'.
func (a adminActions) Cancel(c admin.CancelOrder) (int, error) {
	return notQueued(a.s.Cancel(selector(c), c.Reason, c.By, c.DSN))
}

// Bounce is admin.Actions'.
func (a adminActions) Bounce(c admin.CancelOrder) (int, error) {
	return notQueued(a.s.Bounce(selector(c), c.Reason, c.By))
}

// Rebind is admin.Actions'.
func (a adminActions) Rebind(o admin.RebindOrder) (int, error) {
	return notQueued(a.s.Rebind(o.Domain, o.Binding, o.Group, o.Duration, o.By, o.Reason))
}

// Flush is admin.Actions'.
func (a adminActions) Flush(domain, b, by string) (int, error) {
	return notQueued(a.s.Flush(domain, b, by))
}

// HasBinding is admin.Actions'.
func (a adminActions) HasBinding(name string) bool { return a.bindings.ByName(name) != nil }

// HasGroup is admin.Actions'.
func (a adminActions) HasGroup(name string) bool {
	_, err := a.bindings.Pick(name, "")
	return name != "" && err == nil
}

// adminQuarantine adapts the spool's quarantine to the admin API: the
// spool reads it; the scheduler re-injects (restore and queue) and
// deletes, and logs each with who and why.
type adminQuarantine struct {
	sp *spool.Spool
	s  *scheduler.Scheduler
}

// quarantineErr makes the spool's errors the API's: not found (404),
// corrupt and live (409).
func quarantineErr(err error) error {
	switch {
	case errors.Is(err, spool.ErrLive):
		return fmt.Errorf("%w: %w", admin.ErrLive, err)
	case errors.Is(err, spool.ErrNotFound):
		return fmt.Errorf("%w: %w", admin.ErrNotFound, err)
	case errors.Is(err, spool.ErrCorrupt):
		return fmt.Errorf("%w: %w", admin.ErrUnreadable, err)
	}
	return err
}

func quarantinedOf(e spool.QuarantineEntry) admin.Quarantined {
	q := admin.Quarantined{QueueID: e.ID, Checked: e.Checked, Readable: e.Readable, Reason: e.Reason, MetaReadable: e.MetaReadable,
		Sender: e.Sender, Recipients: e.Recipients, Size: e.Size, Received: e.Received, MessageID: e.MessageID}
	for _, r := range e.Rcpts {
		q.Rcpts = append(q.Rcpts, admin.QuarantineRcpt{Address: r.Addr, State: r.State.String(), Attempts: r.Attempts})
	}
	return q
}

// List is admin.Quarantine's.
func (a adminQuarantine) List(limit int, after string) (admin.QuarantinedPage, error) {
	p, err := a.sp.QuarantineList(limit, after)
	if err != nil {
		return admin.QuarantinedPage{}, err
	}
	out := admin.QuarantinedPage{Items: make([]admin.Quarantined, 0, len(p.Items)), Next: p.Next}
	for _, e := range p.Items {
		out.Items = append(out.Items, quarantinedOf(e))
	}
	return out, nil
}

// Get is admin.Quarantine's.
func (a adminQuarantine) Get(id string) (admin.Quarantined, error) {
	e, err := a.sp.QuarantineGet(id)
	if err != nil {
		return admin.Quarantined{}, quarantineErr(err)
	}
	return quarantinedOf(e), nil
}

// Body is admin.Quarantine's.
func (a adminQuarantine) Body(id string) (io.ReadCloser, error) {
	rc, err := a.sp.QuarantineBody(id)
	return rc, quarantineErr(err)
}

// Reinject is admin.Quarantine's.
func (a adminQuarantine) Reinject(id, by, reason string) error {
	_, err := a.s.Reinject(id, by, reason)
	return quarantineErr(err)
}

// Delete is admin.Quarantine's.
func (a adminQuarantine) Delete(id, by, reason string) error {
	return quarantineErr(a.s.DeleteQuarantined(id, by, reason))
}
