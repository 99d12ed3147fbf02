package scheduler

// The operator's views of the queues (issue 11, GET /api/v1/queues): per
// domain, site, binding or domain/binding pair, what is queued, how old
// it is, what the remote side last said and what policy holds it back.
//
// A view must stay cheap with 500,000 deliveries queued, so it reads
// counters, never the queues' contents, and never takes tickMu:
//   - active, connections: the pairs' own counters (queue.Pair);
//   - delayed: counted per pair by the queue package as deliveries enter
//     and leave the one delayed queue (queue/view.go);
//   - oldest: the head of each pair's active queue (the oldest of the
//     highest priority, which is the oldest unless priorities differ)
//     and the pair's delayed-oldest kept as deliveries are delayed —
//     no walk, at the price of an age that may overstate while the
//     oldest delayed delivery has left and others remain (queue.Pair.
//     DelayedOldest says when it is exact);
//   - deferred, bounced, bounce classes, last reply: one small pairStats
//     per pair on the domain's state, updated by settle (noteView).
//
// It walks the domain records (one lock each, briefly), so its cost
// follows the domains held, not the deliveries. The counts live with the
// domain record: a record Sweep forgets (idle, nothing queued or delayed)
// starts again from zero when the domain comes back.

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/spool"
)

// ErrBadQuery is wrapped by QueueView's and Messages' errors for a query
// the scheduler cannot answer; the error is a *QueryError naming the
// parameter.
var ErrBadQuery = errors.New("bad query")

// QueryError is a refused query parameter. Its text starts with the
// parameter's name ("sort: unknown key \"x\""), the admin API's error shape.
type QueryError struct {
	Param, Msg string
}

func (e *QueryError) Error() string { return e.Param + ": " + e.Msg }

// Is makes errors.Is(err, ErrBadQuery) true.
func (e *QueryError) Is(target error) bool { return target == ErrBadQuery }

func badQuery(param, format string, args ...any) error {
	return &QueryError{Param: param, Msg: fmt.Sprintf(format, args...)}
}

// View limits: the default page and the largest one.
const (
	DefaultViewLimit = 50
	MaxViewLimit     = 1000
)

// ViewQuery chooses, orders and pages a QueueView.
type ViewQuery struct {
	By     string // domain (default), site, binding or pair
	Sort   string // active (default), delayed, connections, oldest, deferred, bounced or name
	Desc   bool
	Limit  int // 0 is DefaultViewLimit; at most MaxViewLimit
	Offset int
	// Domain is a path.Match pattern on domain names, without case
	// ("*.example.com"); "" matches every domain.
	Domain   string
	Provider string // a provider the shaping config names; "" = any
	Binding  string // a configured binding; "" = any
}

// LastReply is the last reply (or local failure) an attempt got.
type LastReply struct {
	At       time.Time `json:"at"`
	Code     int       `json:"code"`
	Enhanced string    `json:"enhanced"`
	Text     string    `json:"text"` // capped at maxReplyText
}

