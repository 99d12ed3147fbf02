package accounting_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/hooks/accounting"
	"github.com/mtad/mtad/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counters gathers every counter on reg as "name{label=value}" → value.
func counters(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()+labels(m)] = m.GetCounter().GetValue()
		}
	}
	return out
}

func labels(m *dto.Metric) string {
	var s []string
	for _, l := range m.GetLabel() {
		s = append(s, l.GetName()+"="+l.GetValue())
	}
	if len(s) == 0 {
		return ""
	}
	return "{" + strings.Join(s, ",") + "}"
}

func TestEnabledByNameExportsMetrics(t *testing.T) {
	t.Parallel()
	metrics := prometheus.NewRegistry()
	reg := hooks.NewRegistry()
	defaultRan := 0
	reg.MailQueueMaintain.SetDefault(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int {
		defaultRan++
		return 2
	})
	if err := hooks.Enable(reg, []string{accounting.Name}, nil, hooks.PluginConfig{Metrics: metrics}); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	q := queue.New()
	p0 := q.Push(&queue.Delivery{MsgID: "a", Domain: "x.test", Slot: 0})
	p1 := q.Push(&queue.Delivery{MsgID: "b", Domain: "y.test", Slot: 1})
	now := time.Unix(10, 0)
	for _, c := range []struct {
		p    *queue.Pair
		goal int
	}{{p0, 3}, {p1, 4}, {p0, 2}, {p1, 0}} {
		if r := reg.MailQueueMaintain.Call(c.p.Domain(), c.p.Slot(), c.p, now, c.goal, 1); r != 2 {
			t.Fatalf("Call = %d: accounting changed the decision", r)
		}
	}
	if defaultRan != 4 {
		t.Fatalf("default ran %d times, want 4", defaultRan)
	}
	for _, fd := range []int{7, 8, int(hooks.ConnErrRefused), int(hooks.ConnErrRefused), int(hooks.ConnErrTimeout)} {
		reg.PostInitiateConnectionSMTP.Call(p0.Domain(), 0, now, fd)
	}
	got := counters(t, metrics)
	want := map[string]float64{
		"mtad_maintain_goal_total{binding_slot=0}":       5,
		"mtad_maintain_goal_total{binding_slot=1}":       4,
		"mtad_connection_attempts_total{result=success}": 2,
		"mtad_connection_attempts_total{result=refused}": 2,
		"mtad_connection_attempts_total{result=timeout}": 1,
	}
	if len(got) != len(want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}

	// Enabling again on the same registerer (a reload) reuses the collectors.
	if err := hooks.Enable(hooks.NewRegistry(), []string{accounting.Name}, nil, hooks.PluginConfig{Metrics: metrics}); err != nil {
		t.Fatalf("second Enable: %v", err)
	}
}

func TestSnapshot(t *testing.T) {
	t.Parallel()
	a, err := accounting.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := hooks.NewRegistry()
	a.Register(reg)
	dr := queue.New().Domain("z.test")
	reg.MailQueueMaintain.Call(dr, 0, dr.Pair(0), time.Unix(1, 0), 6, 0)
	reg.PostInitiateConnectionSMTP.Call(dr, 0, time.Unix(1, 0), 3)
	reg.PostInitiateConnectionSMTP.Call(dr, 0, time.Unix(1, 0), int(hooks.ConnErrBind))
	s := a.Snapshot()
	if s.MaintainCalls != 1 || s.GoalTotal != 6 || s.Attempts != 2 || s.Successes != 1 ||
		len(s.Errors) != 1 || s.Errors[hooks.ConnErrBind] != 1 {
		t.Fatalf("Snapshot = %+v", s)
	}
	s.Errors[hooks.ConnErrBind] = 99
	if a.Snapshot().Errors[hooks.ConnErrBind] != 1 {
		t.Fatal("Snapshot shares its map")
	}
}

func TestRefusesSettings(t *testing.T) {
	t.Parallel()
	err := hooks.Enable(hooks.NewRegistry(), []string{"accounting"},
		map[string]map[string]any{"accounting": {"verbose": true}}, hooks.PluginConfig{})
	if err == nil || !strings.Contains(err.Error(), "hooks.settings.accounting.verbose: unknown setting") {
		t.Fatalf("Enable error %v", err)
	}
}
