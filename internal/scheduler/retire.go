package scheduler

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/queue"
)

// RetireBinding moves the mail queued on slot, whose binding a reload
// removed (binding.Set.Apply retired it), to bindings of the default group:
// the active deliveries to their new pairs' active queues, the delayed
// ones to the delayed queue at the same next attempt. A delivery in a
// session on the slot now comes back through settle, which sees the
// retired binding and re-picks too (retiredSlot); mail that reaches the
// slot after this walk is moved when its pair is next maintained or woken
// (moveRetired). It returns how many
// deliveries it moved; an error when the slot's binding is not retired or
// the default group has no usable binding (the mail stays, and is moved
// when it next settles).
func (s *Scheduler) RetireBinding(slot int) (int, error) {
	b := s.opts.Bindings.Get(slot)
	if b == nil || !b.Retired() {
		return 0, fmt.Errorf("scheduler: retire binding slot %d: not a retired binding", slot)
	}
	if _, err := s.opts.Bindings.Pick(binding.DefaultName, ""); err != nil {
		return 0, fmt.Errorf("scheduler: retire binding %q: %w", b.Name, err)
	}
	on := func(d *queue.Delivery) bool { return int(d.Slot) == slot }
	// Under tickMu, as Flush and Tick move deliveries between queues: no
	// delivery is between the delayed and the active queues meanwhile.
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	now := s.clock.Now()
	moved := 0
	pairs := map[*queue.Pair]bool{}
	for _, dr := range s.q.Domains(nil) {
		for _, d := range dr.RemoveActive(on, nil) {
			d.Slot = int32(s.retiredSlot(slot))
			pairs[s.q.Push(d)] = true
			moved++
		}
	}
	for _, d := range s.q.RemoveDelayed(on, nil) {
		d.Slot = int32(s.retiredSlot(slot))
		s.q.Delay(d, d.NextAttempt())
		moved++
	}
	for p := range pairs {
		s.wake(p, now)
	}
	s.log.Info("binding retired by a reload: its queued mail moved to the default group",
		zap.String("binding", b.Name), zap.Int("slot", slot), zap.Int("moved", moved))
	return moved, nil
}

// retiredSlot is where a delivery on slot goes next: slot itself while its
// binding is live, else a binding of the default group (slot again when
// that group has none usable: the delivery waits, it is not lost).
func (s *Scheduler) retiredSlot(slot int) int {
	if b := s.opts.Bindings.Get(slot); b == nil || !b.Retired() {
		return slot
	}
	if sl := s.rebindSlot(binding.DefaultName); sl >= 0 {
		return sl
	}
	return slot
}

// moveRetired reports whether p's binding is retired, after moving p's
// active mail to the default group's bindings (as RetireBinding does) and
// waking their pairs. RetireBinding's walk cannot see mail that lands on
// the slot after it: a Submit whose Pick returned the binding just before
// the reload retired it, or a settle that chose the slot before and
// delays onto it after. Such mail reaches an active queue of the slot
// (the delayed queue's when due), whose pair is maintained or woken, and
// so comes here: no connection is ever opened for it from the removed
// address. When the default group has no usable binding the mail waits
// on the pair, unsent, until a maintenance finds one.
func (s *Scheduler) moveRetired(p *queue.Pair, now time.Time) bool {
	slot := p.Slot()
	if b := s.opts.Bindings.Get(slot); b == nil || !b.Retired() {
		return false
	}
	to := s.retiredSlot(slot)
	if to == slot {
		return true
	}
	ds := p.Domain().RemoveActive(func(d *queue.Delivery) bool { return int(d.Slot) == slot }, nil)
	pairs := map[*queue.Pair]bool{}
	for _, d := range ds {
		d.Slot = int32(s.retiredSlot(slot)) // spread over the group as RetireBinding does
		pairs[s.q.Push(d)] = true
	}
	for np := range pairs {
		s.wake(np, now)
	}
	if len(ds) > 0 {
		s.log.Info("mail that reached a retired binding after the reload moved to the default group",
			zap.String("domain", p.Domain().Name), zap.Int("slot", slot), zap.Int("moved", len(ds)))
	}
	return true
}
