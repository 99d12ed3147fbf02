package scheduler

import (
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/outcome"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
)

// deliveryShape is the shaping of the pair d was queued on; nil without a
// Shaper or for a domain the queues no longer hold.
func (s *Scheduler) deliveryShape(d *queue.Delivery) *pairShape {
	if s.shaper.Load() == nil {
		return nil
	}
	dr, ok := s.q.Lookup(d.Domain)
	if !ok {
		return nil
	}
	return s.shapeOf(dr.Pair(int(d.Slot)))
}

// applyRules runs the response rules on the replies of one attempt, once
// per distinct reply, puts what fired in force (a suspension, a throttle,
// a rebind), logs each action once, and returns per recipient the action
// that decides its verdict (bounce, defer, or any other: retried), nil
// where none fired. mtad's own failures never match (policy.ReplyOf).
func (s *Scheduler) applyRules(d *queue.Delivery, at connpool.Attempt, v []*outcome.Error, ps *pairShape, now time.Time) []*policy.Action {
	rules := s.rules.Load()
	if rules == nil || rules.Len() == 0 {
		return make([]*policy.Action, len(v))
	}
	out := make([]*policy.Action, len(v))
	var where policy.Where
	if ps != nil {
		where = ps.where
	} else {
		where = policy.Where{Domain: d.Domain, Binding: at.Binding}
		if where.Binding == "" {
			if b := s.opts.Bindings.Get(int(d.Slot)); b != nil {
				where.Binding = b.Name
			}
		}
	}
	for i, e := range v {
		if e == nil || e == connpool.ErrExpired || e == badAddress {
			continue
		}
		if i > 0 && v[i-1] == e {
			out[i] = out[i-1]
			continue
		}
		reply := policy.ReplyOf(e)
		if reply.Local {
			continue
		}
		a, fired, matched := rules.Match(reply, where, now)
		if !fired {
			if matched != "" {
				s.log.Debug("response rule matched, trigger not reached", zap.String("rule", matched),
					zap.String("domain", d.Domain), zap.String("reply", reply.String()))
				if a.Kind != policy.ActionBounce {
					// A rule counting toward a suspend, throttle,
					// defer or rebind says the reply is about the
					// sender: retried meanwhile, not bounced.
					out[i] = &policy.Action{Rule: a.Rule, Kind: actionCounting}
				}
			}
			continue
		}
		s.act(&a, d, where, now)
		out[i] = &a
	}
	return out
}

// actionCounting marks a recipient whose reply a rule is counting toward
// its threshold: retried with the normal backoff, nothing put in force.
const actionCounting = "counting"

// act puts a fired rule's action in force and writes its one log record.
func (s *Scheduler) act(a *policy.Action, d *queue.Delivery, where policy.Where, now time.Time) {
	rec := logging.Policy{Action: a.Kind, Rule: a.Rule, Source: policy.SourceRule, Scope: string(a.ScopeKind),
		Name: a.ScopeName, Binding: a.Binding, Reason: a.Reply.String(), Domain: d.Domain, QueueID: d.MsgID}
	switch a.Kind {
	case policy.ActionSuspend:
		sp, added := s.suspensions.Put(a.Suspension(now))
		if !added {
			// Already suspended as long (another session got the same
			// reply at the same moment): one record is enough.
			return
		}
		rec.Until, rec.ID = sp.Until, sp.ID
		s.publish(kindSuspension, suspensionID(sp), sp, sp.Start, sp.Until)
	case policy.ActionThrottle:
		o := a.Override(policy.ScopeKey(a.ScopeKind, a.ScopeName, a.Binding), now)
		s.overrides.Set(o)
		s.publish(kindThrottle, o.Scope, o, o.Start, o.Until())
		rec.Until, rec.Settings = o.Until(), overrideSettings(a.MaxMessageRate, a.MaxConnections)
	case policy.ActionDefer:
		if a.Duration > 0 {
			rec.Until = now.Add(a.Duration)
		}
	case policy.ActionRebind:
		rec.Until, rec.Settings = now.Add(a.Duration), "group="+a.Rebind
		s.setRebind(where.Domain, where.Binding, a.Rebind, now.Add(a.Duration))
		if dr, ok := s.q.Lookup(d.Domain); ok {
			s.moveQueued(dr.Pair(int(d.Slot)), a.Rebind, now)
		}
	}
	s.logPolicy(rec)
}

// rebind is a rule's rebind in force: mail for domain that would leave
// from binding goes from group instead, until until.
type rebind struct {
	group string
	until time.Time
}

func (s *Scheduler) setRebind(domain, binding, group string, until time.Time) {
	s.rebindMu.Lock()
	defer s.rebindMu.Unlock()
	if s.rebinds == nil {
		s.rebinds = map[[2]string]rebind{}
	}
	s.rebinds[[2]string{domain, binding}] = rebind{group: group, until: until}
}

// rebound returns the binding group a rebind (a rule's, or an
// operator's for the pair or the whole domain) sends mail for domain from
// binding through, at now; "" when none is in force.
func (s *Scheduler) rebound(domain, binding string, now time.Time) string {
	s.rebindMu.Lock()
	defer s.rebindMu.Unlock()
	if len(s.rebinds) == 0 {
		return ""
	}
	// The pair's own rebind first, then an operator's for the whole
	// domain (binding "").
	for _, k := range [][2]string{{domain, binding}, {domain, ""}} {
		r, ok := s.rebinds[k]
		if !ok {
			continue
		}
		if !now.Before(r.until) {
			delete(s.rebinds, k)
			continue
		}
		return r.group
	}
	return ""
}

// sweepRebinds forgets the rebinds that ended, so one for a domain never
// mailed again does not stay for the life of the process.
func (s *Scheduler) sweepRebinds(now time.Time) {
	s.rebindMu.Lock()
	defer s.rebindMu.Unlock()
	for k, r := range s.rebinds {
		if !now.Before(r.until) {
			delete(s.rebinds, k)
		}
	}
}

// rebindSlot picks a binding of group for a rebound delivery; -1 when the
// group has none usable (the delivery stays where it was).
func (s *Scheduler) rebindSlot(group string) int {
	b, err := s.opts.Bindings.Pick(group, "")
	if err != nil {
		s.log.Warn("rebind to a group without a usable binding", zap.String("group", group), zap.Error(err))
		return -1
	}
	return b.Slot
}

// moveQueued moves the deliveries queued on pair to bindings of group and
// returns how many it moved.
func (s *Scheduler) moveQueued(p *queue.Pair, group string, now time.Time) int {
	n := 0
	for range p.Len() {
		d := p.Pop()
		if d == nil {
			break
		}
		if slot := s.rebindSlot(group); slot >= 0 {
			d.Slot = int32(slot)
		}
		s.q.Delay(d, now) // due at the next tick, on its new pair
		n++
	}
	return n
}

// capReply returns e with its text capped at maxReplyText, for keeping in
// memory; e itself when it is short.
func capReply(e *outcome.Error) *outcome.Error {
	if e == nil || len(e.Message) <= maxReplyText {
		return e
	}
	c := *e
	c.Message = capString(e.Message, maxReplyText)
	return &c
}
