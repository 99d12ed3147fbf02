package scheduler

// An operator's actions on queued mail: cancel (end recipients now, by
// queue id, domain or sender) and flush (retry delayed deliveries now).
// The decision of what a cancel ends is the Selector's match; applying it
// (spool, log, metrics, DSN) follows the order settle keeps: spool first,
// log second.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// Selector names the queued mail a Cancel ends: exactly one field is set.
// QueueID and Sender end whole messages; Domain ends only the recipients
// at that domain, and the messages' other recipients go on.
type Selector struct {
	QueueID string
	Domain  string // any case; compared in mx.Canonical form
	Sender  string // the envelope sender, compared without case; the null sender cannot be chosen
}

// ErrBadSelector is wrapped by Cancel's error for a Selector without
// exactly one field set, or with a domain that is not one.
var ErrBadSelector = errors.New("bad selector")

// ErrNotQueued is wrapped by Cancel's error for a queue id the scheduler
// does not hold (never queued, or already ended).
var ErrNotQueued = errors.New("not queued")

// ErrUnknownBinding is wrapped by Flush's error for a binding name the
// configuration does not have.
var ErrUnknownBinding = errors.New("unknown binding")

// cancelEnhanced is the status a cancelled recipient's DSN reports: a
// permanent failure decided here, with no remote reply behind it.
const cancelEnhanced = "5.0.0"

// matcher turns a checked Selector into the match on a queued delivery.
func (sel Selector) matcher() (func(*queue.Delivery) bool, error) {
	set := 0
	for _, v := range []string{sel.QueueID, sel.Domain, sel.Sender} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, fmt.Errorf("scheduler: cancel: %w: set exactly one of queue id, domain and sender (%d set)", ErrBadSelector, set)
	}
	switch {
	case sel.QueueID != "":
		id := sel.QueueID
		return func(d *queue.Delivery) bool { return d.MsgID == id }, nil
	case sel.Domain != "":
		dom, err := mx.Canonical(sel.Domain)
		if err != nil {
			return nil, fmt.Errorf("scheduler: cancel: %w: domain %q: %v", ErrBadSelector, sel.Domain, err)
		}
		return func(d *queue.Delivery) bool { return d.Domain == dom }, nil
	}
	snd := sel.Sender
	return func(d *queue.Delivery) bool { return d.Sender != "" && strings.EqualFold(d.Sender, snd) }, nil
}

// Cancel ends the queued recipients sel chooses: each one's state becomes
// cancelled in the spool, gets one `cancelled` log record carrying reason
// and who, and is counted as mtad_recipients_total{event="cancelled"}. A
// message left with no pending recipient leaves the spool (a whole
// message does when chosen by queue id or sender), after a DSN that
// reports the cancelled recipients as failed when dsn is true, the sender
// is not null and their NOTIFY asks for failures. It returns how many
// recipients it cancelled.
//
// A delivery a session holds in flight is not in a queue and is not
// cancelled by a domain; a whole message's deletion drops it when the
// session opens the body (Result's spool.ErrNotFound), or the remote side
// may already have it. A message still in the intake, not yet submitted,
// is not seen. A queue id the scheduler does not hold is ErrNotQueued.
func (s *Scheduler) Cancel(sel Selector, reason, who string, dsn bool) (int, error) {
	match, err := sel.matcher()
	if err != nil {
		return 0, err
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return 0, errors.New("scheduler: cancel: a reason is required")
	}
	if sel.QueueID != "" {
		s.mu.Lock()
		_, ok := s.msgs[sel.QueueID]
		s.mu.Unlock()
		if !ok {
			return 0, fmt.Errorf("scheduler: cancel %s: %w", sel.QueueID, ErrNotQueued)
		}
	}
	// Tick moves due deliveries from the delayed queue to the active
	// ones under tickMu: holding it, no delivery is between the two
	// while they are walked, where neither walk would see it.
	s.tickMu.Lock()
	var found []*queue.Delivery
	if sel.Domain != "" {
		dom, _ := mx.Canonical(sel.Domain)
		if dr, ok := s.q.Lookup(dom); ok {
			found = dr.RemoveActive(match, found)
		}
	} else {
		for _, dr := range s.q.Domains(nil) {
			found = dr.RemoveActive(match, found)
		}
	}
	found = s.q.RemoveDelayed(match, found)
	s.tickMu.Unlock()

	byMsg := map[string][]*queue.Delivery{}
	var order []string
	for _, d := range found {
		if byMsg[d.MsgID] == nil {
			order = append(order, d.MsgID)
		}
		byMsg[d.MsgID] = append(byMsg[d.MsgID], d)
	}
	if sel.QueueID != "" && len(order) == 0 {
		// Held, but every delivery is in flight: the message still goes.
		order = append(order, sel.QueueID)
	}
	slices.Sort(order) // oldest first: queue ids sort by time
	whole := sel.Domain == ""
	n := 0
	var failed []string
	for _, id := range order {
		k, err := s.cancelMessage(id, byMsg[id], whole, reason, who, dsn)
		n += k
		if err != nil {
			failed = append(failed, id)
		}
	}
	if len(failed) > 0 {
		// Out of the queues and logged, but the spool has the old state:
		// a restart would deliver them. The operator must know.
		return n, fmt.Errorf("scheduler: cancel: the spool did not record the cancel of %d message(s) (%s); "+
			"they are out of the queues now, but a restart would queue them again", len(failed), strings.Join(failed, ", "))
	}
	return n, nil
}

