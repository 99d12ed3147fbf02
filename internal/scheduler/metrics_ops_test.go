package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

// sample sums the value of every series of family name whose labels
// include want (a histogram's sample count).
func sample(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			for k, v := range want {
				if l[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// TestOpsMetrics: a message injected through Intake to a loopback
// receiver that takes two recipients, refuses one for good and one for
// now, and a second domain whose MX refuses connections, move every
// counter by what happened: received, outcomes by event and class, the
// domain's own series, one transaction, the delays of the two delivered,
// connections ok and refused, and the gauges of what stays queued.
func TestOpsMetrics(t *testing.T) {
	t.Parallel()
	sinks, port := loopbacktest.StartSinks(t, []string{ip(71, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			switch strings.Split(to, "@")[0] {
			case "nouser":
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user")
			case "full":
				return loopbacktest.Reply(452, [3]int{4, 2, 2}, "mailbox full")
			}
			return nil
		}}
	})
	reg := prometheus.NewRegistry()
	h := newHarness(t, port, func(o *Options) { o.Metrics = reg })
	h.mxFor("ops.test", ip(71, 10))
	h.mxFor("refused.test", ip(71, 11)) // nothing listens there
	h.resolved("ops.test", "refused.test")
	h.s.Start()

	m := &spool.Message{Sender: "s@origin.test", Received: h.clock.Now()}
	for _, r := range []string{"a@ops.test", "b@ops.test", "nouser@ops.test", "full@ops.test"} {
		m.Recipients = append(m.Recipients, spool.Recipient{Addr: r})
	}
	if err := h.sp.Put(m, []byte("Subject: ops\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	h.s.Intake(m)
	got := map[string]int{}
	for range 4 {
		got[h.next(outcomeEvents...).name]++
	}
	if got["delivered"] != 2 || got["bounced"] != 1 || got["deferred"] != 1 {
		t.Fatalf("outcomes %v", got)
	}
	sinks[0].WaitMessages(t, 1)

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"mtad_messages_received_total", nil, 1},
		{"mtad_recipients_received_total", nil, 4},
		{"mtad_recipients_total", map[string]string{"event": "delivered", "class": ""}, 2},
		{"mtad_recipients_total", map[string]string{"event": "bounced", "class": "10"}, 1},
		{"mtad_recipients_total", map[string]string{"event": "deferred", "class": "22"}, 1},
		{"mtad_recipients_total", nil, 4},
		{"mtad_domain_recipients_total", map[string]string{"domain": "ops.test", "event": "delivered"}, 2},
		{"mtad_domain_recipients_total", map[string]string{"domain": "ops.test"}, 4},
		{"mtad_delivery_delay_seconds", nil, 2},
		{"mtad_smtp_transaction_seconds", nil, 1},
		{"mtad_connections_total", map[string]string{"result": "ok"}, 1},
		{"mtad_queued_messages", nil, 1},
		{"mtad_queued_recipients", nil, 1},
		{"mtad_queued_deliveries", map[string]string{"state": "delayed"}, 1},
		{"mtad_queued_deliveries", map[string]string{"state": "active"}, 0},
		{"mtad_connections_max", nil, 20},
	} {
		if v := sample(t, reg, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if v := sample(t, reg, "mtad_spool_bytes", nil); v <= 0 {
		t.Errorf("mtad_spool_bytes = %v, want the store's size", v)
	}
	if v := sample(t, reg, "mtad_spool_free_bytes", nil); v <= 0 {
		t.Errorf("mtad_spool_free_bytes = %v", v)
	}

	// A refused connection is counted under its CONN_ERR kind before the
	// hooks registered after the scheduler's see it.
	h.inject("s@origin.test", "x@refused.test")
	deadline := time.After(waitLimit)
	for {
		var in [2]any
		select {
		case in = <-h.inits:
		case <-deadline:
			t.Fatal("no connection attempt to refused.test")
		}
		if in[0] == "refused.test" {
			if fd := in[1].(int); fd >= 0 {
				t.Fatalf("connected to a closed port: fd %d", fd)
			}
			break
		}
	}
	if v := sample(t, reg, "mtad_connections_total", map[string]string{"result": "refused"}); v < 1 {
		t.Errorf("mtad_connections_total{result=refused} = %v, want at least the attempt seen", v)
	}
}
