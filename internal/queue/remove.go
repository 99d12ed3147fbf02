package queue

// Taking deliveries out of the queues by what they are rather than by when
// they are due: an operator's cancel (by queue id, domain or sender) and
// flush (delayed deliveries of a domain, now). These walk whole queues, so
// they are for operators' actions, never for the delivery path.

// Domains appends to buf[:0] the domain records held now and returns it. It
// is a snapshot: a record may be swept right after (its deliveries, if any,
// are then found again under a new record by the next walk).
func (q *Queues) Domains(buf []*DomainRecord) []*DomainRecord {
	q.domainsMu.Lock()
	defer q.domainsMu.Unlock()
	buf = buf[:0]
	for _, dr := range q.domains {
		buf = append(buf, dr)
	}
	return buf
}

// RemoveActive removes from the record's active queues, all slots, the
// deliveries for which match is true, appends them to buf and returns it;
// the caller owns them. match runs under the record's lock: it must only
// read the delivery. A pair whose queue empties leaves the ready index.
func (dr *DomainRecord) RemoveActive(match func(*Delivery) bool, buf []*Delivery) []*Delivery {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	removed := 0
	for _, p := range dr.pairs {
		if p == nil || p.list == nil || p.list.Len() == 0 {
			continue
		}
		for e := p.list.Front(); e != nil; {
			next := e.Next()
			if d := e.Key().(*Delivery); match(d) {
				p.list.RemoveElement(e)
				d.markUnqueued()
				buf = append(buf, d)
				removed++
			}
			e = next
		}
		if p.list.Len() == 0 {
			dr.q.removeReady(p)
		}
	}
	if removed > 0 {
		dr.queued -= removed
		dr.touched = true
		dr.q.active.Add(-int64(removed))
	}
	return buf
}

// RemoveDelayed removes from the delayed queue the deliveries for which
// match is true, appends them to buf and returns it; the caller owns them
// (pushes them to their active queue for a flush, or ends them). match
// runs under the delayed queue's lock: it must only read the delivery.
func (q *Queues) RemoveDelayed(match func(*Delivery) bool, buf []*Delivery) []*Delivery {
	start := len(buf)
	defer func() { q.uncountDelayed(buf[start:]) }() // after delayMu is released
	q.delayMu.Lock()
	defer q.delayMu.Unlock()
	for e := q.delayed.Front(); e != nil; {
		next := e.Next()
		if d := e.Key().(*Delivery); match(d) {
			q.delayed.RemoveElement(e)
			d.markUnqueued()
			buf = append(buf, d)
		}
		e = next
	}
	return buf
}
