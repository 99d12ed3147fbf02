package policy

import (
	"fmt"
	"testing"
	"time"
)

func TestSuspensionsCheck(t *testing.T) {
	t.Parallel()
	s := NewSuspensions()
	if _, ok := s.Check(t0, "a.example", "mx.a", "p", "b1"); ok {
		t.Fatal("empty set suspends")
	}
	site := s.Add(Suspension{Kind: ScopeSite, Name: "mx.y", Binding: "b1", Source: SourceRule, Rule: "yahoo-tss04",
		Start: t0, Until: t0.Add(2 * time.Hour)})
	dom := s.Add(Suspension{Kind: ScopeDomain, Name: "Example.COM.", Source: SourceOperator, Start: t0, Until: t0.Add(time.Hour)})
	prov := s.Add(Suspension{Kind: ScopeProvider, Name: "google", Source: SourceConfig, Start: t0.Add(time.Hour), Until: t0.Add(3 * time.Hour)})
	bind := s.Add(Suspension{Kind: ScopeBinding, Binding: "b9", Source: SourceOperator, Start: t0, Until: t0.Add(time.Hour)})
	pair := s.Add(Suspension{Kind: ScopePair, Name: "x.example", Binding: "b2", Source: SourceAdaptive, Start: t0, Until: t0.Add(time.Minute)})
	if site.ID == "" || site.ID == dom.ID {
		t.Fatalf("IDs %q %q", site.ID, dom.ID)
	}
	if dom.Name != "example.com" {
		t.Fatalf("domain name kept as %q", dom.Name)
	}
	tests := []struct {
		name                           string
		now                            time.Time
		domain, site, provider, bindng string
		want                           string // ID, "" = none
	}{
		{"site×binding", t0, "y.example", "mx.y", "", "b1", site.ID},
		{"site, other binding", t0, "y.example", "mx.y", "", "b2", ""},
		{"domain, any binding", t0, "example.com", "mx.e", "", "b7", dom.ID},
		{"domain ended", t0.Add(time.Hour), "example.com", "mx.e", "", "b7", ""},
		{"provider not started", t0, "g.example", "mx.g", "google", "b1", ""},
		{"provider started", t0.Add(time.Hour), "g.example", "mx.g", "google", "b1", prov.ID},
		{"binding everywhere", t0, "z.example", "mx.z", "", "b9", bind.ID},
		{"pair", t0, "x.example", "mx.x", "", "b2", pair.ID},
		{"pair, other binding", t0, "x.example", "mx.x", "", "b1", ""},
		{"latest ending wins", t0.Add(90 * time.Minute), "g.example", "mx.y", "google", "b1", prov.ID},
		{"site before provider ends", t0, "g.example", "mx.y", "google", "b1", site.ID},
	}
	for _, tc := range tests {
		sp, ok := s.Check(tc.now, tc.domain, tc.site, tc.provider, tc.bindng)
		if got := map[bool]string{true: sp.ID}[ok]; got != tc.want {
			t.Errorf("%s: Check = %q (%+v), want %q", tc.name, got, sp, tc.want)
		}
	}
}

