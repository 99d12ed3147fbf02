package binding

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// anyLocal accepts every address, for tests about everything but locality.
func anyLocal(netip.Addr) bool { return true }

func mustNew(t testing.TB, bs []Config, gs []GroupConfig) *Set {
	t.Helper()
	s, err := New(bs, gs, "mta.example.com", anyLocal)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDefaultSet(t *testing.T) {
	t.Parallel()
	s := mustNew(t, nil, nil)
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
	b := s.Get(0)
	if b.Name != "default" || b.Slot != 0 || b.Addr.IsValid() || b.EHLO != "mta.example.com" || b.LocalAddr() != nil {
		t.Errorf("default binding = %+v", b)
	}
	for _, group := range []string{"", "default"} {
		got, err := s.Pick(group, "")
		if err != nil || got != b {
			t.Errorf("Pick(%q) = %v, %v", group, got, err)
		}
	}
	if s.ByName("default") != b || s.Get(1) != nil || s.Get(-1) != nil {
		t.Error("lookups of the default set")
	}
}

func TestImplicitDefaultGroup(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a", Address: "127.0.0.2"}, {Name: "b", Address: "127.0.0.3", EHLO: "b.example.com"}},
		[]GroupConfig{{Name: "only-b", Members: []Member{{"b", 1}}}})
	counts := map[string]int{}
	for range 10 {
		b, err := s.Pick("", "")
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Name]++
	}
	if counts["a"] != 5 || counts["b"] != 5 {
		t.Errorf("default group over all bindings, weight 1: %v", counts)
	}
	if b := s.ByName("a"); b.EHLO != "mta.example.com" || b.Slot != 0 {
		t.Errorf("a = %+v", b)
	}
	if b := s.ByName("b"); b.EHLO != "b.example.com" || b.Slot != 1 {
		t.Errorf("b = %+v", b)
	}
	if got := localAddrString(s, "b"); got != "127.0.0.3:0" {
		t.Errorf("LocalAddr = %s", got)
	}
	if len(s.All()) != 2 || len(s.Groups()) != 2 {
		t.Errorf("All %v Groups %v", s.All(), s.Groups())
	}
}

// localAddrString returns the dial address of the named binding.
func localAddrString(s *Set, name string) string {
	a := s.ByName(name).LocalAddr()
	if a == nil {
		return ""
	}
	return a.String()
}

func TestWeightedRoundRobinExact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		members []Member
	}{
		{"3:1", []Member{{"a", 3}, {"b", 1}}},
		{"1:3", []Member{{"a", 1}, {"b", 3}}},
		{"5:1:1", []Member{{"a", 5}, {"b", 1}, {"c", 1}}},
		{"2:2:1", []Member{{"a", 2}, {"b", 2}, {"c", 1}}},
		{"1", []Member{{"a", 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}, {Name: "c"}},
				[]GroupConfig{{Name: "g", Members: tt.members}})
			cycle := 0
			for _, m := range tt.members {
				cycle += m.Weight
			}
			for round := range 5 { // every cycle, not just the first
				counts := map[string]int{}
				for range cycle {
					b, err := s.Pick("g", "")
					if err != nil {
						t.Fatal(err)
					}
					counts[b.Name]++
				}
				for _, m := range tt.members {
					if counts[m.Name] != m.Weight {
						t.Fatalf("round %d: counts %v, want weights %v", round, counts, tt.members)
					}
				}
			}
		})
	}

	// Smooth: 5:1:1 spreads b and c between the a's instead of a burst.
	s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}, {Name: "c"}},
		[]GroupConfig{{Name: "g", Members: []Member{{"a", 5}, {"b", 1}, {"c", 1}}}})
	var seq strings.Builder
	for range 7 {
		b, _ := s.Pick("g", "")
		seq.WriteString(b.Name)
	}
	if got := seq.String(); got != "aabacaa" {
		t.Errorf("sequence %s, want aabacaa", got)
	}
}

