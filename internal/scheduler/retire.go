package scheduler

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/queue"
)

// RetireBinding moves the mail queued on slot, whose binding a reload
// removed (binding.Set.Apply retired it), to bindings of the default group:
// the active deliveries to their new pairs' active queues, the delayed
// ones to the delayed queue at the same next attempt. A delivery in a
// session on the slot now comes back through settle, which sees the
// retired binding and re-picks too (retiredSlot). It returns how many
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
