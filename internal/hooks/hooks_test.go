package hooks_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder makes maintain hooks that append their name to a log and return
// a fixed value.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) hook(name string, ret int) hooks.MaintainFunc {
	return func(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz, reserve int) int {
		r.mu.Lock()
		r.log = append(r.log, name)
		r.mu.Unlock()
		return ret
	}
}

func pair(t *testing.T) (*queue.DomainRecord, *queue.Pair) {
	t.Helper()
	q := queue.New()
	p := q.Push(&queue.Delivery{MsgID: "m", Domain: "example.com", Slot: 1})
	return p.Domain(), p
}

func TestMaintainOrderAndStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		returns map[string]int // hook name → return value; others 0
		want    []string
		result  int
	}{
		{"all zero runs everything", nil, []string{"F2", "F1", "L1", "L2", "default"}, 7},
		{"first-first stops", map[string]int{"F2": 3}, []string{"F2"}, 3},
		{"first stops last and default", map[string]int{"F1": hooks.Handled}, []string{"F2", "F1"}, hooks.Handled},
		{"last stops default", map[string]int{"L2": 1}, []string{"F2", "F1", "L1", "L2"}, 1},
		{"default's zero", map[string]int{"default": 0}, []string{"F2", "F1", "L1", "L2", "default"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dr, p := pair(t)
			ret := func(n string) int { return tt.returns[n] }
			r := &recorder{}
			reg := hooks.NewRegistry()
			def := 7
			if v, ok := tt.returns["default"]; ok {
				def = v
			}
			reg.MailQueueMaintain.SetDefault(r.hook("default", def))
			reg.MailQueueMaintain.RegisterLast(r.hook("L1", ret("L1")))
			reg.MailQueueMaintain.RegisterFirst(r.hook("F1", ret("F1")))
			reg.MailQueueMaintain.RegisterLast(r.hook("L2", ret("L2")))
			reg.MailQueueMaintain.RegisterFirst(r.hook("F2", ret("F2")))
			got := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 5, 2)
			if got != tt.result {
				t.Errorf("Call = %d, want %d", got, tt.result)
			}
			if !slices.Equal(r.log, tt.want) {
				t.Errorf("ran %v, want %v", r.log, tt.want)
			}
		})
	}
}

func TestMaintainArguments(t *testing.T) {
	t.Parallel()
	dr, p := pair(t)
	reg := hooks.NewRegistry()
	now := time.Unix(42, 0)
	var got string
	reg.MailQueueMaintain.RegisterFirst(func(d *queue.DomainRecord, slot int, sl *queue.Pair, n time.Time, goalsz, reserve int) int {
		got = fmt.Sprintf("%s %d %v %v %d %d", d.Name, slot, sl == p, n.Equal(now), goalsz, reserve)
		return 0
	})
	if r := reg.MailQueueMaintain.Call(dr, 1, p, now, 5, 2); r != 0 {
		t.Fatalf("Call with no default = %d, want 0", r)
	}
	if want := "example.com 1 true true 5 2"; got != want {
		t.Fatalf("hook got %q, want %q", got, want)
	}
}

func TestHas(t *testing.T) {
	t.Parallel()
	reg := hooks.NewRegistry()
	if reg.MailQueueMaintain.Has() || reg.PostInitiateConnectionSMTP.Has() || reg.PostSessionSMTP.Has() {
		t.Fatal("new registry has hooks")
	}
	reg.MailQueueMaintain.SetDefault(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { return 0 })
	if reg.MailQueueMaintain.Has() {
		t.Fatal("Has counts the default")
	}
	reg.MailQueueMaintain.RegisterLast(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { return 0 })
	reg.PostInitiateConnectionSMTP.RegisterFirst(func(*queue.DomainRecord, int, time.Time, int) {})
	reg.PostSessionSMTP.RegisterLast(func(*queue.DomainRecord, int, time.Time, hooks.SessionResult) {})
	if !reg.MailQueueMaintain.Has() || !reg.PostInitiateConnectionSMTP.Has() || !reg.PostSessionSMTP.Has() {
		t.Fatal("Has false after registration")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering a nil hook did not panic")
		}
	}()
	reg.PostSessionSMTP.RegisterFirst(nil)
}

func TestObserversAllRunInOrder(t *testing.T) {
	t.Parallel()
	dr, _ := pair(t)
	reg := hooks.NewRegistry()
	var log []string
	for _, n := range []string{"a", "b"} {
		reg.PostInitiateConnectionSMTP.RegisterLast(func(d *queue.DomainRecord, slot int, now time.Time, fd int) {
			log = append(log, fmt.Sprintf("init-%s %s/%d %d", n, d.Name, slot, fd))
		})
		reg.PostSessionSMTP.RegisterFirst(func(d *queue.DomainRecord, slot int, now time.Time, r hooks.SessionResult) {
			log = append(log, fmt.Sprintf("sess-%s %d %v", n, r.Delivered, r.Code421))
		})
	}
	reg.PostInitiateConnectionSMTP.Call(dr, 1, time.Unix(1, 0), int(hooks.ConnErrRefused))
	reg.PostSessionSMTP.Call(dr, 1, time.Unix(1, 0), hooks.SessionResult{Delivered: 3, Code421: true, LastCode: 421})
	want := []string{"init-a example.com/1 -8", "init-b example.com/1 -8", "sess-b 3 true", "sess-a 3 true"}
	if !slices.Equal(log, want) {
		t.Fatalf("ran %v, want %v", log, want)
	}
}

