package scheduler

// An operator's actions on queued mail: cancel and bounce (end recipients
// now, by queue id, domain, pair or sender), flush (retry delayed
// deliveries now), rebind (move a domain's or pair's mail to another
// binding group) and the quarantine's re-inject and delete. The decision
// of what a cancel or bounce ends is the Selector's match; applying it
// (spool, log, metrics, DSN) follows the order settle keeps: spool first,
// log second.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// Selector names the queued mail a Cancel or Bounce ends: exactly one of
// QueueID, Domain and Sender is set; Binding only with Domain (the pair).
// QueueID and Sender end whole messages; Domain ends only the recipients
// at that domain (from that binding, with Binding), and the messages'
// other recipients go on.
type Selector struct {
	QueueID string
	Domain  string // any case; compared in mx.Canonical form
	Binding string // with Domain: only the deliveries queued on that binding
	Sender  string // the envelope sender, compared without case; the null sender cannot be chosen
}

// ErrBadSelector is wrapped by Cancel's and Bounce's error for a Selector
// without exactly one field set, with a domain that is not one, or with a
// Binding but no Domain.
var ErrBadSelector = errors.New("bad selector")

// ErrNotQueued is wrapped by Cancel's and Bounce's error for a queue id
// the scheduler does not hold (never queued, or already ended).
var ErrNotQueued = errors.New("not queued")

// ErrUnknownBinding is wrapped by Flush's, Cancel's, Bounce's and
// Rebind's error for a binding name the configuration does not have.
var ErrUnknownBinding = errors.New("unknown binding")

// ErrUnknownGroup is wrapped by Rebind's error for a binding group the
// configuration does not have, or one without a usable binding.
var ErrUnknownGroup = errors.New("unknown binding group")

// adminEnhanced is the status an operator's cancel or bounce reports in
// the DSN: RFC 3463 has no code for mail an administrator took out of the
// queue, so X.0.0 "other undefined status", permanent; the DSN's
// diagnostic text carries the operator's reason.
const adminEnhanced = "5.0.0"

// matcher turns a checked Selector into the match on a queued delivery.
func (sel Selector) matcher(bindings *binding.Set) (func(*queue.Delivery) bool, error) {
	set := 0
	for _, v := range []string{sel.QueueID, sel.Domain, sel.Sender} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, fmt.Errorf("%w: set exactly one of queue id, domain and sender (%d set)", ErrBadSelector, set)
	}
	if sel.Binding != "" && sel.Domain == "" {
		return nil, fmt.Errorf("%w: a binding chooses a pair only with a domain", ErrBadSelector)
	}
	switch {
	case sel.QueueID != "":
		id := sel.QueueID
		return func(d *queue.Delivery) bool { return d.MsgID == id }, nil
	case sel.Domain != "":
		dom, err := mx.Canonical(sel.Domain)
		if err != nil {
			return nil, fmt.Errorf("%w: domain %q: %v", ErrBadSelector, sel.Domain, err)
		}
		if sel.Binding == "" {
			return func(d *queue.Delivery) bool { return d.Domain == dom }, nil
		}
		b := bindings.ByName(sel.Binding)
		if b == nil {
			return nil, fmt.Errorf("%w %q", ErrUnknownBinding, sel.Binding)
		}
		slot := int32(b.Slot)
		return func(d *queue.Delivery) bool { return d.Domain == dom && d.Slot == slot }, nil
	}
	snd := sel.Sender
	return func(d *queue.Delivery) bool { return d.Sender != "" && strings.EqualFold(d.Sender, snd) }, nil
}