// cancelMessage applies a cancel to one message: ds are its deliveries
// taken out of the queues, whole says the message goes even with
// recipients in flight. It returns the recipients cancelled.
func (s *Scheduler) cancelMessage(id string, ds []*queue.Delivery, whole bool, reason, who string, dsn bool) (int, error) {
	now := s.clock.Now()
	s.mu.Lock()
	st := s.msgs[id]
	s.mu.Unlock()
	if st == nil {
		// Ended between the walk and now (its last outcome came in);
		// nothing is left to cancel.
		return 0, nil
	}
	text := "cancelled by " + who + ": " + reason
	updates := map[int]spool.Recipient{}
	n := 0
	st.mu.Lock()
	for _, d := range ds {
		for _, r := range d.Rcpts {
			updates[int(r.Idx)] = spool.Recipient{Addr: r.Addr, State: spool.Cancelled, Attempts: int(d.Attempts),
				LastText: capString(text, maxReplyText), UpdatedAt: now, Notify: spool.Notify(r.Notify), ORcpt: r.ORcpt}
			if dsn {
				st.failed = append(st.failed, report{Addr: r.Addr, ORcpt: r.ORcpt, Notify: spool.Notify(r.Notify),
					Action: actFailed, Enhanced: cancelEnhanced, Text: text, At: now, Class: policy.ClassAdminFailure})
			}
			n++
		}
	}
	st.pending -= n
	s.pendingRcpts.Add(-int64(n))
	var err error
	var dsnMsg *spool.Message
	done := false
	if (whole || st.pending <= 0) && !st.finished {
		st.finished = true
		dsnMsg, done, err = s.finish(id, st, updates, now)
	} else if len(updates) > 0 {
		err = s.opts.Spool.Update(id, updates, false)
	}
	st.mu.Unlock()
	if err != nil {
		s.log.Error("spool update of a cancelled message failed", zap.String("queue_id", id), zap.Error(err))
	}
	if done {
		s.forget(id) // takes recipients still in flight out of the gauge
	}

	log := s.log.With(zap.String("by", who))
	for _, d := range ds {
		binding := ""
		if b := s.opts.Bindings.Get(int(d.Slot)); b != nil {
			binding = b.Name
		}
		for _, r := range d.Rcpts {
			logging.Cancelled(logging.Delivery{QueueID: id, Recipient: r.Addr, Domain: d.Domain, Binding: binding,
				Response: reason, Attempt: int(d.Attempts), Delay: now.Sub(time.Unix(0, d.Arrival)),
				BounceClass: int(policy.ClassAdminFailure)}).Log(log)
		}
		if s.om.recipients != nil {
			s.om.recipients.WithLabelValues(string(logging.EventCancelled), binding, "").Add(float64(len(d.Rcpts)))
			s.om.top.add(d.Domain, string(logging.EventCancelled), len(d.Rcpts))
		}
		s.countCancelled(len(d.Rcpts)) // the summary's count
	}
	s.submitDSN(dsnMsg)
	return n, err
}

// Flush moves the delayed deliveries to domain ("" = every domain) —
// from binding only, when binding is not "" — to their active queues now,
// as if their retry time had come, and runs their pairs' maintenance; an
// expired one expires instead. It writes one `policy` record (action
// flush, source operator, by who) and returns how many it moved. A
// suspended domain's flushed mail waits in its active queue for the
// suspension's end.
func (s *Scheduler) Flush(domain, binding, who string) (int, error) {
	slot := -1
	if binding != "" {
		b := s.opts.Bindings.ByName(binding)
		if b == nil {
			return 0, fmt.Errorf("scheduler: flush: %w %q", ErrUnknownBinding, binding)
		}
		slot = b.Slot
	}
	dom := ""
	if domain != "" {
		var err error
		if dom, err = mx.Canonical(domain); err != nil {
			return 0, fmt.Errorf("scheduler: flush: domain %q: %w", domain, err)
		}
	}
	// Under tickMu, as Tick's own moves from the delayed queue are.
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	ds := s.q.RemoveDelayed(func(d *queue.Delivery) bool {
		return (dom == "" || d.Domain == dom) && (slot < 0 || int(d.Slot) == slot)
	}, nil)
	now := s.clock.Now()
	t := now.UnixNano()
	pairs := map[*queue.Pair]bool{}
	for _, d := range ds {
		if t >= d.Expires {
			s.settleAll(d, connpool.Attempt{}, connpool.ErrExpired, now)
			continue
		}
		pairs[s.q.Push(d)] = true
	}
	for p := range pairs {
		s.wake(p, now)
	}
	scope := "domain"
	switch {
	case dom == "" && binding == "":
		scope = "all"
	case dom == "":
		scope = "binding"
	case binding != "":
		scope = "pair"
	}
	s.logPolicy(logging.Policy{Action: "flush", Source: policy.SourceOperator, By: who, Scope: scope,
		Name: dom, Binding: binding, Settings: fmt.Sprintf("flushed=%d", len(ds))})
	return len(ds), nil
}
