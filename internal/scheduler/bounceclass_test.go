package scheduler

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
)

// TestBounceClasses: real replies from a loopback receiver and a real
// NXDOMAIN from the loopback DNS give every deferred, bounced and expired
// record its bounce class; the message's one DSN carries the same class
// per recipient in X-Mtad-Bounce-Class; an operator rule given to the
// scheduler beats the built-in one; and the counter by class and event is
// served on an admin /metrics endpoint.
func TestBounceClasses(t *testing.T) {
	t.Parallel()
	replies := map[string]error{
		"nouser":  loopbacktest.Reply(550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist."),
		"blocked": loopbacktest.Reply(550, [3]int{5, 7, 1}, "Unfortunately, messages from [127.0.0.2] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."),
		"mime":    loopbacktest.Reply(550, [3]int{5, 0, 0}, "Envelope blocked - User Entry"),
		"later":   loopbacktest.Reply(421, [3]int{4, 7, 0}, "[TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints"),
		"full":    loopbacktest.Reply(452, [3]int{4, 2, 2}, "The email account that you tried to reach is over quota."),
	}
	sinks, port := loopbacktest.StartSinks(t, []string{ip(61, 10), ip(61, 11)}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{}
		}
		return loopbacktest.Config{Rcpt: func(to string) error { return replies[strings.Split(to, "@")[0]] }}
	})
	own, err := policy.NewClassifier([]policy.BounceRule{{Name: "mimecast", Code: "550", Text: "envelope blocked", Class: policy.ClassSpamBlock}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h := newHarness(t, port, func(o *Options) {
		o.MaxAge = 15 * time.Minute
		o.Bounce = own
		o.Metrics = reg
	})
	h.mxFor("dest.test", ip(61, 10))
	// A 421 ends the session (RFC 5321 3.8), so it gets a domain of its own.
	h.mxFor("later.test", ip(61, 10))
	h.mxFor("origin.test", ip(61, 11))
	// nx.test has no records: the loopback DNS answers NXDOMAIN.
	m := h.inject("alice@origin.test", "nouser@dest.test", "blocked@dest.test", "mime@dest.test",
		"later@later.test", "full@dest.test", "x@nx.test")

	want := map[string]struct {
		event string
		class int64
	}{
		"nouser@dest.test":  {"bounced", 10},
		"blocked@dest.test": {"bounced", 51},
		"mime@dest.test":    {"bounced", 51}, // the operator's rule; built-in would say 50
		"later@later.test":  {"deferred", 70},
		"full@dest.test":    {"deferred", 22},
		"x@nx.test":         {"bounced", 21},
	}
	check := func(n int) {
		t.Helper()
		for range n {
			e := h.next(outcomeEvents...)
			w, ok := want[e.str("recipient")]
			if !ok || e.name != w.event || e.fields["bounce_class"] != w.class {
				t.Errorf("%s: %s bounce_class %v, want %s %d (%v)", e.str("recipient"), e.name,
					e.fields["bounce_class"], w.event, w.class, e.fields)
			}
		}
	}
	check(len(want))

	// Past max_age the two deferred recipients expire: the TSS04 one is a
	// timeout, the mailbox-full one stays mailbox full.
	want["later@later.test"] = struct {
		event string
		class int64
	}{"expired", 24}
	want["full@dest.test"] = struct {
		event string
		class int64
	}{"expired", 22}
	h.s.Tick(h.clock.Advance(16 * time.Minute))
	check(2)
	h.gone(m.ID)

	msgs := sinks[1].WaitMessages(t, 1)
	p, err := parseDSN(msgs[0].Data)
	if err != nil {
		t.Fatalf("DSN: %v\n%s", err, msgs[0].Data)
	}
	dsnWant := map[string]string{
		"rfc822; nouser@dest.test":  "10 (Invalid Recipient)",
		"rfc822; blocked@dest.test": "51 (Spam Block)",
		"rfc822; mime@dest.test":    "51 (Spam Block)",
		"rfc822; later@later.test":  "24 (Timeout)",
		"rfc822; full@dest.test":    "22 (Mailbox Full)",
		"rfc822; x@nx.test":         "21 (DNS Failure)",
	}
	if len(p.Recipients) != len(dsnWant) {
		t.Fatalf("DSN reports %d recipients, want %d", len(p.Recipients), len(dsnWant))
	}
	for _, r := range p.Recipients {
		if got, w := r.Get("X-Mtad-Bounce-Class"), dsnWant[r.Get("Final-Recipient")]; got != w {
			t.Errorf("DSN %s: X-Mtad-Bounce-Class %q, want %q", r.Get("Final-Recipient"), got, w)
		}
	}

	// The DSN's own delivery is logged as delivered, with no class.
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.fields["bounce_class"] != nil {
		t.Errorf("DSN delivery %s %v", e.name, e.fields)
	}

	got := scrape(t, reg)
	for series, n := range map[string]string{
		`mtad_bounce_class_total{class="10",event="bounced"}`:  "1",
		`mtad_bounce_class_total{class="51",event="bounced"}`:  "2",
		`mtad_bounce_class_total{class="21",event="bounced"}`:  "1",
		`mtad_bounce_class_total{class="70",event="deferred"}`: "1",
		`mtad_bounce_class_total{class="22",event="deferred"}`: "1",
		`mtad_bounce_class_total{class="24",event="expired"}`:  "1",
		`mtad_bounce_class_total{class="22",event="expired"}`:  "1",
	} {
		if got[series] != n {
			t.Errorf("%s = %q, want %s (scraped %v)", series, got[series], n, got)
		}
	}
	if len(got) != 7 {
		t.Errorf("%d bounce class series, want 7: %v", len(got), got)
	}
}

// scrape serves reg on an admin server on loopback and reads the
// mtad_bounce_class_total series from its /metrics.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]string {
	t.Helper()
	srv := admin.New(admin.Options{Listen: "127.0.0.1:0", Gatherer: reg})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	c := &http.Client{Timeout: waitLimit, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "mtad_bounce_class_total{") {
			k, v, _ := strings.Cut(l, " ")
			out[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSetBounceClassifier: a reload's classifier decides the outcomes
// settled after it.
func TestSetBounceClassifier(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(62, 10)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(string) error {
			return loopbacktest.Reply(550, [3]int{5, 0, 0}, "Envelope blocked - User Entry")
		}}
	})
	h := newHarness(t, port, nil)
	h.mxFor("dest.test", ip(62, 10))
	h.inject("", "a@dest.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.fields["bounce_class"] != int64(policy.ClassMailBlock) {
		t.Fatalf("before: %s %v", e.name, e.fields)
	}
	own, err := policy.NewClassifier([]policy.BounceRule{{Code: "550", Text: "envelope blocked", Class: policy.ClassSpamBlock}})
	if err != nil {
		t.Fatal(err)
	}
	h.s.SetBounceClassifier(own)
	h.s.SetBounceClassifier(nil) // ignored
	h.inject("", "b@dest.test")
	if e := h.next(outcomeEvents...); e.name != "bounced" || e.fields["bounce_class"] != int64(policy.ClassSpamBlock) {
		t.Fatalf("after: %s %v", e.name, e.fields)
	}
}