func TestSuspended(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}, {Name: "c"}},
		[]GroupConfig{{Name: "g", Members: []Member{{"a", 3}, {"b", 1}, {"c", 2}}}})
	s.ByName("a").SetSuspended(true)
	if !s.ByName("a").Suspended() {
		t.Fatal("Suspended() after SetSuspended(true)")
	}
	counts := map[string]int{}
	for range 30 {
		b, err := s.Pick("g", "")
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Name]++
	}
	if counts["a"] != 0 || counts["b"] != 10 || counts["c"] != 20 {
		t.Errorf("with a suspended: %v, want b:c = 1:2 and no a", counts)
	}
	if _, err := s.Pick("g", "a"); !errors.Is(err, ErrNoUsableBinding) || !strings.Contains(err.Error(), `"a"`) {
		t.Errorf("Pick of a suspended binding by name = %v", err)
	}

	s.ByName("b").SetSuspended(true)
	s.ByName("c").SetSuspended(true)
	if _, err := s.Pick("g", ""); !errors.Is(err, ErrNoUsableBinding) || !strings.Contains(err.Error(), `"g"`) {
		t.Errorf("Pick with all suspended = %v, want ErrNoUsableBinding naming the group", err)
	}
	if err := s.Check("g", "a"); err != nil {
		t.Errorf("Check ignores suspension, got %v", err)
	}

	// Resumed: the full weights apply again within a cycle or two.
	for _, n := range []string{"a", "b", "c"} {
		s.ByName(n).SetSuspended(false)
	}
	counts = map[string]int{}
	for range 6 * 10 {
		b, _ := s.Pick("g", "")
		counts[b.Name]++
	}
	if counts["a"] != 30 || counts["b"] != 10 || counts["c"] != 20 {
		t.Errorf("after resume: %v", counts)
	}
}

