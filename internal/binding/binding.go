// Package binding owns mtad's bindings (a source address plus the EHLO name
// said from it), binding groups (named, weighted sets of bindings), and the
// choice of a binding for a delivery.
//
// A Set is built from configuration and changed only by a reload (Apply),
// which swaps a whole snapshot atomically: bindings keep their slot (index)
// for the life of the Set, which is what the queue, connection pool and
// hooks key on. A new binding gets a new slot at the end; a removed one is
// retired, its slot never reused while the process lives, so a slot number
// held anywhere never comes to mean another binding. Pick, which runs once
// per delivery, never blocks on anything but a tiny per-group lock.
//
// Picking within a group is smooth weighted round-robin (the nginx
// algorithm): over every run of sum(weights) picks, each binding is chosen
// exactly weight times, interleaved rather than in bursts, so the remote side
// sees a steady mix of source addresses.
//
// The package must never open connections, resolve names, or read
// configuration files: it is given the bindings and answers questions about
// them.
package binding

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
)

// DefaultName is the name of the implicit binding (when none is configured)
// and of the group used when a message names none.
const DefaultName = "default"

// Errors of Pick and Check, wrapped with the name at fault; test with
// errors.Is.
var (
	ErrUnknownGroup    = errors.New("unknown binding group")
	ErrUnknownBinding  = errors.New("unknown binding")
	ErrNoUsableBinding = errors.New("no usable binding: all suspended")
)

// Config describes one binding.
type Config struct {
	Name string
	// Address is the source IPv4 or IPv6 address; "" lets the system choose.
	Address string
	// EHLO is the name said in EHLO; "" = the Set's hostname.
	EHLO string
}

// GroupConfig describes one binding group.
type GroupConfig struct {
	Name    string
	Members []Member
}

// Member is one binding of a group with its weight (at least 1).
type Member struct {
	Name   string
	Weight int
}

// Binding is one source address and its EHLO name. Its fields are fixed:
// a reload that changes a binding's address or EHLO makes a new Binding for
// the same slot (Set.Get returns it from then on; a connection already
// dialled from the old one finishes with it). The suspension and
// retirement flags belong to the slot and are shared by its versions.
type Binding struct {
	// Name is the binding's configured name.
	Name string
	// Slot is the binding's index in its Set, stable for the Set's life.
	Slot int
	// Addr is the source address to dial from; the zero (invalid) Addr
	// means let the system choose.
	Addr netip.Addr
	// EHLO is the name to say in EHLO from this binding.
	EHLO string

	st *slotState
}

// slotState is what a slot's versions share.
type slotState struct {
	suspended atomic.Bool
	retired   atomic.Bool
}

// Suspended reports whether the binding is suspended: Pick gives it no new
// deliveries. Safe for concurrent use.
func (b *Binding) Suspended() bool { return b.st.suspended.Load() }

// SetSuspended suspends or resumes the binding. Deliveries already assigned
// to it are not moved. Safe for concurrent use.
func (b *Binding) SetSuspended(s bool) { b.st.suspended.Store(s) }

// Retired reports whether a reload removed the binding: Pick never returns
// it again, and its slot is never given to another binding. Deliveries
// still on it are for the owner of the queues to move.
func (b *Binding) Retired() bool { return b.st.retired.Load() }

// LocalAddr returns the address to bind an outbound TCP connection to, or nil
// when the system chooses (for net.Dialer.LocalAddr).
func (b *Binding) LocalAddr() net.Addr {
	if !b.Addr.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(b.Addr, 0))
}

// group is a binding group with its smooth-WRR state.
type group struct {
	name    string
	members []*member
	mu      sync.Mutex // guards every member's current
}

type member struct {
	b       *Binding
	weight  int
	current int
}

// Set is the collection of bindings and groups. Readers see one snapshot,
// swapped whole by Apply, so Pick never waits on a reload. All methods are
// safe for concurrent use.
type Set struct {
	hostname string
	isLocal  func(netip.Addr) bool // nil: the host's addresses at each build

	mu   sync.Mutex // serialises Apply
	snap atomic.Pointer[snapshot]
}

// snapshot is one generation of the Set.
type snapshot struct {
	bindings []*Binding          // by slot; retired slots stay, never reused
	byName   map[string]*Binding // live bindings only
	groups   map[string]*group   // live bindings only
}

// Change says what an Apply did.
type Change struct {
	Added   []string   // new bindings, each on a new slot
	Changed []string   // kept bindings whose address or EHLO changed
	Retired []*Binding // removed bindings (Retired() is now true)
	Groups  bool       // a group was added, removed, or its members or weights changed
}

// Empty reports whether the Apply changed nothing.
func (c Change) Empty() bool {
	return len(c.Added) == 0 && len(c.Changed) == 0 && len(c.Retired) == 0 && !c.Groups
}

