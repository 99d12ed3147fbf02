package scheduler

import (
	"container/heap"
	"slices"
	"strings"
)

// spaceSaving finds the heaviest hitters of a stream in bounded memory:
// the Space-Saving algorithm (Metwally, Agrawal, El Abbadi, "Efficient
// computation of frequent and top-k elements in data streams", 2005). It
// keeps at most cap counters; an item not held takes the place of the
// smallest counter and inherits its count, so every item whose true weight
// exceeds total/cap is held, and a held count overstates the truth by at
// most what it inherited. The counters sit in a min-heap, so an add costs
// O(log cap) whatever the number of distinct items. Not safe for
// concurrent use.
type spaceSaving struct {
	cap   int
	idx   map[string]*ssEntry
	heap  ssHeap
	total uint64
}

type ssEntry struct {
	item  string
	count uint64
	pos   int // index in the heap
}

type ssHeap []*ssEntry

func (h ssHeap) Len() int           { return len(h) }
func (h ssHeap) Less(i, j int) bool { return h[i].count < h[j].count }
func (h ssHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}
func (h *ssHeap) Push(x any) {
	e := x.(*ssEntry)
	e.pos = len(*h)
	*h = append(*h, e)
}
func (h *ssHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

func newSpaceSaving(capacity int) *spaceSaving {
	return &spaceSaving{cap: max(capacity, 1), idx: make(map[string]*ssEntry, capacity)}
}

// add counts w more for item.
func (s *spaceSaving) add(item string, w uint64) {
	s.total += w
	if e := s.idx[item]; e != nil {
		e.count += w
		heap.Fix(&s.heap, e.pos)
		return
	}
	if len(s.heap) < s.cap {
		e := &ssEntry{item: item, count: w}
		s.idx[item] = e
		heap.Push(&s.heap, e)
		return
	}
	e := s.heap[0] // the smallest: evicted, its count inherited
	delete(s.idx, e.item)
	// A clone: the caller's string may point into a larger buffer (an
	// address), which the summary must not keep alive.
	e.item = strings.Clone(item)
	e.count += w
	s.idx[e.item] = e
	heap.Fix(&s.heap, 0)
}

// top returns the n items with the highest counts, highest first (ties by
// name, so the answer does not depend on the heap's layout).
func (s *spaceSaving) top(n int) []string {
	es := slices.Clone(s.heap)
	slices.SortFunc(es, func(a, b *ssEntry) int {
		if a.count != b.count {
			if a.count > b.count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.item, b.item)
	})
	out := make([]string, 0, min(n, len(es)))
	for _, e := range es[:min(n, len(es))] {
		out = append(out, e.item)
	}
	return out
}

// decay halves every count, so that the summary follows the recent
// stream: a domain busy yesterday and silent today leaves the top in a
// few halvings. Halving keeps the heap's order, so no fix-up is needed.
func (s *spaceSaving) decay() {
	for _, e := range s.heap {
		e.count /= 2
	}
	s.total /= 2
}
