package policy

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ScopeKind names what a suspension, an override or a rule's action
// applies to.
type ScopeKind string

// The scope kinds.
const (
	ScopeDomain   ScopeKind = "domain"   // a recipient domain
	ScopeSite     ScopeKind = "site"     // a domain's MX host set (every domain on it)
	ScopeProvider ScopeKind = "provider" // every site of a provider
	ScopeBinding  ScopeKind = "binding"  // a binding, to every destination
	ScopePair     ScopeKind = "pair"     // one domain from one binding
)

// Suspension sources.
const (
	SourceConfig   = "config"
	SourceRule     = "rule"
	SourceOperator = "operator"
	SourceAdaptive = "adaptive"
)

// Suspension is a pause of deliveries to a scope: its mail stays queued
// (its age still counts toward expiry) and nothing is sent to the scope
// from Start until Until. Every suspension ends: a zero Until is never in
// force.
type Suspension struct {
	ID   string // unique and short ("s42"), stable while it is in force
	Kind ScopeKind
	// Name is the domain name, site key or provider name; "" for
	// ScopeBinding. Domain names are compared lower-cased.
	Name string
	// Binding narrows the suspension to one binding ("" = every binding):
	// a rule suspends binding × site, the other bindings keep sending.
	// For ScopePair and ScopeBinding it is the binding.
	Binding      string
	Reason       string // says why, e.g. the reply that matched
	Source       string // SourceConfig, SourceRule, SourceOperator, SourceAdaptive
	Rule         string // the rule's name when Source is SourceRule
	Start, Until time.Time
	// Node is the cluster node that put it in force when that is another
	// node (internal/cluster); "" for this node's own.
	Node string `json:",omitempty"`
}

// InForce reports whether sp pauses deliveries at now.
func (sp *Suspension) InForce(now time.Time) bool {
	return !now.Before(sp.Start) && now.Before(sp.Until)
}

type scopeKey struct {
	kind          ScopeKind
	name, binding string
}

func keyOf(kind ScopeKind, name, binding string) scopeKey {
	if kind == ScopeDomain || kind == ScopePair {
		name = strings.ToLower(strings.TrimSuffix(name, "."))
	}
	if kind == ScopeBinding {
		name = ""
	}
	if kind == ScopePair && binding == "" {
		kind = ScopeDomain // a pair of every binding is the domain
	}
	return scopeKey{kind, name, binding}
}

// Suspensions holds the suspensions, at most one per scope (kind, name,
// binding). It is safe for concurrent use. Check runs for every pair on
// every tick (100k pairs), so while there are none it costs one atomic
// load, and otherwise a handful of map lookups under a read lock.
type Suspensions struct {
	n      atomic.Int64  // len(by), read without the lock
	gen    atomic.Uint64 // bumped by every change, for callers that cache Covering
	mu     sync.RWMutex
	by     map[scopeKey]*Suspension
	byID   map[string]*Suspension
	lastID uint64
	// prefix is put before every new id ("node1-" with a cluster: ids are
	// then unique across the nodes, whose suspensions each one holds).
	prefix string
}

// SetIDPrefix has new ids start with prefix (a cluster node's "node1-"):
// each node numbers its own, and a suspension of another node held here
// keeps the id it got there, so the prefix keeps them apart.
func (s *Suspensions) SetIDPrefix(prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prefix = prefix
}

// newID hands out the next id (mu held).
func (s *Suspensions) newID() string {
	s.lastID++
	return s.prefix + "s" + strconv.FormatUint(s.lastID, 10)
}