func TestSuspensionsAddReplace(t *testing.T) {
	t.Parallel()
	s := NewSuspensions()
	long := s.Add(Suspension{Kind: ScopeSite, Name: "mx", Binding: "b1", Source: SourceOperator, Start: t0, Until: t0.Add(5 * time.Hour)})
	got := s.Add(Suspension{Kind: ScopeSite, Name: "mx", Binding: "b1", Source: SourceRule, Start: t0, Until: t0.Add(2 * time.Hour)})
	if got.ID != long.ID || got.Source != SourceOperator {
		t.Fatalf("a shorter suspension replaced a longer one: %+v", got)
	}
	longer := s.Add(Suspension{Kind: ScopeSite, Name: "mx", Binding: "b1", Source: SourceRule, Start: t0, Until: t0.Add(6 * time.Hour)})
	if longer.ID == long.ID || longer.Source != SourceRule {
		t.Fatalf("a longer suspension did not replace: %+v", longer)
	}
	if _, ok := s.Lift(long.ID); ok {
		t.Fatal("the replaced suspension's ID still lifts")
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
	// Another binding of the same site is another scope.
	s.Add(Suspension{Kind: ScopeSite, Name: "mx", Binding: "b2", Start: t0, Until: t0.Add(time.Hour)})
	if s.Len() != 2 {
		t.Fatalf("Len = %d, want 2", s.Len())
	}
	// A pair of every binding is the domain.
	p := s.Add(Suspension{Kind: ScopePair, Name: "d.example", Start: t0, Until: t0.Add(time.Hour)})
	if p.Kind != ScopeDomain {
		t.Fatalf("pair without binding kept kind %q", p.Kind)
	}
}

func TestSuspensionsLiftListExpire(t *testing.T) {
	t.Parallel()
	s := NewSuspensions()
	a := s.Add(Suspension{Kind: ScopeDomain, Name: "a.example", Start: t0, Until: t0.Add(3 * time.Hour)})
	b := s.Add(Suspension{Kind: ScopeDomain, Name: "b.example", Start: t0, Until: t0.Add(time.Hour)})
	c := s.Add(Suspension{Kind: ScopeSite, Name: "mx.c", Binding: "b1", Start: t0, Until: t0.Add(2 * time.Hour)})
	if l := s.List(t0); len(l) != 3 || l[0].ID != b.ID || l[1].ID != c.ID || l[2].ID != a.ID {
		t.Fatalf("List not sorted by Until: %+v", l)
	}
	if sp, ok := s.LiftScope(ScopeSite, "mx.c", "b1"); !ok || sp.ID != c.ID {
		t.Fatalf("LiftScope = %+v %v", sp, ok)
	}
	if _, ok := s.Check(t0, "c.example", "mx.c", "", "b1"); ok {
		t.Fatal("lifted suspension still in force")
	}
	if sp, ok := s.Lift(a.ID); !ok || sp.Name != "a.example" {
		t.Fatalf("Lift = %+v %v", sp, ok)
	}
	if ex := s.Expire(t0.Add(59 * time.Minute)); len(ex) != 0 {
		t.Fatalf("expired early: %+v", ex)
	}
	if ex := s.Expire(t0.Add(time.Hour)); len(ex) != 1 || ex[0].ID != b.ID {
		t.Fatalf("Expire = %+v, want b", ex)
	}
	if s.Len() != 0 || len(s.List(t0)) != 0 {
		t.Fatal("suspensions left")
	}
	// A zero Until is never in force.
	s.Add(Suspension{Kind: ScopeDomain, Name: "z.example"})
	if _, ok := s.Check(t0, "z.example", "", "", "b1"); ok {
		t.Fatal("a suspension without an end is in force")
	}
}

func BenchmarkSuspensionsCheckEmpty(b *testing.B) {
	s := NewSuspensions()
	for b.Loop() {
		s.Check(t0, "example.com", "mx1.example.com,mx2.example.com", "google", "b1")
	}
}

func BenchmarkSuspensionsCheck1000(b *testing.B) {
	s := NewSuspensions()
	for i := range 1000 {
		s.Add(Suspension{Kind: ScopeSite, Name: fmt.Sprintf("mx%d.example", i), Binding: "b1", Start: t0, Until: t0.Add(time.Hour)})
	}
	for b.Loop() {
		s.Check(t0, "example.com", "mx1.example.com,mx2.example.com", "google", "b1")
	}
}

func BenchmarkTakeAll(b *testing.B) {
	th := NewThrottles()
	keys := []string{"site:mx1.example.com,mx2.example.com|b1", "provider:google|b1"}
	rates := []Rate{{N: 1e9, Per: time.Second}, {N: 1e9, Per: time.Second}}
	now := t0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		th.TakeAll(keys, rates, now)
	}
}
