package policy

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func mustRate(t testing.TB, s string) Rate {
	t.Helper()
	r, err := ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTakeRate: with a test clock a 10/s bucket hands out at most 10
// tokens in any simulated second after its first burst, and says when the
// next one comes.
func TestTakeRate(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	r := mustRate(t, "10/s")
	now := t0
	got := 0
	for range 10000 { // bounded; a step of 1ms covers 10 s
		if ok, next := th.Take("site:a|b1", r, now); ok {
			got++
		} else if !next.After(now) {
			t.Fatalf("refused at %v with next %v, not later", now, next)
		}
		now = now.Add(time.Millisecond)
	}
	// 10 s at 10/s plus the initial burst.
	if max := 10*10 + r.Burst(); got > max || got < 10*10 {
		t.Fatalf("took %d tokens in 10 s at 10/s (burst %d), want 100..%d", got, r.Burst(), max)
	}
}

func TestTakeNextIsExact(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	r := mustRate(t, "1/m")
	if ok, _ := th.Take("k", r, t0); !ok {
		t.Fatal("first take refused")
	}
	ok, next := th.Take("k", r, t0.Add(time.Second))
	if ok {
		t.Fatal("second take within the minute allowed")
	}
	if want := t0.Add(time.Minute); next.Before(want) || next.After(want.Add(time.Millisecond)) {
		t.Fatalf("next = %v, want %v", next, want)
	}
	if ok, _ := th.Take("k", r, next.Add(-time.Millisecond)); ok {
		t.Fatal("took before next")
	}
	if ok, _ := th.Take("k", r, next); !ok {
		t.Fatal("refused at next")
	}
}

func TestTakeUnlimited(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	for i := range 100 {
		if ok, _ := th.Take("k", Rate{}, t0); !ok {
			t.Fatalf("unlimited refused at %d", i)
		}
	}
	if th.Len() != 0 {
		t.Fatalf("unlimited created %d buckets", th.Len())
	}
}

// TestTakeAllAllOrNothing: when the provider budget is empty the site's
// token is not spent, and next is the later of the two.
func TestTakeAllAllOrNothing(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	site, prov := mustRate(t, "1/s"), mustRate(t, "1/m")
	keys := []string{"site:s1|b1", "provider:p|b1"}
	if ok, _ := th.TakeAll(keys, []Rate{site, prov}, t0); !ok {
		t.Fatal("first TakeAll refused")
	}
	// Another site of the same provider: its own bucket is full, the
	// provider's is empty.
	keys2 := []string{"site:s2|b1", "provider:p|b1"}
	ok, next := th.TakeAll(keys2, []Rate{site, prov}, t0.Add(2*time.Second))
	if ok {
		t.Fatal("TakeAll allowed with an empty provider budget")
	}
	if next.Before(t0.Add(time.Minute)) {
		t.Fatalf("next %v is before the provider's token at %v", next, t0.Add(time.Minute))
	}
	// s2's token was not spent: alone it is still there.
	if ok, _ := th.Take("site:s2|b1", site, t0.Add(2*time.Second)); !ok {
		t.Fatal("site token was spent by a refused TakeAll")
	}
	if ok, _ := th.TakeAll(keys, []Rate{site, prov}, next); !ok {
		t.Fatal("TakeAll refused at its next")
	}
}

// TestTakeRateChange: a lowered rate for an existing key applies from now.
func TestTakeRateChange(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	fast, slow := mustRate(t, "100/s"), mustRate(t, "1/m")
	for i := range fast.Burst() {
		if ok, _ := th.Take("k", fast, t0); !ok {
			t.Fatalf("burst take %d refused", i)
		}
	}
	now := t0.Add(time.Second) // the fast bucket is full again
	if ok, _ := th.Take("k", slow, now); !ok {
		t.Fatal("first take at the new rate refused")
	}
	if ok, next := th.Take("k", slow, now.Add(time.Second)); ok || next.Before(now.Add(59*time.Second)) {
		t.Fatalf("after lowering to 1/m: ok=%v next=%v", ok, next)
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	r := mustRate(t, "1/s")
	for i := range 100 {
		th.Take(fmt.Sprint("k", i), r, t0)
	}
	if n := th.Sweep(t0); n != 0 {
		t.Fatalf("swept %d buckets that were just used", n)
	}
	th.Take("late", r, t0.Add(2*time.Second))
	if n := th.Sweep(t0.Add(2 * time.Second)); n != 100 {
		t.Fatalf("swept %d, want the 100 refilled buckets", n)
	}
	if th.Len() != 1 {
		t.Fatalf("Len = %d after sweep, want 1", th.Len())
	}
}

func TestThrottlesConcurrent(t *testing.T) {
	t.Parallel()
	th := NewThrottles()
	r := mustRate(t, "1000/s")
	var wg sync.WaitGroup
	var mu sync.Mutex
	taken := 0
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for range 1000 {
				if ok, _ := th.TakeAll([]string{"shared", fmt.Sprint("own", g)}, []Rate{r, r}, t0); ok {
					n++
				}
			}
			mu.Lock()
			taken += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if taken != r.Burst() {
		t.Fatalf("took %d tokens at one instant from a bucket of %d", taken, r.Burst())
	}
}

func ptr[T any](v T) *T { return &v }

func TestOverrideRamp(t *testing.T) {
	t.Parallel()
	o := Override{Rule: "r", Scope: "site:x|b1", MaxMessageRate: ptr(mustRate(t, "1/s")), MaxConnections: ptr(1),
		Start: t0, End: t0.Add(time.Hour), Ramp: 50 * time.Minute}
	normal := mustRate(t, "100000/s")
	tests := []struct {
		at    time.Duration // after t0
		rate  float64       // per second
		conns int           // normal 11
	}{
		{0, 1, 1},
		{59 * time.Minute, 1, 1},
		{60 * time.Minute, 10, 3},  // step 1: 1·10^(5·1/5); 1+10·1/5
		{69 * time.Minute, 10, 3},  //
		{70 * time.Minute, 100, 5}, // step 2
		{80 * time.Minute, 1000, 7},
		{90 * time.Minute, 10000, 9},
		{100 * time.Minute, 100000, 11}, // step 5: normal
		{109 * time.Minute, 100000, 11},
		{110 * time.Minute, 100000, 11}, // expired
	}
	prevRate, prevConns := 0.0, 0
	for _, tc := range tests {
		now := t0.Add(tc.at)
		r := float64(o.Rate(normal, now).Limit())
		if r < tc.rate*0.999 || r > tc.rate*1.001 {
			t.Errorf("at +%v: rate %v/s, want %v/s", tc.at, r, tc.rate)
		}
		if c := o.Conns(11, now); c != tc.conns {
			t.Errorf("at +%v: conns %d, want %d", tc.at, c, tc.conns)
		}
		if r < prevRate || o.Conns(11, now) < prevConns {
			t.Errorf("at +%v: the ramp went down", tc.at)
		}
		prevRate, prevConns = r, o.Conns(11, now)
	}
	if o.Expired(t0.Add(109 * time.Minute)) {
		t.Error("expired before End+Ramp")
	}
	if !o.Expired(t0.Add(110 * time.Minute)) {
		t.Error("not expired at End+Ramp")
	}
}

func TestOverrideEdges(t *testing.T) {
	t.Parallel()
	o := Override{MaxMessageRate: ptr(mustRate(t, "10/s")), MaxConnections: ptr(5), End: t0.Add(time.Minute)}
	// Never raises a limit.
	if r := o.Rate(mustRate(t, "1/s"), t0); r != mustRate(t, "1/s") {
		t.Errorf("override raised 1/s to %v", r)
	}
	if c := o.Conns(2, t0); c != 2 {
		t.Errorf("override raised 2 connections to %d", c)
	}
	// No ramp: normal at End.
	if r := o.Rate(mustRate(t, "100/s"), t0.Add(time.Minute)); r != mustRate(t, "100/s") {
		t.Errorf("without a ramp, at End: %v", r)
	}
	// Unlimited normal: ×10 per step, then unlimited; conns ×2, then 0.
	o.Ramp = 5 * time.Minute
	if r := o.Rate(Rate{}, t0.Add(time.Minute)); float64(r.Limit()) != 100 {
		t.Errorf("unlimited normal, step 1: %v", r.Limit())
	}
	if r := o.Rate(Rate{}, t0.Add(5*time.Minute)); !r.Unlimited() {
		t.Errorf("unlimited normal, last step: %v", r)
	}
	if c := o.Conns(0, t0.Add(2*time.Minute)); c != 20 {
		t.Errorf("no normal cap, step 2: %d", c)
	}
	// A nil key is untouched.
	var none Override
	if none.Conns(7, t0) != 7 || none.Rate(mustRate(t, "3/s"), t0) != mustRate(t, "3/s") {
		t.Error("an override without keys changed something")
	}
}

func TestOverrides(t *testing.T) {
	t.Parallel()
	s := NewOverrides()
	if s.Get("a", t0) != nil {
		t.Fatal("empty set returned an override")
	}
	s.Set(Override{Rule: "r1", Scope: "a", MaxConnections: ptr(1), End: t0.Add(time.Hour)})
	s.Set(Override{Rule: "r2", Scope: "b", MaxConnections: ptr(1), End: t0.Add(time.Minute), Ramp: time.Minute})
	s.Set(Override{Rule: "r3", Scope: "a", MaxConnections: ptr(2), End: t0.Add(2 * time.Hour)}) // replaces r1
	if o := s.Get("a", t0); o == nil || o.Rule != "r3" {
		t.Fatalf("Get(a) = %+v, want r3", o)
	}
	if l := s.List(t0); len(l) != 2 || l[0].Scope != "b" || l[1].Scope != "a" {
		t.Fatalf("List = %+v, want b then a", l)
	}
	if s.Get("b", t0.Add(2*time.Minute)) != nil {
		t.Fatal("Get returned an expired override")
	}
	if ex := s.Expire(t0.Add(2 * time.Minute)); len(ex) != 1 || ex[0].Rule != "r2" {
		t.Fatalf("Expire = %+v, want r2", ex)
	}
	if o, ok := s.Lift("a"); !ok || o.Rule != "r3" {
		t.Fatalf("Lift(a) = %+v %v", o, ok)
	}
	if _, ok := s.Lift("a"); ok {
		t.Fatal("lifted twice")
	}
	if len(s.List(t0)) != 0 {
		t.Fatal("overrides left after lifting all")
	}
}