// idNumber is the number of one of this set's ids ("node1-s42" → 42).
func (s *Suspensions) idNumber(id string) (uint64, bool) {
	rest, ok := strings.CutPrefix(id, s.prefix+"s")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

// NewSuspensions returns an empty set.
func NewSuspensions() *Suspensions {
	return &Suspensions{by: map[scopeKey]*Suspension{}, byID: map[string]*Suspension{}}
}

// Add puts sp in force and returns the suspension in force for its scope:
// sp with a fresh ID, or, when the scope is already suspended until later
// than sp.Until, the existing one (sp is then dropped: a rule firing again
// never shortens an operator's longer suspension).
func (s *Suspensions) Add(sp Suspension) Suspension {
	got, _ := s.Put(sp)
	return got
}

// Put is Add that also reports whether sp was put in force (false: the
// scope was suspended until as late already, and that one is returned),
// so that a rule firing again on a scope it suspended is not logged twice.
func (s *Suspensions) Put(sp Suspension) (Suspension, bool) {
	sp.ID = ""
	return s.put(sp)
}

// Adopt is Put of a suspension another node put in force, keeping the
// id it has there (unique across the nodes by its prefix), so that it is
// lifted by that id on any node. An id held here by another scope's
// suspension, or none, gets a fresh one.
func (s *Suspensions) Adopt(sp Suspension) (Suspension, bool) {
	return s.put(sp)
}

func (s *Suspensions) put(sp Suspension) (Suspension, bool) {
	k := keyOf(sp.Kind, sp.Name, sp.Binding)
	sp.Kind, sp.Name = k.kind, k.name
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.by[k]; old != nil {
		if !sp.Until.After(old.Until) {
			return *old, false
		}
		delete(s.byID, old.ID)
	}
	if o := s.byID[sp.ID]; sp.ID == "" || (o != nil && keyOf(o.Kind, o.Name, o.Binding) != k) {
		sp.ID = s.newID()
	}
	p := &sp
	s.by[k] = p
	s.byID[sp.ID] = p
	s.n.Store(int64(len(s.by)))
	s.gen.Add(1)
	return sp, true
}

// Lift ends the suspension id now, returning it.
func (s *Suspensions) Lift(id string) (Suspension, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.byID[id]
	if p == nil {
		return Suspension{}, false
	}
	s.remove(p)
	return *p, true
}

// LiftScope ends the suspension of the scope (kind, name, binding) now,
// returning it.
func (s *Suspensions) LiftScope(kind ScopeKind, name, binding string) (Suspension, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.by[keyOf(kind, name, binding)]
	if p == nil {
		return Suspension{}, false
	}
	s.remove(p)
	return *p, true
}

func (s *Suspensions) remove(p *Suspension) {
	delete(s.by, keyOf(p.Kind, p.Name, p.Binding))
	delete(s.byID, p.ID)
	s.n.Store(int64(len(s.by)))
	s.gen.Add(1)
}

// List returns the suspensions not ended at now (in force, or starting
// later), the soonest to end first.
func (s *Suspensions) List(now time.Time) []Suspension {
	s.mu.RLock()
	out := make([]Suspension, 0, len(s.by))
	for _, p := range s.by {
		if now.Before(p.Until) {
			out = append(out, *p)
		}
	}
	s.mu.RUnlock()
	sortSuspensions(out)
	return out
}

// Len is the number of suspensions held, ended or not.
func (s *Suspensions) Len() int { return int(s.n.Load()) }

// Gen changes whenever a suspension is added, lifted or expired: a caller
// may keep what Covering returned for as long as Gen is the same.
func (s *Suspensions) Gen() uint64 { return s.gen.Load() }

// Covering returns every suspension held (in force, not yet started, or
// ended and not yet expired) whose scope covers the pair, as Check judges
// coverage; the caller checks InForce at its time.
func (s *Suspensions) Covering(domain, site, provider, binding string) []Suspension {
	if s.n.Load() == 0 {
		return nil
	}
	var out []Suspension
	s.mu.RLock()
	defer s.mu.RUnlock()
	try := func(k scopeKey) {
		if p := s.by[k]; p != nil {
			out = append(out, *p)
		}
	}
	if domain != "" {
		try(scopeKey{ScopeDomain, domain, ""})
		try(scopeKey{ScopeDomain, domain, binding})
		try(scopeKey{ScopePair, domain, binding})
	}
	if site != "" {
		try(scopeKey{ScopeSite, site, ""})
		try(scopeKey{ScopeSite, site, binding})
	}
	if provider != "" {
		try(scopeKey{ScopeProvider, provider, ""})
		try(scopeKey{ScopeProvider, provider, binding})
	}
	try(scopeKey{ScopeBinding, "", binding})
	return out
}

// Check returns the suspension in force at now that covers the pair
// (domain, binding) whose domain is on site of provider (each "" when not
// known), of any kind; when several do, the one that ends last. domain is
// lower-case, as the queue keeps it.
func (s *Suspensions) Check(now time.Time, domain, site, provider, binding string) (Suspension, bool) {
	if s.n.Load() == 0 {
		return Suspension{}, false
	}
	var best *Suspension
	s.mu.RLock()
	defer s.mu.RUnlock()
	try := func(k scopeKey) {
		if p := s.by[k]; p != nil && p.InForce(now) && (best == nil || p.Until.After(best.Until)) {
			best = p
		}
	}
	if domain != "" {
		try(scopeKey{ScopeDomain, domain, ""})
		try(scopeKey{ScopeDomain, domain, binding})
		try(scopeKey{ScopePair, domain, binding})
	}
	if site != "" {
		try(scopeKey{ScopeSite, site, ""})
		try(scopeKey{ScopeSite, site, binding})
	}
	if provider != "" {
		try(scopeKey{ScopeProvider, provider, ""})
		try(scopeKey{ScopeProvider, provider, binding})
	}
	try(scopeKey{ScopeBinding, "", binding})
	if best == nil {
		return Suspension{}, false
	}
	return *best, true
}

// Expire removes the suspensions ended at now and returns them, the
// soonest ended first, for the caller to log "suspension ended".
func (s *Suspensions) Expire(now time.Time) []Suspension {
	if s.n.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	var out []Suspension
	for _, p := range s.by {
		if !now.Before(p.Until) {
			out = append(out, *p)
			s.remove(p)
		}
	}
	s.mu.Unlock()
	sortSuspensions(out)
	return out
}

func sortSuspensions(ss []Suspension) {
	sort.Slice(ss, func(i, j int) bool {
		if !ss[i].Until.Equal(ss[j].Until) {
			return ss[i].Until.Before(ss[j].Until)
		}
		return ss[i].ID < ss[j].ID
	})
}

// ScopeKey is the key of a scope's budgets and overrides: kind, name and
// binding ("" = every binding), as "site:mx1.a,mx2.a|b1".
func ScopeKey(kind ScopeKind, name, binding string) string {
	return string(kind) + ":" + name + "|" + binding
}

// All returns every suspension held, ended or not, sorted by Until (for
// saving them).
func (s *Suspensions) All() []Suspension {
	s.mu.RLock()
	out := make([]Suspension, 0, len(s.by))
	for _, p := range s.by {
		out = append(out, *p)
	}
	s.mu.RUnlock()
	sortSuspensions(out)
	return out
}

// Restore puts a saved suspension back with its id (a restart), unless its
// scope holds one ending later; new ids continue after the highest
// restored, so a saved id never names another suspension.
func (s *Suspensions) Restore(sp Suspension) {
	k := keyOf(sp.Kind, sp.Name, sp.Binding)
	sp.Kind, sp.Name = k.kind, k.name
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.idNumber(sp.ID); ok && n > s.lastID {
		s.lastID = n
	}
	if sp.ID == "" || s.byID[sp.ID] != nil {
		sp.ID = s.newID()
	}
	if old := s.by[k]; old != nil {
		if !sp.Until.After(old.Until) {
			return
		}
		delete(s.byID, old.ID)
	}
	p := &sp
	s.by[k] = p
	s.byID[sp.ID] = p
	s.n.Store(int64(len(s.by)))
	s.gen.Add(1)
}

// LastID is the number of the last id handed out ("s42" → 42), for saving.
func (s *Suspensions) LastID() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.lastID
}

// NoteID makes new ids start after n (a restart: ids handed out before it,
// even of suspensions since ended, are not handed out again).
func (s *Suspensions) NoteID(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > s.lastID {
		s.lastID = n
	}
}