func TestUnknownNames(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a"}}, nil)
	tests := []struct {
		group, binding string
		want           error
		name           string
	}{
		{"nope", "", ErrUnknownGroup, `"nope"`},
		{"", "ghost", ErrUnknownBinding, `"ghost"`},
		{"nope", "a", ErrUnknownGroup, `"nope"`},
	}
	for _, tt := range tests {
		_, err := s.Pick(tt.group, tt.binding)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("Pick(%q, %q) = %v, want %v naming %s", tt.group, tt.binding, err, tt.want, tt.name)
		}
		err = s.Check(tt.group, tt.binding)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("Check(%q, %q) = %v, want %v naming %s", tt.group, tt.binding, err, tt.want, tt.name)
		}
	}
	for _, ok := range [][2]string{{"", ""}, {"default", ""}, {"", "a"}, {"default", "a"}} {
		if err := s.Check(ok[0], ok[1]); err != nil {
			t.Errorf("Check(%q, %q) = %v", ok[0], ok[1], err)
		}
	}
	if b, err := s.Pick("", "a"); err != nil || b.Name != "a" {
		t.Errorf("Pick by name = %v, %v", b, err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	notLocal := func(a netip.Addr) bool { return a != netip.MustParseAddr("192.0.2.7") }
	tests := []struct {
		name string
		bs   []Config
		gs   []GroupConfig
		want string
	}{
		{"not local", []Config{{Name: "out", Address: "192.0.2.7"}}, nil, `binding "out": address 192.0.2.7 is not an address of this host`},
		{"bad address", []Config{{Name: "x", Address: "127.0.0.256"}}, nil, `binding "x": address "127.0.0.256"`},
		{"empty name", []Config{{Address: "127.0.0.2"}}, nil, "binding 0: empty name"},
		{"dup name", []Config{{Name: "x"}, {Name: "x"}}, nil, `binding "x": defined twice`},
		{"group unknown binding", []Config{{Name: "x"}}, []GroupConfig{{Name: "g", Members: []Member{{"y", 1}}}}, `binding group "g": unknown binding "y"`},
		{"group weight", []Config{{Name: "x"}}, []GroupConfig{{Name: "g", Members: []Member{{"x", 0}}}}, `binding group "g": binding "x": weight 0 is below 1`},
		{"group dup member", []Config{{Name: "x"}}, []GroupConfig{{Name: "g", Members: []Member{{"x", 1}, {"x", 1}}}}, `binding "x" listed twice`},
		{"group dup", []Config{{Name: "x"}}, []GroupConfig{{Name: "g", Members: []Member{{"x", 1}}}, {Name: "g", Members: []Member{{"x", 1}}}}, `binding group "g": defined twice`},
		{"group empty", []Config{{Name: "x"}}, []GroupConfig{{Name: "g"}}, `binding group "g": no bindings`},
		{"group no name", []Config{{Name: "x"}}, []GroupConfig{{Members: []Member{{"x", 1}}}}, "empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.bs, tt.gs, "h", notLocal)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestAddresses(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{
		{Name: "v6", Address: "2001:db8::25"},
		{Name: "mapped", Address: "::ffff:127.0.0.2"},
		{Name: "v4", Address: "127.0.0.2"},
	}, nil)
	if a := s.ByName("v6").Addr; !a.Is6() || a.String() != "2001:db8::25" {
		t.Errorf("v6 = %v", a)
	}
	if a := s.ByName("mapped").Addr; !a.Is4() {
		t.Errorf("an IPv4-mapped address is dialled as IPv4, got %v", a)
	}
	if got := localAddrString(s, "v6"); got != "[2001:db8::25]:0" {
		t.Errorf("v6 LocalAddr = %s", got)
	}
}

// With isLocal nil, the host's own addresses are checked: all of 127/8 is
// local on Linux, 192.0.2.0/24 (TEST-NET-1) never is.
func TestHostAddresses(t *testing.T) {
	t.Parallel()
	s, err := New([]Config{{Name: "lo2", Address: "127.0.0.2"}, {Name: "lo", Address: "127.0.0.1"}}, nil, "h", nil)
	if err != nil {
		t.Fatalf("127/8 bindings: %v", err)
	}
	// Dial from the binding to a listener on loopback: the source is ours.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err.Error()
			return
		}
		accepted <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	d := net.Dialer{LocalAddr: s.ByName("lo2").LocalAddr()}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if src := <-accepted; src != "127.0.0.2" {
		t.Errorf("connection came from %s, want 127.0.0.2", src)
	}

	_, err = New([]Config{{Name: "far", Address: "192.0.2.1"}}, nil, "h", nil)
	if err == nil || !strings.Contains(err.Error(), `binding "far": address 192.0.2.1 is not an address of this host`) {
		t.Errorf("New with a foreign address = %v", err)
	}
}

// Pick is safe under concurrency, and every pick is one step of the same
// round-robin: the totals stay exact.
func TestConcurrentPick(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}}, []GroupConfig{{Name: "g", Members: []Member{{"a", 3}, {"b", 1}}}})
	const workers, each = 8, 500
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			for range each {
				b, err := s.Pick("g", "")
				if err != nil {
					t.Error(err)
					return
				}
				local[b.Name]++
			}
			mu.Lock()
			defer mu.Unlock()
			for k, v := range local {
				counts[k] += v
			}
		}()
	}
	wg.Wait()
	if counts["a"] != 3000 || counts["b"] != 1000 {
		t.Errorf("counts %v, want a:3000 b:1000", counts)
	}
}

func BenchmarkPick(b *testing.B) {
	s := mustNew(b, []Config{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}},
		[]GroupConfig{{Name: "g", Members: []Member{{"a", 4}, {"b", 3}, {"c", 2}, {"d", 1}}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Pick("g", ""); err != nil {
			b.Fatal(err)
		}
	}
}
