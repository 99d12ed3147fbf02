// Package binding owns mtad's bindings (a source address plus the EHLO name
// said from it), binding groups (named, weighted sets of bindings), and the
// choice of a binding for a delivery.
//
// A Set is built once from configuration and never changes shape: bindings
// keep their slot (index) for the life of the Set, which is what the queue,
// connection pool and hooks key on. Only a binding's suspension flag changes
// at run time, atomically, so Pick, which runs once per delivery, never
// blocks on anything but a tiny per-group lock.
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

// Binding is one source address and its EHLO name. Its fields are fixed once
// the Set is built; only the suspension flag changes.
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

	suspended atomic.Bool
}

// Suspended reports whether the binding is suspended: Pick gives it no new
// deliveries. Safe for concurrent use.
func (b *Binding) Suspended() bool { return b.suspended.Load() }

// SetSuspended suspends or resumes the binding. Deliveries already assigned
// to it are not moved. Safe for concurrent use.
func (b *Binding) SetSuspended(s bool) { b.suspended.Store(s) }

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

// Set is the immutable collection of bindings and groups. All methods are
// safe for concurrent use.
type Set struct {
	bindings []*Binding
	byName   map[string]*Binding
	groups   map[string]*group
}

// New builds a Set. hostname is the EHLO name of bindings that set none.
// isLocal reports whether an address belongs to this host; nil checks the
// host's interface addresses (with all of 127.0.0.0/8 counted as local, since
// Linux routes it all to lo). A binding address that is not local is an error
// naming the binding and the address, as are duplicate or empty names, bad
// addresses, groups naming unknown bindings and weights below 1.
//
// With no bindings, the Set has one binding "default" (system-chosen source,
// EHLO = hostname) in a group "default". With bindings but no group
// "default", group "default" is every binding with weight 1.
func New(bindings []Config, groups []GroupConfig, hostname string, isLocal func(netip.Addr) bool) (*Set, error) {
	if len(bindings) == 0 {
		bindings = []Config{{Name: DefaultName}}
	}
	s := &Set{
		byName: make(map[string]*Binding, len(bindings)),
		groups: make(map[string]*group, len(groups)+1),
	}
	for i, c := range bindings {
		if c.Name == "" {
			return nil, fmt.Errorf("binding %d: empty name", i)
		}
		if _, dup := s.byName[c.Name]; dup {
			return nil, fmt.Errorf("binding %q: defined twice", c.Name)
		}
		b := &Binding{Name: c.Name, Slot: i, EHLO: c.EHLO}
		if b.EHLO == "" {
			b.EHLO = hostname
		}
		if c.Address != "" {
			a, err := netip.ParseAddr(c.Address)
			if err != nil {
				return nil, fmt.Errorf("binding %q: address %q: %w", c.Name, c.Address, err)
			}
			b.Addr = a.Unmap()
			if isLocal == nil {
				if isLocal, err = hostAddrs(); err != nil {
					return nil, fmt.Errorf("binding %q: %w", c.Name, err)
				}
			}
			if !isLocal(b.Addr) {
				return nil, fmt.Errorf("binding %q: address %s is not an address of this host", c.Name, b.Addr)
			}
		}
		s.bindings = append(s.bindings, b)
		s.byName[b.Name] = b
	}

	for _, gc := range groups {
		if gc.Name == "" {
			return nil, errors.New("binding group with an empty name")
		}
		if _, dup := s.groups[gc.Name]; dup {
			return nil, fmt.Errorf("binding group %q: defined twice", gc.Name)
		}
		if len(gc.Members) == 0 {
			return nil, fmt.Errorf("binding group %q: no bindings", gc.Name)
		}
		g := &group{name: gc.Name}
		seen := map[string]bool{}
		for _, m := range gc.Members {
			b := s.byName[m.Name]
			switch {
			case b == nil:
				return nil, fmt.Errorf("binding group %q: %w %q", gc.Name, ErrUnknownBinding, m.Name)
			case seen[m.Name]:
				return nil, fmt.Errorf("binding group %q: binding %q listed twice", gc.Name, m.Name)
			case m.Weight < 1:
				return nil, fmt.Errorf("binding group %q: binding %q: weight %d is below 1", gc.Name, m.Name, m.Weight)
			}
			seen[m.Name] = true
			g.members = append(g.members, &member{b: b, weight: m.Weight})
		}
		s.groups[g.name] = g
	}
	if _, ok := s.groups[DefaultName]; !ok {
		g := &group{name: DefaultName}
		for _, b := range s.bindings {
			g.members = append(g.members, &member{b: b, weight: 1})
		}
		s.groups[DefaultName] = g
	}
	return s, nil
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
	g, ok := s.groups[group]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownGroup, group)
	}
	if binding != "" {
		b, ok := s.byName[binding]
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
		if m.b.Suspended() {
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
	if group != "" {
		if _, ok := s.groups[group]; !ok {
			return fmt.Errorf("%w %q", ErrUnknownGroup, group)
		}
	}
	if binding != "" {
		if _, ok := s.byName[binding]; !ok {
			return fmt.Errorf("%w %q", ErrUnknownBinding, binding)
		}
	}
	return nil
}

// Get returns the binding in slot, or nil if slot is out of range.
func (s *Set) Get(slot int) *Binding {
	if slot < 0 || slot >= len(s.bindings) {
		return nil
	}
	return s.bindings[slot]
}

// ByName returns the binding called name, or nil.
func (s *Set) ByName(name string) *Binding { return s.byName[name] }

// Len returns the number of bindings; slots are 0 .. Len()-1.
func (s *Set) Len() int { return len(s.bindings) }

// All returns the bindings in slot order. The slice is a copy; the bindings
// are shared.
func (s *Set) All() []*Binding { return append([]*Binding(nil), s.bindings...) }

// Groups returns the group names, including "default", in no set order.
func (s *Set) Groups() []string {
	names := make([]string, 0, len(s.groups))
	for n := range s.groups {
		names = append(names, n)
	}
	return names
}