// opener is a connection pool stand-in that counts: Open starts as many as
// asked, never passing Max.
type opener struct {
	mu     sync.Mutex
	total  int
	max    int
	opened []int // n passed to each Open
	waited []int // n passed to each Wait
}

func (o *opener) Wait(dr *queue.DomainRecord, slot int, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.waited = append(o.waited, n)
}

func (o *opener) Open(dr *queue.DomainRecord, slot int, n int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n = min(n, o.max-o.total)
	o.total += n
	o.opened = append(o.opened, n)
	return n
}

func (o *opener) Total() int { o.mu.Lock(); defer o.mu.Unlock(); return o.total }
func (o *opener) Max() int   { return o.max }

func TestDefaultMaintainRespectsReserve(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                      string
		max, total, reserve, goal int
		want                      int
	}{
		{"room for the goal", 100, 10, 10, 5, 5},
		{"clipped to max-reserve", 100, 85, 10, 20, 5},
		{"exactly at max-reserve", 100, 90, 10, 5, 0},
		{"over max-reserve", 100, 95, 10, 5, 0},
		{"zero goal", 100, 0, 0, 0, 0},
		{"negative goal", 100, 0, 0, -3, 0},
		{"no reserve", 10, 7, 0, 5, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dr, p := pair(t)
			o := &opener{max: tt.max, total: tt.total}
			reg := hooks.NewRegistry()
			reg.MailQueueMaintain.SetDefault(hooks.DefaultMaintain(o))
			got := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), tt.goal, tt.reserve)
			if got != tt.want {
				t.Fatalf("opened %d, want %d", got, tt.want)
			}
			if o.total != tt.total+tt.want {
				t.Fatalf("total %d, want %d", o.total, tt.total+tt.want)
			}
			if tt.want == 0 && len(o.opened) != 0 {
				t.Fatalf("Open called with nothing to open: %v", o.opened)
			}
			// A goal it could not open any of is a pair waiting for a slot.
			if wantWait := tt.goal > 0 && tt.want == 0; wantWait != (len(o.waited) == 1) || wantWait && o.waited[0] != tt.goal {
				t.Fatalf("Wait calls %v with goal %d and %d opened", o.waited, tt.goal, tt.want)
			}
		})
	}
}

// A hook may spend the reserve by calling the Opener itself up to Max and
// returning non-zero, which keeps the default from running.
func TestHookSpendsReserve(t *testing.T) {
	t.Parallel()
	dr, p := pair(t)
	o := &opener{max: 100, total: 90}
	reg := hooks.NewRegistry()
	reg.MailQueueMaintain.SetDefault(hooks.DefaultMaintain(o))
	// The default alone opens nothing: the system is at max - reserve.
	if n := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 5, 10); n != 0 {
		t.Fatalf("default opened %d at max-reserve", n)
	}
	reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, sl *queue.Pair, now time.Time, goalsz, reserve int) int {
		if !strings.HasSuffix(dr.Name, "example.com") { // only the VIP domain may dip into the reserve
			return 0
		}
		n := o.Open(dr, slot, min(goalsz, o.Max()-o.Total()))
		if n == 0 {
			return hooks.Handled
		}
		return n
	})
	if n := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 5, 10); n != 5 {
		t.Fatalf("hook opened %d, want 5", n)
	}
	if n := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 8, 10); n != 5 {
		t.Fatalf("hook opened %d, want 5 (up to max)", n)
	}
	if n := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 8, 10); n != hooks.Handled {
		t.Fatalf("at max: Call = %d, want Handled", n)
	}
	if o.total != o.max {
		t.Fatalf("total %d, want max %d", o.total, o.max)
	}
	if want := []int{5, 5, 0}; !slices.Equal(o.opened, want) {
		t.Fatalf("Open calls %v, want %v (the default must not have run)", o.opened, want)
	}
}

// Calls from many goroutines while hooks are being registered: the race
// detector checks the copy-on-write snapshot, and every Call sees a prefix-
// consistent chain (hooks only ever get added).
func TestConcurrentCall(t *testing.T) {
	t.Parallel()
	dr, p := pair(t)
	reg := hooks.NewRegistry()
	var calls atomic.Int64
	count := func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { calls.Add(1); return 0 }
	reg.MailQueueMaintain.RegisterFirst(count)
	reg.MailQueueMaintain.SetDefault(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { return 1 })
	var inits atomic.Int64
	reg.PostInitiateConnectionSMTP.RegisterLast(func(*queue.DomainRecord, int, time.Time, int) { inits.Add(1) })

	const goroutines, per = 8, 500
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range per {
				if r := reg.MailQueueMaintain.Call(dr, 1, p, time.Unix(1, 0), 1, 0); r != 1 {
					t.Errorf("Call = %d, want the default's 1", r)
					return
				}
				reg.PostInitiateConnectionSMTP.Call(dr, 1, time.Unix(1, 0), 3)
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			reg.MailQueueMaintain.RegisterLast(count)
			reg.PostSessionSMTP.RegisterFirst(func(*queue.DomainRecord, int, time.Time, hooks.SessionResult) {})
		}
	})
	wg.Wait()
	if calls.Load() < goroutines*per {
		t.Fatalf("first hook ran %d times, want ≥ %d", calls.Load(), goroutines*per)
	}
	if inits.Load() != goroutines*per {
		t.Fatalf("post-initiate ran %d times, want %d", inits.Load(), goroutines*per)
	}
}
