package binding

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestApplyKeepsSlotsAndAppends(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a", Address: "127.0.0.2"}, {Name: "b", Address: "127.0.0.3"}, {Name: "c"}}, nil)
	s.ByName("b").SetSuspended(true)
	oldA := s.ByName("a")

	ch, err := s.Apply([]Config{{Name: "c"}, {Name: "a", Address: "127.0.0.4", EHLO: "new.example"}, {Name: "b", Address: "127.0.0.3"}, {Name: "d"}},
		[]GroupConfig{{Name: "g", Members: []Member{{"d", 2}, {"a", 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, slot := range map[string]int{"a": 0, "b": 1, "c": 2, "d": 3} {
		if b := s.ByName(name); b == nil || b.Slot != slot || s.Get(slot) != b {
			t.Errorf("binding %s: %+v, want slot %d", name, b, slot)
		}
	}
	if a := s.ByName("a"); a.Addr != netip.MustParseAddr("127.0.0.4") || a.EHLO != "new.example" {
		t.Errorf("a after Apply: %v %q", a.Addr, a.EHLO)
	}
	if oldA.Addr != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("the old version of a changed under its holder: %v", oldA.Addr)
	}
	if !s.ByName("b").Suspended() {
		t.Error("b's suspension was lost by the reload")
	}
	if strings.Join(ch.Added, ",") != "d" || strings.Join(ch.Changed, ",") != "a" || len(ch.Retired) != 0 || !ch.Groups {
		t.Errorf("change = %+v", ch)
	}
	if s.Len() != 4 {
		t.Errorf("Len = %d, want 4", s.Len())
	}
	// The new group's weights apply from the next Pick.
	got := map[string]int{}
	for range 30 {
		b, err := s.Pick("g", "")
		if err != nil {
			t.Fatal(err)
		}
		got[b.Name]++
	}
	if got["d"] != 20 || got["a"] != 10 {
		t.Errorf("picks from g = %v, want d:20 a:10", got)
	}

	// The same config again changes nothing.
	ch, err = s.Apply([]Config{{Name: "c"}, {Name: "a", Address: "127.0.0.4", EHLO: "new.example"}, {Name: "b", Address: "127.0.0.3"}, {Name: "d"}},
		[]GroupConfig{{Name: "g", Members: []Member{{"d", 2}, {"a", 1}}}})
	if err != nil || !ch.Empty() {
		t.Errorf("same config again: %+v, %v", ch, err)
	}
}

func TestApplyRetires(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}, {Name: "c"}}, nil)
	b := s.ByName("b")
	ch, err := s.Apply([]Config{{Name: "a"}, {Name: "c"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Retired) != 1 || ch.Retired[0] != b || !b.Retired() {
		t.Fatalf("change %+v, b retired %v", ch, b.Retired())
	}
	for range 100 {
		p, err := s.Pick("", "")
		if err != nil {
			t.Fatal(err)
		}
		if p.Name == "b" {
			t.Fatal("Pick returned the retired binding")
		}
	}
	if _, err := s.Pick("", "b"); !errors.Is(err, ErrUnknownBinding) {
		t.Errorf("Pick of the retired binding by name: %v, want ErrUnknownBinding", err)
	}
	if err := s.Check("", "b"); !errors.Is(err, ErrUnknownBinding) {
		t.Errorf("Check of the retired binding: %v", err)
	}
	// Get still answers for the slot: connections and deliveries on it
	// finish with its address and name.
	if g := s.Get(1); g != b {
		t.Errorf("Get(1) = %v, want the retired b", g)
	}
	// A binding of the same name added later gets a new slot: the old
	// one is never reused.
	if _, err := s.Apply([]Config{{Name: "a"}, {Name: "c"}, {Name: "b"}, {Name: "e"}}, nil); err != nil {
		t.Fatal(err)
	}
	if nb := s.ByName("b"); nb.Slot != 3 || nb.Retired() || s.ByName("e").Slot != 4 || s.Len() != 5 {
		t.Errorf("b back on slot %d (retired %v), e on %d, Len %d; want 3, false, 4, 5", nb.Slot, nb.Retired(), s.ByName("e").Slot, s.Len())
	}
	if !s.Get(1).Retired() {
		t.Error("slot 1 came back to life")
	}
}

// A Pick on the old snapshot's group, racing the swap, must not return a
// binding retired by it either.
func TestRetiredSkippedByOldGroups(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "a"}, {Name: "b"}}, nil)
	old := s.snap.Load().groups[DefaultName]
	if _, err := s.Apply([]Config{{Name: "a"}}, nil); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		b, err := old.pick()
		if err != nil || b.Name != "a" {
			t.Fatalf("old group's pick = %v, %v; want a", b, err)
		}
	}
}

func TestApplyRefusedKeepsSet(t *testing.T) {
	t.Parallel()
	notLocal := func(a netip.Addr) bool { return a != netip.MustParseAddr("192.0.2.7") }
	s, err := New([]Config{{Name: "a"}, {Name: "b"}}, []GroupConfig{{Name: "g", Members: []Member{{"a", 1}}}}, "h", notLocal)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		bs   []Config
		gs   []GroupConfig
		want string
	}{
		{[]Config{{Name: "a"}, {Name: "b"}, {Name: "x", Address: "192.0.2.7"}}, nil, `bindings[2].address: binding "x": address 192.0.2.7 is not an address of this host`},
		{[]Config{{Name: "a"}, {Name: "a"}}, nil, `bindings[1].name: binding "a": defined twice`},
		{[]Config{{Name: "a"}}, []GroupConfig{{Name: "g", Members: []Member{{"b", 1}}}}, `binding_groups[0].bindings[0]: binding group "g": unknown binding "b"`},
		{[]Config{{Name: "a"}}, []GroupConfig{{Name: "g", Members: []Member{{"a", 0}}}}, `binding_groups[0].bindings[0].weight`},
	} {
		if _, err := s.Apply(tc.bs, tc.gs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Apply(%v, %v) = %v, want %q", tc.bs, tc.gs, err, tc.want)
		}
	}
	if s.Len() != 2 || s.ByName("b") == nil || s.ByName("b").Retired() || s.Check("g", "") != nil {
		t.Errorf("a refused Apply changed the set: Len %d, b %v", s.Len(), s.ByName("b"))
	}
}

// Picks run on many goroutines while reloads add and retire bindings: under
// -race, and never returning a binding retired before the Pick began.
func TestConcurrentPickDuringApply(t *testing.T) {
	t.Parallel()
	s := mustNew(t, []Config{{Name: "keep"}, {Name: "x0"}}, nil)
	const workers, each, reloads = 4, 2000, 50
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				select {
				case <-stop:
					return
				default:
				}
				b, err := s.Pick("", "")
				if err != nil {
					t.Error(err)
					return
				}
				_ = s.Get(b.Slot).EHLO
				_ = s.Len()
			}
		}()
	}
	var retired []*Binding
	for i := 1; i <= reloads; i++ {
		ch, err := s.Apply([]Config{{Name: "keep"}, {Name: "x" + strings.Repeat("i", i)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		retired = append(retired, ch.Retired...)
	}
	close(stop)
	wg.Wait()
	if len(retired) != reloads || s.Len() != reloads+2 {
		t.Errorf("retired %d, Len %d; want %d, %d", len(retired), s.Len(), reloads, reloads+2)
	}
	for range 10 {
		b, err := s.Pick("", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range retired {
			if b == r {
				t.Fatalf("Pick returned retired %s", r.Name)
			}
		}
	}
}