// ending is how an operator's order ends the recipients it chose: the
// spool state, log event and metric they end with, and whether their
// sender gets a DSN.
type ending struct {
	verb   string // "cancel", "bounce": for errors
	event  logging.Event
	state  spool.State
	summed int // the summary's counter
	dsn    bool
	reason string
	who    string
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
// cancelled by a domain. A whole message (by queue id or sender) ends its
// in-flight recipients too, with the same records: the session's late
// outcome is then dropped, though the remote side may already have the
// mail. A message still in the intake, not yet submitted, is not seen. A queue id the scheduler does not hold is ErrNotQueued.
func (s *Scheduler) Cancel(sel Selector, reason, who string, dsn bool) (int, error) {
	return s.end(sel, ending{verb: "cancel", event: logging.EventCancelled, state: spool.Cancelled,
		summed: sumCancelled, dsn: dsn, reason: reason, who: who})
}

// Bounce ends the queued recipients sel chooses as failed, as Cancel
// does, but as bounces: state bounced in the spool, one `bounced` record
// each (bounce class 25, admin failure, with reason and who), counted as
// mtad_recipients_total{event="bounced"} and in the summary's bounces,
// and always reported to the sender in a DSN (per their NOTIFY; never to
// the null sender), with status 5.0.0 and the operator's reason.
func (s *Scheduler) Bounce(sel Selector, reason, who string) (int, error) {
	return s.end(sel, ending{verb: "bounce", event: logging.EventBounced, state: spool.Bounced,
		summed: sumBounced, dsn: true, reason: reason, who: who})
}

// end is Cancel's and Bounce's walk: it takes the chosen deliveries out of
// the queues and ends them message by message.
func (s *Scheduler) end(sel Selector, e ending) (int, error) {
	match, err := sel.matcher(s.opts.Bindings)
	if err != nil {
		return 0, fmt.Errorf("scheduler: %s: %w", e.verb, err)
	}
	e.reason = strings.TrimSpace(e.reason)
	if e.reason == "" {
		return 0, fmt.Errorf("scheduler: %s: a reason is required", e.verb)
	}
	if sel.QueueID != "" {
		s.mu.Lock()
		_, ok := s.msgs[sel.QueueID]
		s.mu.Unlock()
		if !ok {
			return 0, fmt.Errorf("scheduler: %s %s: %w", e.verb, sel.QueueID, ErrNotQueued)
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
		k, err := s.endMessage(id, byMsg[id], whole, e)
		n += k
		if err != nil {
			failed = append(failed, id)
		}
	}
	if len(failed) > 0 {
		// Out of the queues and logged, but the spool has the old state:
		// a restart would deliver them. The operator must know.
		return n, fmt.Errorf("scheduler: %s: the spool did not record the %s of %d message(s) (%s); "+
			"they are out of the queues now, but a restart would queue them again", e.verb, e.verb, len(failed), strings.Join(failed, ", "))
	}
	return n, nil
}

// endMessage applies a cancel or bounce to one message: ds are its
// deliveries taken out of the queues, whole says the message goes even
// with recipients in flight. It returns the recipients ended.
func (s *Scheduler) endMessage(id string, ds []*queue.Delivery, whole bool, e ending) (int, error) {
	now := s.clock.Now()
	s.mu.Lock()
	st := s.msgs[id]
	s.mu.Unlock()
	if st == nil {
		// Ended between the walk and now (its last outcome came in);
		// nothing is left to end.
		return 0, nil
	}
	text := string(e.event) + " by " + e.who + ": " + e.reason
	updates := map[int]spool.Recipient{}
	n := 0
	st.mu.Lock()
	for _, d := range ds {
		for _, r := range d.Rcpts {
			updates[int(r.Idx)] = spool.Recipient{Addr: r.Addr, State: e.state, Attempts: int(d.Attempts),
				LastEnh: adminEnhanced, LastText: capString(text, maxReplyText), UpdatedAt: now,
				Notify: spool.Notify(r.Notify), ORcpt: r.ORcpt}
			if e.dsn {
				st.failed = append(st.failed, report{Addr: r.Addr, ORcpt: r.ORcpt, Notify: spool.Notify(r.Notify),
					Action: actFailed, Enhanced: adminEnhanced, Text: text, At: now, Class: policy.ClassAdminFailure})
			}
			n++
		}
	}
	// A whole message goes with its recipients in flight too: a session
	// holds their delivery, and its outcome, coming after the message is
	// gone, is dropped. They are ended here, as the others, so none is
	// left without a record (or, for a bounce, its DSN). The spool says
	// which are still pending; it is read under st.mu, which every settle
	// holds while it records an outcome.
	var flying []queue.Rcpt
	flySlot := -1 // the pair the views count in-flight recipients on: the message's own binding, if it names one
	if whole && !st.finished {
		if b := s.opts.Bindings.ByName(st.binding); st.binding != "" && b != nil {
			flySlot = b.Slot
		}
		if m, gerr := s.opts.Spool.Get(id); gerr == nil {
			for i, r := range m.Recipients {
				if _, taken := updates[i]; taken || r.State != spool.Pending {
					continue
				}
				updates[i] = spool.Recipient{Addr: r.Addr, State: e.state, Attempts: r.Attempts,
					LastEnh: adminEnhanced, LastText: capString(text, maxReplyText), UpdatedAt: now,
					Notify: r.Notify, ORcpt: r.ORcpt}
				if e.dsn {
					st.failed = append(st.failed, report{Addr: r.Addr, ORcpt: r.ORcpt, Notify: r.Notify,
						Action: actFailed, Enhanced: adminEnhanced, Text: text, At: now, Class: policy.ClassAdminFailure})
				}
				flying = append(flying, queue.Rcpt{Idx: int32(i), Notify: uint8(r.Notify), Addr: r.Addr, ORcpt: r.ORcpt})
				n++
			}
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
		s.log.Error("spool update of a message ended by an operator failed", zap.String("queue_id", id),
			zap.String("action", e.verb), zap.Error(err))
	}
	if done {
		s.forget(id) // takes recipients still in flight out of the gauge
	}

	log := s.log.With(zap.String("by", e.who))
	class := ""
	if e.event == logging.EventBounced {
		class = strconv.Itoa(int(policy.ClassAdminFailure))
	}
	for _, d := range ds {
		binding := ""
		if b := s.opts.Bindings.Get(int(d.Slot)); b != nil {
			binding = b.Name
		}
		for _, r := range d.Rcpts {
			rec := logging.Delivery{Event: e.event, QueueID: id, Recipient: r.Addr, Domain: d.Domain, Binding: binding,
				Response: e.reason, Attempt: int(d.Attempts), Delay: now.Sub(time.Unix(0, d.Arrival)),
				BounceClass: int(policy.ClassAdminFailure)}
			if e.event == logging.EventBounced {
				rec.Enhanced = adminEnhanced
			}
			rec.Log(log)
			if class != "" {
				s.countClass(policy.ClassAdminFailure, e.event)
			}
		}
		if s.om.recipients != nil {
			s.om.recipients.WithLabelValues(string(e.event), binding, class).Add(float64(len(d.Rcpts)))
			s.om.top.add(d.Domain, string(e.event), len(d.Rcpts))
		}
		s.sum.add(now, e.summed, len(d.Rcpts)) // the summary's count
		s.noteEnded(d.Domain, int(d.Slot), d.Rcpts, e, updates, now)
	}
	for _, r := range flying {
		dom := r.Addr[strings.LastIndexByte(r.Addr, '@')+1:]
		if c, cerr := mx.Canonical(dom); cerr == nil {
			dom = c
		}
		rec := logging.Delivery{Event: e.event, QueueID: id, Recipient: r.Addr, Domain: dom,
			Response: e.reason, Attempt: updates[int(r.Idx)].Attempts, BounceClass: int(policy.ClassAdminFailure)}
		if e.event == logging.EventBounced {
			rec.Enhanced = adminEnhanced
			s.countClass(policy.ClassAdminFailure, e.event)
		}
		rec.Log(log)
		if s.om.recipients != nil {
			s.om.recipients.WithLabelValues(string(e.event), "", class).Inc()
			s.om.top.add(dom, string(e.event), 1)
		}
		s.sum.add(now, e.summed, 1)
		// The pair a session holds it on is not known here; the
		// message's own binding is, when it names one (slot -1 is
		// skipped by noteView).
		s.noteEnded(dom, flySlot, []queue.Rcpt{r}, e, updates, now)
	}
	s.submitDSN(dsnMsg)
	return n, err
}

// noteEnded tells the queue views about recipients an operator ended on
// the pair (domain, slot), as settle does for an attempt's: a bounce
// counts as bounced with class 25 (admin failure), as its log record and
// metric do; a cancel is no bounce (the summary and metrics count it
// apart) and only becomes the pair's last reply.
func (s *Scheduler) noteEnded(domain string, slot int, rcpts []queue.Rcpt, e ending, updates map[int]spool.Recipient, now time.Time) {
	v := vDelivered // noteView counts neither deferred nor bounced for it
	if e.event == logging.EventBounced {
		v = vBounced
	}
	verdicts := make([]verdict, len(rcpts))
	classes := make([]policy.BounceClass, len(rcpts))
	for i := range rcpts {
		verdicts[i], classes[i] = v, policy.ClassAdminFailure
	}
	s.noteView(domain, slot, rcpts, verdicts, classes, updates, now)
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

// Rebind moves the queued mail to domain — from binding only, when
// binding is not "" (the pair) — to bindings of group: the active
// deliveries are due at the next tick on their new pair, the delayed ones
// keep their retry time. For d > 0 the domain's (the pair's) new mail
// goes from group too until d has passed. It writes one `policy` record
// (action rebind, source operator, by who, with reason) and returns how
// many deliveries it moved. A delivery in flight is not moved: if it is
// deferred, it is retried from the binding it had.
func (s *Scheduler) Rebind(domain, binding, group string, d time.Duration, who, reason string) (moved int, err error) {
	if domain == "" {
		return 0, fmt.Errorf("scheduler: rebind: %w: a domain is required", ErrBadSelector)
	}
	dom, err := mx.Canonical(domain)
	if err != nil {
		return 0, fmt.Errorf("scheduler: rebind: %w: domain %q: %v", ErrBadSelector, domain, err)
	}
	slot := -1
	if binding != "" {
		b := s.opts.Bindings.ByName(binding)
		if b == nil {
			return 0, fmt.Errorf("scheduler: rebind: %w %q", ErrUnknownBinding, binding)
		}
		slot = b.Slot
	}
	if group == "" {
		return 0, fmt.Errorf("scheduler: rebind: %w: a group is required", ErrUnknownGroup)
	}
	if _, err := s.opts.Bindings.Pick(group, ""); err != nil {
		return 0, fmt.Errorf("scheduler: rebind: %w %q: %v", ErrUnknownGroup, group, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("scheduler: rebind: negative duration %s", d)
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return 0, errors.New("scheduler: rebind: a reason is required")
	}
	now := s.clock.Now()
	rec := logging.Policy{Action: policy.ActionRebind, Source: policy.SourceOperator, By: who, Scope: "domain",
		Name: dom, Binding: binding, Reason: reason}
	if binding != "" {
		rec.Scope = "pair"
	}
	if d > 0 {
		// Before the move: mail queued from now on goes to the group.
		rec.Until = now.Add(d)
		s.setRebind(dom, binding, group, rec.Until)
	}
	// Under tickMu, as Tick's own moves from the delayed queue are: no
	// delivery is between the two queues while they are walked.
	s.tickMu.Lock()
	// The delayed ones first: moveQueued puts the active ones in the
	// delayed queue (due at the next tick), where this walk would count
	// them twice.
	delayed := s.q.RemoveDelayed(func(dl *queue.Delivery) bool {
		return dl.Domain == dom && (slot < 0 || int(dl.Slot) == slot)
	}, nil)
	for _, dl := range delayed {
		if sl := s.rebindSlot(group); sl >= 0 {
			dl.Slot = int32(sl)
		}
		s.q.Delay(dl, dl.NextAttempt())
	}
	if dr, ok := s.q.Lookup(dom); ok {
		for _, p := range dr.Pairs(nil) {
			if slot < 0 || p.Slot() == slot {
				moved += s.moveQueued(p, group, now)
			}
		}
	}
	s.tickMu.Unlock()
	moved += len(delayed)
	rec.Settings = fmt.Sprintf("group=%s moved=%d", group, moved)
	s.logPolicy(rec)
	return moved, nil
}

// Quarantine is the spool's quarantine, as Reinject and
// DeleteQuarantined need it; the Spool the scheduler is given has it
// when it is a *spool.Spool.
type Quarantine interface {
	QuarantineRestore(id string) (*spool.Message, error)
	QuarantineDelete(id string) error
}

// ErrNoQuarantine is returned by Reinject and DeleteQuarantined when the
// scheduler's Spool has no quarantine.
var ErrNoQuarantine = errors.New("the spool has no quarantine")

// Reinject moves the quarantined message id back to the live spool (only
// when every record of it decodes; see spool.QuarantineRestore) and
// queues it, as a restart would. It writes one `policy` record (action
// reinject, source operator, by who, with reason and queue_id), not a
// `received` one: the message was received, logged and counted once
// already, when it was accepted. It returns the message.
func (s *Scheduler) Reinject(id, who, reason string) (*spool.Message, error) {
	q, ok := s.opts.Spool.(Quarantine)
	if !ok {
		return nil, ErrNoQuarantine
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return nil, errors.New("scheduler: reinject: a reason is required")
	}
	m, err := q.QuarantineRestore(id)
	if err != nil {
		return nil, fmt.Errorf("scheduler: reinject: %w", err)
	}
	pending := 0
	for _, r := range m.Recipients {
		if r.State == spool.Pending {
			pending++
		}
	}
	s.logPolicy(logging.Policy{Action: "reinject", Source: policy.SourceOperator, By: who, Reason: reason,
		QueueID: id, Settings: fmt.Sprintf("pending=%d", pending)})
	if err := s.Submit(m); err != nil {
		// In the live spool now: the next start queues it.
		return m, fmt.Errorf("scheduler: reinject %s: restored in the spool, but not queued until a restart: %w", id, err)
	}
	return m, nil
}

// DeleteQuarantined removes the quarantined message id for good and
// writes one `policy` record (action quarantine_delete, source operator,
// by who, with reason and queue_id).
func (s *Scheduler) DeleteQuarantined(id, who, reason string) error {
	q, ok := s.opts.Spool.(Quarantine)
	if !ok {
		return ErrNoQuarantine
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return errors.New("scheduler: quarantine delete: a reason is required")
	}
	if err := q.QuarantineDelete(id); err != nil {
		return fmt.Errorf("scheduler: quarantine delete: %w", err)
	}
	s.logPolicy(logging.Policy{Action: "quarantine_delete", Source: policy.SourceOperator, By: who, Reason: reason, QueueID: id})
	return nil
}