// ViewSuspension is the suspension in force over a row.
type ViewSuspension struct {
	ID     string    `json:"id"`
	Scope  string    `json:"scope"` // policy.ScopeKey of what it covers
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`
	By     string    `json:"by"` // its source (config, rule:NAME, operator, adaptive)
}

// ViewThrottle is a rule's or operator's throttle in force over a row.
type ViewThrottle struct {
	Scope string    `json:"scope"`
	Rate  string    `json:"rate"` // the message rate in force, "" when it only caps connections
	Until time.Time `json:"until"`
}

// ViewItem is one row of a view. The key columns are the view's: Domain
// (by domain), Site, Binding, or Domain and Binding (by pair). Site,
// Provider, Suspension and Throttle come from the pair's shaping: without
// a Shaper (tests) the site is "domain:NAME" and neither is shown.
type ViewItem struct {
	Domain        string           `json:"domain,omitempty"`
	Site          string           `json:"site,omitempty"`
	Binding       string           `json:"binding,omitempty"`
	Provider      string           `json:"provider"`
	Active        int              `json:"active"`
	Delayed       int              `json:"delayed"`
	Connections   int              `json:"connections"` // open and connecting
	OldestSeconds int64            `json:"oldest_seconds"`
	Deferred      int64            `json:"deferred"` // recipients, since the domain record was made
	Bounced       int64            `json:"bounced"`  // recipients bounced or expired, likewise
	BounceClasses map[string]int64 `json:"bounce_classes"`
	LastReply     *LastReply       `json:"last_reply"`
	Suspension    *ViewSuspension  `json:"suspension"`
	Throttle      *ViewThrottle    `json:"throttle"`

	name string
}

// ViewPage is one page of a view; Total counts the rows before paging.
type ViewPage struct {
	By     string     `json:"by"`
	Total  int        `json:"total"`
	Offset int        `json:"offset"`
	Limit  int        `json:"limit"`
	Items  []ViewItem `json:"items"`
}

// pairStats is what settle tells the views about one pair.
type pairStats struct {
	deferred, bounced int64
	classes           map[policy.BounceClass]int64
	last              LastReply
	hasLast           bool
}

// viewStats are a domain's pairStats by binding slot; on domainState.
type viewStats struct {
	mu    sync.Mutex
	pairs []pairStats
}

// noteView records one settle's verdicts for the views: the counts, the
// classes, and the last reply (that of the last recipient, as updates has
// it for the spool). One lookup and one short lock per settle.
func (s *Scheduler) noteView(domain string, slot int, rcpts []queue.Rcpt, verdicts []verdict, classes []policy.BounceClass, updates map[int]spool.Recipient, now time.Time) {
	dr, ok := s.q.Lookup(domain)
	if !ok || len(rcpts) == 0 || slot < 0 {
		return
	}
	vs := &stateOf(dr).view
	vs.mu.Lock()
	defer vs.mu.Unlock()
	for len(vs.pairs) <= slot {
		vs.pairs = append(vs.pairs, pairStats{})
	}
	ps := &vs.pairs[slot]
	for i, v := range verdicts {
		switch v {
		case vDeferred:
			ps.deferred++
		case vBounced, vExpired:
			ps.bounced++
		default:
			continue
		}
		if ps.classes == nil {
			ps.classes = map[policy.BounceClass]int64{}
		}
		ps.classes[classes[i]]++
	}
	rec := updates[int(rcpts[len(rcpts)-1].Idx)]
	if rec.LastCode != 0 || rec.LastText != "" {
		ps.last = LastReply{At: now, Code: rec.LastCode, Enhanced: rec.LastEnh, Text: rec.LastText}
		ps.hasLast = true
	}
}

// pairRow is one pair's figures before they are grouped into a view.
type pairRow struct {
	domain, binding, site, provider string
	active, delayed, conns          int
	oldest                          int64 // arrival, unix nanos; 0 = nothing queued
	stats                           pairStats
	susp                            *policy.Suspension
	throttle                        *ViewThrottle
}

var viewSorts = map[string]func(a, b *ViewItem) int{
	"active":      func(a, b *ViewItem) int { return cmp.Compare(a.Active, b.Active) },
	"delayed":     func(a, b *ViewItem) int { return cmp.Compare(a.Delayed, b.Delayed) },
	"connections": func(a, b *ViewItem) int { return cmp.Compare(a.Connections, b.Connections) },
	"oldest":      func(a, b *ViewItem) int { return cmp.Compare(a.OldestSeconds, b.OldestSeconds) },
	"deferred":    func(a, b *ViewItem) int { return cmp.Compare(a.Deferred, b.Deferred) },
	"bounced":     func(a, b *ViewItem) int { return cmp.Compare(a.Bounced, b.Bounced) },
	"name":        func(a, b *ViewItem) int { return 0 }, // the tie-break below is the name
}

// checkView fills q's defaults and refuses what it cannot answer; it
// returns the binding slot chosen (-1 = any).
func (s *Scheduler) checkView(q *ViewQuery) (int, error) {
	if q.By == "" {
		q.By = "domain"
	}
	switch q.By {
	case "domain", "site", "binding", "pair":
	default:
		return 0, badQuery("by", "%q is not one of domain, site, binding, pair", q.By)
	}
	if q.Sort == "" {
		q.Sort = "active"
	}
	if viewSorts[q.Sort] == nil {
		return 0, badQuery("sort", "%q is not one of active, delayed, connections, oldest, deferred, bounced, name", q.Sort)
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultViewLimit
	case q.Limit < 0 || q.Limit > MaxViewLimit:
		return 0, badQuery("limit", "%d is not between 1 and %d", q.Limit, MaxViewLimit)
	}
	if q.Offset < 0 {
		return 0, badQuery("offset", "%d is negative", q.Offset)
	}
	q.Domain = strings.ToLower(q.Domain)
	if _, err := path.Match(q.Domain, ""); err != nil {
		return 0, badQuery("domain", "bad pattern %q: %v", q.Domain, err)
	}
	if q.Provider != "" {
		if sh := s.shaper.Load(); sh == nil || !sh.HasProvider(q.Provider) {
			return 0, badQuery("provider", "%q is not a configured provider", q.Provider)
		}
	}
	slot := -1
	if q.Binding != "" {
		b := s.opts.Bindings.ByName(q.Binding)
		if b == nil {
			return 0, badQuery("binding", "%q is not a configured binding", q.Binding)
		}
		slot = b.Slot
	}
	return slot, nil
}

// QueueView returns one page of the view q asks for, at the scheduler's
// clock's now. Safe for concurrent use; see the file comment for its cost.
func (s *Scheduler) QueueView(q ViewQuery) (ViewPage, error) {
	slot, err := s.checkView(&q)
	if err != nil {
		return ViewPage{}, err
	}
	now := s.clock.Now()
	rows := s.pairRows(q, slot, now)
	items := groupRows(q.By, rows, now)
	less := viewSorts[q.Sort]
	slices.SortFunc(items, func(a, b ViewItem) int {
		c := less(&a, &b)
		if q.Desc {
			c = -c
		}
		if c == 0 {
			c = strings.Compare(a.name, b.name)
		}
		return c
	})
	page := ViewPage{By: q.By, Total: len(items), Offset: q.Offset, Limit: q.Limit, Items: []ViewItem{}}
	if q.Offset < len(items) {
		page.Items = items[q.Offset:min(len(items), q.Offset+q.Limit)]
	}
	return page, nil
}

// pairRows reads every pair that has something to show and passes q's
// filters.
func (s *Scheduler) pairRows(q ViewQuery, slot int, now time.Time) []pairRow {
	var rows []pairRow
	var pairs []*queue.Pair
	for _, dr := range s.q.Domains(nil) {
		if q.Domain != "" {
			if ok, _ := path.Match(q.Domain, dr.Name); !ok {
				continue
			}
		}
		ds := stateOf(dr)
		ds.view.mu.Lock()
		stats := slices.Clone(ds.view.pairs)
		for i := range stats {
			// settle keeps counting into the maps once the lock is gone.
			stats[i].classes = maps.Clone(stats[i].classes)
		}
		ds.view.mu.Unlock()
		pairs = dr.Pairs(pairs)
		for _, p := range pairs {
			if slot >= 0 && p.Slot() != slot {
				continue
			}
			r := pairRow{domain: dr.Name, site: "domain:" + dr.Name, binding: fmt.Sprintf("slot-%d", p.Slot()),
				delayed: p.Delayed(), conns: p.Open() + p.Connecting()}
			if b := s.opts.Bindings.Get(p.Slot()); b != nil {
				r.binding = b.Name
			}
			if p.Slot() < len(stats) {
				r.stats = stats[p.Slot()]
			}
			var h *queue.Delivery
			h, r.active = p.Head()
			if h != nil {
				r.oldest = h.Arrival
			}
			if o, ok := p.DelayedOldest(); ok && (r.oldest == 0 || o.UnixNano() < r.oldest) {
				r.oldest = o.UnixNano()
			}
			if r.active == 0 && r.delayed == 0 && r.conns == 0 && r.stats.deferred == 0 && r.stats.bounced == 0 && !r.stats.hasLast {
				continue // a pair made by a lookup, never used
			}
			if ps := s.shapeOf(p); ps != nil {
				r.site, r.provider = ps.where.Site, ps.where.Provider
				if sp, ok := s.suspended(ps, now); ok {
					r.susp = &sp
				}
				r.throttle = s.throttleOf(ps, now)
			}
			if q.Provider != "" && r.provider != q.Provider {
				continue
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// throttleOf returns the most specific rule or operator throttle in force
// over the pair, nil for none.
func (s *Scheduler) throttleOf(ps *pairShape, now time.Time) *ViewThrottle {
	if s.overrides.Len() == 0 {
		return nil
	}
	c := s.policyCache(ps)
	var all []policy.Override
	all = append(all, c.dom...)
	all = append(all, c.site...)
	all = append(all, c.prov...)
	if c.bind != nil {
		all = append(all, *c.bind)
	}
	for i := range all {
		o := &all[i]
		if now.Before(o.Start) || o.Expired(now) {
			continue
		}
		t := &ViewThrottle{Scope: o.Scope, Until: o.Until()}
		if o.MaxMessageRate != nil {
			t.Rate = o.Rate(policy.Rate{}, now).String()
		}
		return t
	}
	return nil
}

// groupRows sums the pair rows into the view's rows.
func groupRows(by string, rows []pairRow, now time.Time) []ViewItem {
	idx := map[string]int{}
	var items []ViewItem
	oldest := map[string]int64{}
	for i := range rows {
		r := &rows[i]
		var key string
		it := ViewItem{}
		switch by {
		case "domain":
			key, it.Domain, it.Provider = r.domain, r.domain, r.provider
		case "site":
			key, it.Site, it.Provider = r.site, r.site, r.provider
		case "binding":
			key, it.Binding = r.binding, r.binding
		case "pair":
			key, it.Domain, it.Binding, it.Provider = r.domain+"|"+r.binding, r.domain, r.binding, r.provider
		}
		j, ok := idx[key]
		if !ok {
			it.name = key
			it.BounceClasses = map[string]int64{}
			j = len(items)
			idx[key] = j
			items = append(items, it)
		}
		t := &items[j]
		t.Active += r.active
		t.Delayed += r.delayed
		t.Connections += r.conns
		t.Deferred += r.stats.deferred
		t.Bounced += r.stats.bounced
		for c, n := range r.stats.classes {
			t.BounceClasses[strconv.Itoa(int(c))] += n
		}
		if r.oldest != 0 && (oldest[key] == 0 || r.oldest < oldest[key]) {
			oldest[key] = r.oldest
		}
		if r.stats.hasLast && (t.LastReply == nil || r.stats.last.At.After(t.LastReply.At)) {
			lr := r.stats.last
			t.LastReply = &lr
		}
		if sp := r.susp; sp != nil && (t.Suspension == nil || sp.Until.After(t.Suspension.Until)) {
			by := sp.Source
			if sp.Rule != "" {
				by += ":" + sp.Rule
			}
			t.Suspension = &ViewSuspension{ID: sp.ID, Scope: policy.ScopeKey(sp.Kind, sp.Name, sp.Binding),
				Until: sp.Until, Reason: sp.Reason, By: by}
		}
		if t.Throttle == nil {
			t.Throttle = r.throttle
		}
	}
	for i := range items {
		if o := oldest[items[i].name]; o != 0 {
			items[i].OldestSeconds = max(0, int64(now.Sub(time.Unix(0, o))/time.Second))
		}
	}
	return items
}

// Message listing limits.
const (
	DefaultMessageLimit = 100
	MaxMessageLimit     = 1000
	// maxHeaderBlock bounds what Message reads of a body for its header
	// block: a 50 MB message is never read for it.
	maxHeaderBlock = 64 << 10
)

// MessageQuery chooses queued mail for Messages: a Domain, a pair
// (Domain and Binding) or a Sender — exactly one chooser, as a cancel's
// Selector.
type MessageQuery struct {
	Domain  string // any case; in mx.Canonical form after the check
	Binding string // with Domain: that pair only
	Sender  string // the envelope sender, compared without case
	Limit   int    // 0 is DefaultMessageLimit; at most MaxMessageLimit
	After   string // a queue id: only later ones (the previous page's Next)
}

// MessageItem is one queued delivery: a message's recipients at one
// domain on one binding.
type MessageItem struct {
	QueueID     string     `json:"queue_id"`
	Sender      string     `json:"sender"`
	Domain      string     `json:"domain"`
	Binding     string     `json:"binding"`
	Arrival     time.Time  `json:"arrival"`
	Size        int64      `json:"size"`
	Recipients  []string   `json:"recipients"`
	Attempts    int        `json:"attempts"`
	NextAttempt *time.Time `json:"next_attempt"` // delayed only
	State       string     `json:"state"`        // active or delayed
}

// MessagePage is one page of Messages; Next is the After of the next
// page, "" when this one is the last.
type MessagePage struct {
	Items []MessageItem `json:"items"`
	Next  string        `json:"next"`
}

// checkMessages fills q's defaults, refuses a bad query and returns the
// match and the binding slot (-1 = any).
func (s *Scheduler) checkMessages(q *MessageQuery) (func(*queue.Delivery) bool, error) {
	switch {
	case q.Limit == 0:
		q.Limit = DefaultMessageLimit
	case q.Limit < 0 || q.Limit > MaxMessageLimit:
		return nil, badQuery("limit", "%d is not between 1 and %d", q.Limit, MaxMessageLimit)
	}
	switch {
	case q.Domain != "" && q.Sender != "":
		return nil, badQuery("sender", "give a domain (and binding) or a sender, not both")
	case q.Domain == "" && q.Sender == "" && q.Binding != "":
		return nil, badQuery("domain", "required with binding (a pair)")
	case q.Domain == "" && q.Sender == "":
		return nil, badQuery("domain", "give a domain, a domain and binding, or a sender")
	case q.Sender != "" && q.Binding != "":
		return nil, badQuery("binding", "not with sender")
	}
	slot := -1
	if q.Binding != "" {
		b := s.opts.Bindings.ByName(q.Binding)
		if b == nil {
			return nil, badQuery("binding", "%q is not a configured binding", q.Binding)
		}
		slot = b.Slot
	}
	after := q.After
	if q.Domain != "" {
		dom, err := mx.Canonical(q.Domain)
		if err != nil {
			return nil, badQuery("domain", "%q: %v", q.Domain, err)
		}
		q.Domain = dom
		return func(d *queue.Delivery) bool {
			return d.MsgID > after && d.Domain == dom && (slot < 0 || int(d.Slot) == slot)
		}, nil
	}
	snd := q.Sender
	return func(d *queue.Delivery) bool { return d.MsgID > after && strings.EqualFold(d.Sender, snd) }, nil
}

// msgPicks keeps the earliest queue ids among what a walk offers, at most
// a few pages' worth at a time: a walk of 500,000 deliveries to one
// sender holds 4×limit items, not 500,000. Once limit ids are kept, the
// last of them is the cutoff: a later id cannot be on the page, and is
// passed over before anything is built or remembered for it.
type msgPicks struct {
	limit  int
	items  []msgPick
	cutoff string // "" until limit ids are kept
}

// msgPick is an item with its slot: with the id and domain, the key a
// delivery seen by two walks (moved between them) is listed once by.
type msgPick struct {
	MessageItem
	slot int32
}

func (m *msgPicks) add(s *Scheduler, d *queue.Delivery, delayed bool) {
	if m.cutoff != "" && d.MsgID > m.cutoff {
		return
	}
	it := MessageItem{QueueID: d.MsgID, Sender: d.Sender, Domain: d.Domain, Binding: fmt.Sprintf("slot-%d", d.Slot),
		Arrival: time.Unix(0, d.Arrival), Size: d.Size, Attempts: int(d.Attempts), State: "active"}
	if b := s.opts.Bindings.Get(int(d.Slot)); b != nil {
		it.Binding = b.Name
	}
	for _, r := range d.Rcpts {
		it.Recipients = append(it.Recipients, r.Addr)
	}
	if delayed {
		t := d.NextAttempt()
		it.NextAttempt, it.State = &t, "delayed"
	}
	m.items = append(m.items, msgPick{it, d.Slot})
	if len(m.items) >= 4*m.limit {
		m.trim()
	}
}

// trim sorts the items, lists a delivery seen twice once (as the later
// walk saw it: the sort is stable), and keeps those of the first limit
// queue ids (a message's deliveries to several domains stay on one page).
func (m *msgPicks) trim() {
	slices.SortStableFunc(m.items, func(a, b msgPick) int {
		return cmp.Or(strings.Compare(a.QueueID, b.QueueID), strings.Compare(a.Domain, b.Domain),
			strings.Compare(a.Binding, b.Binding), cmp.Compare(a.slot, b.slot))
	})
	kept := m.items[:0]
	for i, it := range m.items {
		if i+1 < len(m.items) {
			if n := m.items[i+1]; n.QueueID == it.QueueID && n.Domain == it.Domain && n.slot == it.slot {
				continue // the same delivery again, later
			}
		}
		kept = append(kept, it)
	}
	clear(m.items[len(kept):]) // let the dropped items' strings go
	m.items = kept
	ids := 0
	for i := range m.items {
		if i == 0 || m.items[i].QueueID != m.items[i-1].QueueID {
			ids++
			if ids > m.limit {
				clear(m.items[i:])
				m.items = m.items[:i]
				break
			}
		}
	}
	if ids >= m.limit {
		m.cutoff = m.items[len(m.items)-1].QueueID
	}
}

// Messages lists the queued deliveries q chooses, by queue id (time
// order), one page at a time. It walks the delayed queue, then one
// domain's active queues for a domain or pair, every domain's for a
// sender, each under that queue's own lock only, never tickMu: a page
// must not stop Tick or a settle's Delay for longer than one walk. A
// delivery Tick or Flush moves from the delayed queue to an active one
// between the walks is seen twice and listed once, as active (the walks
// go in that order so the moves the scheduler makes all the time are
// never missed); one a retire or rebind moves between active queues
// meanwhile may be missed or listed on both pairs. A delivery in a
// session's hands at that moment is not listed.
func (s *Scheduler) Messages(q MessageQuery) (MessagePage, error) {
	match, err := s.checkMessages(&q)
	if err != nil {
		return MessagePage{}, err
	}
	picks := &msgPicks{limit: q.Limit}
	s.q.WalkDelayed(func(d *queue.Delivery) bool {
		if match(d) {
			picks.add(s, d, true)
		}
		return true
	})
	walk := func(dr *queue.DomainRecord) {
		dr.WalkActive(func(d *queue.Delivery) bool {
			if match(d) {
				picks.add(s, d, false)
			}
			return true
		})
	}
	if q.Domain != "" {
		if dr, ok := s.q.Lookup(q.Domain); ok {
			walk(dr)
		}
	} else {
		for _, dr := range s.q.Domains(nil) {
			walk(dr)
		}
	}
	picks.trim()
	page := MessagePage{Items: make([]MessageItem, len(picks.items))}
	for i, it := range picks.items {
		page.Items[i] = it.MessageItem
	}
	if n := len(page.Items); n > 0 {
		ids := 0
		for i := range page.Items {
			if i == 0 || page.Items[i].QueueID != page.Items[i-1].QueueID {
				ids++
			}
		}
		if ids == q.Limit {
			page.Next = page.Items[n-1].QueueID
		}
	}
	return page, nil
}

// MessageRecipient is one recipient of a spooled message as the spool
// has it.
type MessageRecipient struct {
	Addr        string     `json:"addr"`
	State       string     `json:"state"`
	Attempts    int        `json:"attempts"`
	LastCode    int        `json:"last_code"`
	LastEnh     string     `json:"last_enhanced"`
	LastText    string     `json:"last_text"`
	LastMX      string     `json:"last_mx"`
	UpdatedAt   *time.Time `json:"updated_at"`
	NextAttempt *time.Time `json:"next_attempt"`
	Notify      string     `json:"notify"`
	ORcpt       string     `json:"orcpt"`
}

// MessageDetail is a spooled message: its envelope, its recipients'
// states, whether the scheduler holds it, and its header block.
type MessageDetail struct {
	QueueID    string             `json:"queue_id"`
	Sender     string             `json:"sender"`
	EnvID      string             `json:"envid"`
	Ret        string             `json:"ret"`
	SMTPUTF8   bool               `json:"smtputf8"`
	EightBit   bool               `json:"eight_bit"`
	Size       int64              `json:"size"`
	Arrival    time.Time          `json:"arrival"`
	Group      string             `json:"group"`
	Binding    string             `json:"binding"`
	Priority   int                `json:"priority"`
	MessageID  string             `json:"message_id"`
	DSNFor     string             `json:"dsn_for"`
	Held       bool               `json:"held"` // the scheduler has recipients of it pending (queued or in flight)
	Recipients []MessageRecipient `json:"recipients"`
	Headers    string             `json:"headers"`           // the header block, up to the blank line
	Truncated  bool               `json:"headers_truncated"` // it was longer than 64 KiB
}

var retNames = [...]string{spool.RetUnset: "", spool.RetFull: "FULL", spool.RetHdrs: "HDRS"}

// Message returns the spooled message id. Its header block is read from
// the body's first 64 KiB at most. An id the spool does not have is an
// error wrapping ErrNotQueued.
func (s *Scheduler) Message(id string) (MessageDetail, error) {
	m, err := s.opts.Spool.Get(id)
	if errors.Is(err, spool.ErrNotFound) {
		return MessageDetail{}, fmt.Errorf("scheduler: message %s: %w", id, ErrNotQueued)
	}
	if err != nil {
		return MessageDetail{}, fmt.Errorf("scheduler: message %s: %w", id, err)
	}
	md := MessageDetail{QueueID: m.ID, Sender: m.Sender, EnvID: m.EnvID, SMTPUTF8: m.SMTPUTF8, EightBit: m.EightBit,
		Size: m.Size, Arrival: m.Received, Group: m.Group, Binding: m.Binding, Priority: m.Priority,
		MessageID: m.MessageID, DSNFor: m.DSNFor, Recipients: []MessageRecipient{}}
	if int(m.Ret) < len(retNames) {
		md.Ret = retNames[m.Ret]
	}
	s.mu.Lock()
	_, md.Held = s.msgs[id]
	s.mu.Unlock()
	for _, r := range m.Recipients {
		mr := MessageRecipient{Addr: r.Addr, State: r.State.String(), Attempts: r.Attempts, LastCode: r.LastCode,
			LastEnh: r.LastEnh, LastText: r.LastText, LastMX: r.LastMX, Notify: notifyString(r.Notify), ORcpt: r.ORcpt}
		if !r.UpdatedAt.IsZero() {
			t := r.UpdatedAt
			mr.UpdatedAt = &t
		}
		if !r.NextAttempt.IsZero() {
			t := r.NextAttempt
			mr.NextAttempt = &t
		}
		md.Recipients = append(md.Recipients, mr)
	}
	md.Headers, md.Truncated, err = s.headerBlock(id)
	if errors.Is(err, spool.ErrNotFound) {
		return MessageDetail{}, fmt.Errorf("scheduler: message %s: %w", id, ErrNotQueued)
	}
	if err != nil {
		return MessageDetail{}, fmt.Errorf("scheduler: message %s: header block: %w", id, err)
	}
	return md, nil
}

// headerBlock reads the body's header block: up to and without the blank
// line that ends it, at most maxHeaderBlock bytes.
func (s *Scheduler) headerBlock(id string) (string, bool, error) {
	br, err := s.opts.Spool.OpenBody(id)
	if err != nil {
		return "", false, err
	}
	defer br.Close()
	buf := make([]byte, 0, 4096)
	for len(buf) < maxHeaderBlock {
		chunk := make([]byte, min(16<<10, maxHeaderBlock-len(buf)))
		n, err := br.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := headerEnd(buf); i >= 0 {
			return string(buf[:i]), false, nil
		}
		if errors.Is(err, io.EOF) {
			return string(buf), false, nil // a body of headers only
		}
		if err != nil {
			return "", false, err
		}
	}
	return string(buf), true, nil
}

// headerEnd returns where the blank line ending the header block starts
// (after the last header's line end), -1 when it is not in b.
func headerEnd(b []byte) int {
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		if j := bytes.Index(b, []byte("\n\n")); j >= 0 && j < i {
			return j + 1
		}
		return i + 2
	}
	if j := bytes.Index(b, []byte("\n\n")); j >= 0 {
		return j + 1
	}
	return -1
}

// MessageBody opens the spooled body of id for reading (the caller closes
// it); its Size is the body's. An id the spool does not have is an error
// wrapping ErrNotQueued.
func (s *Scheduler) MessageBody(id string) (*spool.BodyReader, error) {
	br, err := s.opts.Spool.OpenBody(id)
	if errors.Is(err, spool.ErrNotFound) {
		return nil, fmt.Errorf("scheduler: message %s: %w", id, ErrNotQueued)
	}
	if err != nil {
		return nil, fmt.Errorf("scheduler: message %s: %w", id, err)
	}
	return br, nil
}

// notifyString writes a NOTIFY set as RFC 3461 does ("SUCCESS,DELAY");
// "" when it was not given.
func notifyString(n spool.Notify) string {
	if n&spool.NotifyNever != 0 {
		return "NEVER"
	}
	var parts []string
	for _, b := range []struct {
		bit  spool.Notify
		name string
	}{{spool.NotifySuccess, "SUCCESS"}, {spool.NotifyFailure, "FAILURE"}, {spool.NotifyDelay, "DELAY"}} {
		if n&b.bit != 0 {
			parts = append(parts, b.name)
		}
	}
	return strings.Join(parts, ",")
}
