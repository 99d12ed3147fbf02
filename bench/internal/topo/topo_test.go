package topo

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDomains(t *testing.T) {
	t.Parallel()
	doms, err := Domains(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(doms) != 101 {
		t.Fatalf("%d domains, want 101", len(doms))
	}
	seen := map[string]bool{}
	for _, d := range doms {
		if !d.Addr.Is4() || d.Addr.As4()[0] != 127 {
			t.Errorf("%s: address %s outside 127/8", d.Name, d.Addr)
		}
		if seen[d.Addr.String()] {
			t.Errorf("%s: address %s used twice", d.Name, d.Addr)
		}
		seen[d.Addr.String()] = true
		if d.MX != "mx."+d.Name {
			t.Errorf("%s: MX %q", d.Name, d.MX)
		}
	}
	if doms[0].Name != "d0.bench" || doms[0].Addr.String() != "127.0.1.1" || doms[99].Addr.String() != "127.0.1.100" {
		t.Errorf("first/last: %+v %+v", doms[0], doms[99])
	}
	if last := doms[100]; last.Name != HotDomain || last.Addr.String() != "127.0.2.1" {
		t.Errorf("hot domain: %+v", last)
	}
	for _, n := range []int{-1, MaxDomains + 1} {
		if _, err := Domains(n); err == nil {
			t.Errorf("Domains(%d) succeeded, want an error", n)
		}
	}
	if d, err := Domains(MaxDomains); err != nil || d[MaxDomains-1].Addr.String() != "127.0.1.250" {
		t.Errorf("Domains(MaxDomains): %v", err)
	}
}