// New builds a Set. hostname is the EHLO name of bindings that set none.
// isLocal reports whether an address belongs to this host; nil checks the
// host's interface addresses (with all of 127.0.0.0/8 counted as local, since
// Linux routes it all to lo). A binding address that is not local is an error
// naming the config key (bindings[2].address), the binding and the address,
// as are duplicate or empty names, bad addresses, groups naming unknown
// bindings and weights below 1.
//
// With no bindings, the Set has one binding "default" (system-chosen source,
// EHLO = hostname) in a group "default". With bindings but no group
// "default", group "default" is every binding with weight 1.
func New(bindings []Config, groups []GroupConfig, hostname string, isLocal func(netip.Addr) bool) (*Set, error) {
	s := &Set{hostname: hostname, isLocal: isLocal}
	snap, _, err := s.build(bindings, groups, nil)
	if err != nil {
		return nil, err
	}
	s.snap.Store(snap)
	return s, nil
}

// Apply replaces the bindings and groups, checking everything New checks;
// on an error nothing changes. A binding kept by name keeps its slot and
// its suspension (a new address or EHLO applies to the next connection); a
// new one gets the next unused slot; a removed one is retired: Pick never
// returns it, Get still does (for the connections and deliveries still on
// it). Groups apply to the next Pick.
func (s *Set) Apply(bindings []Config, groups []GroupConfig) (Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.snap.Load()
	next, ch, err := s.build(bindings, groups, prev)
	if err != nil {
		return Change{}, err
	}
	// Retired before the swap: a Pick still on the old snapshot's groups
	// skips a retired member as it skips a suspended one.
	for _, b := range ch.Retired {
		b.st.retired.Store(true)
	}
	s.snap.Store(next)
	return ch, nil
}

// build makes the snapshot for bindings and groups, keeping prev's slots
// (prev nil: a new Set).
func (s *Set) build(bindings []Config, groups []GroupConfig, prev *snapshot) (*snapshot, Change, error) {
	var ch Change
	if len(bindings) == 0 {
		bindings = []Config{{Name: DefaultName}}
	}
	n := &snapshot{
		byName: make(map[string]*Binding, len(bindings)),
		groups: make(map[string]*group, len(groups)+1),
	}
	if prev != nil {
		n.bindings = append(n.bindings, prev.bindings...)
	}
	isLocal := s.isLocal
	for i, c := range bindings {
		if c.Name == "" {
			return nil, ch, fmt.Errorf("bindings[%d].name: binding %d: empty name", i, i)
		}
		if _, dup := n.byName[c.Name]; dup {
			return nil, ch, fmt.Errorf("bindings[%d].name: binding %q: defined twice", i, c.Name)
		}
		b := &Binding{Name: c.Name, EHLO: c.EHLO}
		if b.EHLO == "" {
			b.EHLO = s.hostname
		}
		if c.Address != "" {
			a, err := netip.ParseAddr(c.Address)
			if err != nil {
				return nil, ch, fmt.Errorf("bindings[%d].address: binding %q: address %q: %w", i, c.Name, c.Address, err)
			}
			b.Addr = a.Unmap()
			if isLocal == nil {
				if isLocal, err = hostAddrs(); err != nil {
					return nil, ch, fmt.Errorf("bindings[%d].address: binding %q: %w", i, c.Name, err)
				}
			}
			if !isLocal(b.Addr) {
				return nil, ch, fmt.Errorf("bindings[%d].address: binding %q: address %s is not an address of this host", i, c.Name, b.Addr)
			}
		}
		var old *Binding
		if prev != nil {
			old = prev.byName[c.Name]
		}
		if old != nil {
			b.Slot, b.st = old.Slot, old.st
			if b.Addr != old.Addr || b.EHLO != old.EHLO {
				ch.Changed = append(ch.Changed, b.Name)
			}
		} else {
			b.Slot, b.st = len(n.bindings), &slotState{}
			n.bindings = append(n.bindings, nil)
			if prev != nil {
				ch.Added = append(ch.Added, b.Name)
			}
		}
		n.bindings[b.Slot] = b
		n.byName[b.Name] = b
	}
	if prev != nil {
		for name, b := range prev.byName {
			if n.byName[name] == nil {
				ch.Retired = append(ch.Retired, b)
			}
		}
		sort.Slice(ch.Retired, func(i, j int) bool { return ch.Retired[i].Slot < ch.Retired[j].Slot })
	}

	for gi, gc := range groups {
		if gc.Name == "" {
			return nil, ch, fmt.Errorf("binding_groups[%d].name: binding group with an empty name", gi)
		}
		if _, dup := n.groups[gc.Name]; dup {
			return nil, ch, fmt.Errorf("binding_groups[%d].name: binding group %q: defined twice", gi, gc.Name)
		}
		if len(gc.Members) == 0 {
			return nil, ch, fmt.Errorf("binding_groups[%d].bindings: binding group %q: no bindings", gi, gc.Name)
		}
		g := &group{name: gc.Name}
		seen := map[string]bool{}
		for mi, m := range gc.Members {
			b := n.byName[m.Name]
			switch {
			case b == nil:
				return nil, ch, fmt.Errorf("binding_groups[%d].bindings[%d]: binding group %q: %w %q", gi, mi, gc.Name, ErrUnknownBinding, m.Name)
			case seen[m.Name]:
				return nil, ch, fmt.Errorf("binding_groups[%d].bindings[%d]: binding group %q: binding %q listed twice", gi, mi, gc.Name, m.Name)
			case m.Weight < 1:
				return nil, ch, fmt.Errorf("binding_groups[%d].bindings[%d].weight: binding group %q: binding %q: weight %d is below 1", gi, mi, gc.Name, m.Name, m.Weight)
			}
			seen[m.Name] = true
			g.members = append(g.members, &member{b: b, weight: m.Weight})
		}
		n.groups[g.name] = g
	}
	if _, ok := n.groups[DefaultName]; !ok {
		g := &group{name: DefaultName}
		for _, b := range n.bindings {
			if n.byName[b.Name] == b {
				g.members = append(g.members, &member{b: b, weight: 1})
			}
		}
		n.groups[DefaultName] = g
	}
	if prev != nil {
		ch.Groups = groupsDiffer(prev.groups, n.groups)
	}
	return n, ch, nil
}

// groupsDiffer reports whether two generations' groups differ in names,
// members (by slot) or weights.
func groupsDiffer(a, b map[string]*group) bool {
	if len(a) != len(b) {
		return true
	}
	for name, ga := range a {
		gb := b[name]
		if gb == nil || len(ga.members) != len(gb.members) {
			return true
		}
		for i, m := range ga.members {
			if m.b.Slot != gb.members[i].b.Slot || m.weight != gb.members[i].weight {
				return true
			}
		}
	}
	return false
}

// hostAddrs returns an isLocal that knows the host's interface addresses as
// they are now.
func hostAddrs() (func(netip.Addr) bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	local := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			local[p.Addr().Unmap().WithZone("")] = true
		}
	}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	return func(a netip.Addr) bool {
		a = a.Unmap()
		return loopback.Contains(a) || local[a.WithZone("")]
	}, nil
}

// Pick chooses the binding for a delivery. A non-empty binding names it
// directly; otherwise the binding is chosen from group ("" = "default") by
// smooth weighted round-robin among members that are not suspended. A
// non-empty group must exist even when binding is given. Errors wrap
// ErrUnknownGroup or ErrUnknownBinding (with the name), or ErrNoUsableBinding
// when every candidate, including a directly named binding, is suspended.
func (s *Set) Pick(group, binding string) (*Binding, error) {
	if group == "" {
		group = DefaultName
	}
	snap := s.snap.Load()
	g, ok := snap.groups[group]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownGroup, group)
	}
	if binding != "" {
		b, ok := snap.byName[binding]
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownBinding, binding)
		}
		if b.Suspended() {
			return nil, fmt.Errorf("binding %q: %w", binding, ErrNoUsableBinding)
		}
		return b, nil
	}
	return g.pick()
}

// pick is smooth weighted round-robin: every usable member's current weight
// grows by its weight, the largest wins and pays back the total. Suspended
// members neither grow nor win, so the others share their turns.
func (g *group) pick() (*Binding, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var best *member
	total := 0
	for _, m := range g.members {
		if m.b.Suspended() || m.b.Retired() {
			continue
		}
		m.current += m.weight
		total += m.weight
		if best == nil || m.current > best.current {
			best = m
		}
	}
	if best == nil {
		return nil, fmt.Errorf("binding group %q: %w", g.name, ErrNoUsableBinding)
	}
	best.current -= total
	return best.b, nil
}

// Check reports whether a message may ask for group and binding (either may
// be ""): nil, or an error wrapping ErrUnknownGroup or ErrUnknownBinding.
// Suspension is not checked: it is temporary and the message can wait.
// Injection answers such an error with 550 5.7.0.
func (s *Set) Check(group, binding string) error {
	snap := s.snap.Load()
	if group != "" {
		if _, ok := snap.groups[group]; !ok {
			return fmt.Errorf("%w %q", ErrUnknownGroup, group)
		}
	}
	if binding != "" {
		if _, ok := snap.byName[binding]; !ok {
			return fmt.Errorf("%w %q", ErrUnknownBinding, binding)
		}
	}
	return nil
}

// Get returns the binding in slot, retired or not (its latest version), or
// nil if slot is out of range.
func (s *Set) Get(slot int) *Binding {
	b := s.snap.Load().bindings
	if slot < 0 || slot >= len(b) {
		return nil
	}
	return b[slot]
}

// ByName returns the live binding called name, or nil (also for a retired
// one).
func (s *Set) ByName(name string) *Binding { return s.snap.Load().byName[name] }

// Len returns the number of slots, retired ones included; slots are
// 0 .. Len()-1. It only grows: a holder of per-slot arrays sizes them by
// it or grows them on first sight of a higher slot.
func (s *Set) Len() int { return len(s.snap.Load().bindings) }

// All returns the bindings in slot order, retired ones included. The slice
// is a copy; the bindings are shared.
func (s *Set) All() []*Binding { return append([]*Binding(nil), s.snap.Load().bindings...) }

// Groups returns the group names, including "default", in no set order.
func (s *Set) Groups() []string {
	groups := s.snap.Load().groups
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	return names
}
