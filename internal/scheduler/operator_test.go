package scheduler

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/spool"
)

// deferringSinkAt is deferringSink, also returning the sink so a test
// can read what it accepted (DSNs to @src.test, and their source address).
func deferringSinkAt(t *testing.T, addr string, deferring *atomic.Bool) (*loopbacktest.Sink, int) {
	t.Helper()
	sinks, port := loopbacktest.StartSinks(t, []string{addr}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			if deferring.Load() && !strings.Contains(to, "@src.test") {
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
			}
			return nil
		}}
	})
	return sinks[0], port
}

// TestBounce: an operator's bounce of a domain ends its recipients as
// bounced (class 25) in the log, metrics and summary, takes their
// messages out of the spool, and sends the sender one DSN reporting them
// failed with 5.0.0 and the operator's reason; the null sender gets none.
func TestBounce(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	sink, port := deferringSinkAt(t, ip(94, 10), &deferring)
	reg := prometheus.NewRegistry()
	h := newHarness(t, port, func(o *Options) { o.Metrics = reg })
	for _, d := range []string{"x.test", "y.test", "src.test"} {
		h.mxFor(d, ip(94, 10))
	}
	m1 := h.inject("s@src.test", "a@x.test", "b@x.test")
	m2 := h.inject("", "c@x.test")
	m3 := h.inject("s@src.test", "d@y.test")
	h.deferredAll(4)

	n, err := h.s.Bounce(Selector{Domain: "x.test"}, "spam complaint", "erin")
	if err != nil || n != 3 {
		t.Fatalf("Bounce = %d, %v; want 3", n, err)
	}
	var got, dsnFor []string
	for len(got) < 3 {
		e := h.next("bounced", "dsn")
		if e.name == "dsn" {
			dsnFor = append(dsnFor, e.str("dsn_for"))
			continue
		}
		if e.str("response") != "spam complaint" || e.str("by") != "erin" || e.fields["bounce_class"] != int64(25) ||
			e.str("enhanced_code") != "5.0.0" {
			t.Fatalf("bounced record %v", e.fields)
		}
		got = append(got, e.str("recipient"))
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"a@x.test", "b@x.test", "c@x.test"}) || !slices.Equal(dsnFor, []string{m1.ID}) {
		t.Fatalf("bounced %v, DSNs for %v; want a, b, c and one DSN for m1", got, dsnFor)
	}
	for _, m := range []*spool.Message{m1, m2} {
		if _, err := h.sp.Get(m.ID); !errors.Is(err, spool.ErrNotFound) {
			t.Fatalf("%s still spooled after its bounce: %v", m.ID, err)
		}
	}
	if _, err := h.sp.Get(m3.ID); err != nil {
		t.Fatalf("y.test's message left the spool: %v", err)
	}
	msgs := sink.WaitMessages(t, 1)
	dsn := msgs[0]
	if dsn.From != "" || !slices.Equal(dsn.To, []string{"s@src.test"}) {
		t.Fatalf("DSN from %q to %v, want from <> to s@src.test", dsn.From, dsn.To)
	}
	for _, want := range []string{"Final-Recipient: rfc822; a@x.test", "Final-Recipient: rfc822; b@x.test",
		"Action: failed", "Status: 5.0.0", "bounced by erin: spam complaint"} {
		if !bytes.Contains(dsn.Data, []byte(want)) {
			t.Errorf("DSN lacks %q:\n%s", want, dsn.Data)
		}
	}
	if v := sample(t, reg, "mtad_recipients_total", map[string]string{"event": "bounced", "class": "25"}); v != 3 {
		t.Errorf("mtad_recipients_total{bounced,25} = %v, want 3", v)
	}
	if v := sample(t, reg, "mtad_bounce_class_total", map[string]string{"event": "bounced", "class": "25"}); v != 3 {
		t.Errorf("mtad_bounce_class_total{25,bounced} = %v, want 3", v)
	}
	if sum := h.s.Summary(); sum.Totals.Bounced != 3 {
		t.Errorf("summary bounced %d, want 3", sum.Totals.Bounced)
	}
	if _, err := h.s.Bounce(Selector{Domain: "x.test"}, "", "erin"); err == nil {
		t.Error("Bounce without a reason: no error")
	}
}

// TestCancelAndBounceByPair: a pair (domain and binding) chooses only the
// deliveries of that domain queued on that binding; the domain's mail on
// another binding stays.
func TestCancelAndBounceByPair(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	_, port := deferringSinkAt(t, ip(95, 10), &deferring)
	h := newHarness(t, port, nil)
	h.mxFor("x.test", ip(95, 10))
	m0 := injectVia(h, "b0", "s@src.test", "a@x.test")
	m1 := injectVia(h, "b1", "s@src.test", "b@x.test")
	m2 := injectVia(h, "b2", "s@src.test", "c@x.test")
	h.deferredAll(3)

	if n, err := h.s.Cancel(Selector{Domain: "X.test", Binding: "b1"}, "pair blocked", "gus", false); err != nil || n != 1 {
		t.Fatalf("Cancel of the pair = %d, %v; want 1", n, err)
	}
	if e := h.next("cancelled"); e.str("recipient") != "b@x.test" || e.str("binding") != "b1" {
		t.Fatalf("cancelled %v, want b@x.test from b1", e.fields)
	}
	if n, err := h.s.Bounce(Selector{Domain: "x.test", Binding: "b2"}, "pair blocked", "gus"); err != nil || n != 1 {
		t.Fatalf("Bounce of the pair = %d, %v; want 1", n, err)
	}
	if e := h.next("bounced"); e.str("recipient") != "c@x.test" || e.str("binding") != "b2" {
		t.Fatalf("bounced %v, want c@x.test from b2", e.fields)
	}
	for _, m := range []*spool.Message{m1, m2} {
		if _, err := h.sp.Get(m.ID); !errors.Is(err, spool.ErrNotFound) {
			t.Fatalf("%s still spooled: %v", m.ID, err)
		}
	}
	if _, err := h.sp.Get(m0.ID); err != nil {
		t.Fatalf("the b0 pair's message left the spool: %v", err)
	}
	if st := h.q.Stats(); st.Delayed != 1 {
		t.Fatalf("%d delayed, want 1 (the b0 pair's)", st.Delayed)
	}
	for _, c := range []struct {
		sel  Selector
		want error
	}{
		{Selector{Binding: "b1"}, ErrBadSelector},
		{Selector{Sender: "s@src.test", Binding: "b1"}, ErrBadSelector},
		{Selector{Domain: "x.test", Binding: "nosuch"}, ErrUnknownBinding},
	} {
		if _, err := h.s.Cancel(c.sel, "why", "gus", false); !errors.Is(err, c.want) {
			t.Errorf("Cancel(%+v): %v, want %v", c.sel, err, c.want)
		}
		if _, err := h.s.Bounce(c.sel, "why", "gus"); !errors.Is(err, c.want) {
			t.Errorf("Bounce(%+v): %v, want %v", c.sel, err, c.want)
		}
	}
}

// TestOperatorRebind: an operator's rebind moves a domain's queued mail
// to the group's binding — the sink sees it come from that binding's
// address — keeps the domain's new mail on the group while it lasts, and
// leaves other domains alone; bad orders are refused precisely.
func TestOperatorRebind(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	deferring.Store(true)
	sink, port := deferringSinkAt(t, ip(96, 10), &deferring)
	var cfgs []binding.Config
	for i, a := range bindingIPs {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i), Address: a})
	}
	set, err := binding.New(cfgs, []binding.GroupConfig{{Name: "clean", Members: []binding.Member{{Name: "b2", Weight: 1}}}},
		"mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) { o.Bindings = set })
	h.mxFor("x.test", ip(96, 10))
	h.mxFor("y.test", ip(96, 10))
	injectVia(h, "b0", "s@src.test", "a@x.test")
	injectVia(h, "b1", "s@src.test", "b@x.test")
	injectVia(h, "b0", "s@src.test", "c@y.test")
	h.deferredAll(3)

	for _, c := range []struct {
		domain, binding, group, reason string
		want                           error
	}{
		{"bad domain", "", "clean", "why", ErrBadSelector},
		{"", "", "clean", "why", ErrBadSelector},
		{"x.test", "nosuch", "clean", "why", ErrUnknownBinding},
		{"x.test", "", "nosuch", "why", ErrUnknownGroup},
		{"x.test", "", "", "why", ErrUnknownGroup},
	} {
		if _, err := h.s.Rebind(c.domain, c.binding, c.group, time.Hour, "hal", c.reason); !errors.Is(err, c.want) {
			t.Errorf("Rebind(%q, %q, %q): %v, want %v", c.domain, c.binding, c.group, err, c.want)
		}
	}
	if _, err := h.s.Rebind("x.test", "", "clean", time.Hour, "hal", " "); err == nil {
		t.Error("Rebind without a reason: no error")
	}

	moved, err := h.s.Rebind("X.test", "", "clean", time.Hour, "hal", "listed on a DNSBL")
	if err != nil || moved != 2 {
		t.Fatalf("Rebind = %d, %v; want 2", moved, err)
	}
	e := h.next("policy")
	if e.str("action") != "rebind" || e.str("source") != "operator" || e.str("by") != "hal" || e.str("scope") != "domain" ||
		e.str("name") != "x.test" || e.str("reason") != "listed on a DNSBL" || e.str("settings") != "group=clean moved=2" || e.fields["until"] == nil {
		t.Fatalf("policy record %v", e.fields)
	}
	if st := h.q.Stats(); st.Delayed != 3 {
		t.Fatalf("%d delayed after the rebind, want 3 (the delayed keep their retry time)", st.Delayed)
	}
	deferring.Store(false)
	if n, err := h.s.Flush("", "", "hal"); err != nil || n != 3 {
		t.Fatalf("Flush = %d, %v; want 3", n, err)
	}
	from := map[string]string{}
	for range 3 {
		e := h.next(outcomeEvents...)
		if e.name != "delivered" {
			t.Fatalf("outcome %s %v, want delivered", e.name, e.fields)
		}
		from[e.str("recipient")] = e.str("binding")
	}
	if want := map[string]string{"a@x.test": "b2", "b@x.test": "b2", "c@y.test": "b0"}; fmt.Sprint(from) != fmt.Sprint(want) {
		t.Fatalf("delivered from %v, want %v", from, want)
	}
	// New mail for the domain goes from the group while the rebind lasts.
	injectVia(h, "b0", "s@src.test", "d@x.test")
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b2" {
		t.Fatalf("new mail: %s %v, want delivered from b2", e.name, e.fields)
	}
	ips := map[string]string{}
	for _, m := range sink.WaitMessages(t, 4) {
		ips[m.To[0]] = m.RemoteIP
	}
	for _, r := range []string{"a@x.test", "b@x.test", "d@x.test"} {
		if ips[r] != bindingIPs[2] {
			t.Errorf("%s came from %s, want b2's %s", r, ips[r], bindingIPs[2])
		}
	}
	if ips["c@y.test"] != bindingIPs[0] {
		t.Errorf("c@y.test came from %s, want b0's %s", ips["c@y.test"], bindingIPs[0])
	}
	h.clock.Advance(time.Hour)
	injectVia(h, "b0", "s@src.test", "e@x.test")
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("binding") != "b0" {
		t.Fatalf("after the hour: %s %v, want delivered from b0", e.name, e.fields)
	}
}

// quarantineOnDisk puts each message in a spool at dir and moves its
// records under q/ as Recover does with a corrupt message (keys and values
// kept), working on the closed store with pebble itself; with damage, one
// recipient record is flipped on the way so the message is unreadable.
func quarantineOnDisk(t *testing.T, dir string, damage map[string]bool, msgs ...*spool.Message) {
	t.Helper()
	sp, err := spool.Open(dir, spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := sp.Put(m, []byte("Subject: held\r\n\r\nhello\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open(filepath.Join(dir, "db"), &pebble.Options{FormatMajorVersion: pebble.FormatNewest, Logger: quietPebble{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	b := db.NewBatch()
	for _, m := range msgs {
		for _, p := range []string{"m/" + m.ID, "b/" + m.ID, "r/" + m.ID + "/"} {
			it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(p), UpperBound: []byte(p + "\xff")})
			if err != nil {
				t.Fatal(err)
			}
			for ok := it.First(); ok; ok = it.Next() {
				if p[0] != 'r' && string(it.Key()) != p {
					continue
				}
				v := bytes.Clone(it.Value())
				if damage[m.ID] && p[0] == 'r' {
					v[len(v)/2] ^= 0x10
				}
				_ = b.Set(append([]byte("q/"), it.Key()...), v, nil)
				_ = b.Delete(bytes.Clone(it.Key()), nil)
			}
			if err := it.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// quietPebble keeps pebble's start-up chatter out of the test output.
type quietPebble struct{ t *testing.T }

func (quietPebble) Infof(string, ...any)           {}
func (q quietPebble) Errorf(f string, args ...any) { q.t.Errorf("pebble: "+f, args...) }
func (q quietPebble) Fatalf(f string, args ...any) { q.t.Fatalf("pebble: "+f, args...) }

// TestReinjectAndDeleteQuarantined: a sound quarantined message is
// re-injected — back in the live spool, queued, delivered — with one
// policy record saying who and why; an unreadable one is refused with the
// reason and stays; a delete removes it.
func TestReinjectAndDeleteQuarantined(t *testing.T) {
	t.Parallel()
	var deferring atomic.Bool
	sink, port := deferringSinkAt(t, ip(97, 10), &deferring)
	dir := t.TempDir()
	good := &spool.Message{Sender: "s@src.test", Received: time.Now(), Recipients: []spool.Recipient{{Addr: "a@x.test"}}}
	bad := &spool.Message{Sender: "s@src.test", Received: time.Now(), Recipients: []spool.Recipient{{Addr: "b@x.test"}}}
	good.ID, bad.ID = "01JQUARANTINEGOOD0000000", "01JQUARANTINEBAD00000000"
	quarantineOnDisk(t, dir, map[string]bool{bad.ID: true}, good, bad)
	sp, err := spool.Open(dir, spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	h := newHarness(t, port, func(o *Options) { o.Spool = sp })
	h.mxFor("x.test", ip(97, 10))
	if q, err := sp.Quarantined(); err != nil || len(q) != 2 {
		t.Fatalf("Quarantined = %v, %v; want 2", q, err)
	}

	m, err := h.s.Reinject(good.ID, "ivy", "disk checked")
	if err != nil || m.ID != good.ID {
		t.Fatalf("Reinject = %v, %v", m, err)
	}
	if e := h.next("policy"); e.str("action") != "reinject" || e.str("by") != "ivy" || e.str("queue_id") != good.ID ||
		e.str("reason") != "disk checked" || e.str("source") != "operator" {
		t.Fatalf("policy record %v", e.fields)
	}
	if e := h.next(outcomeEvents...); e.name != "delivered" || e.str("recipient") != "a@x.test" {
		t.Fatalf("outcome %s %v, want a@x.test delivered", e.name, e.fields)
	}
	if got := sink.WaitMessages(t, 1); !slices.Equal(got[0].To, []string{"a@x.test"}) {
		t.Fatalf("sink got %v", got[0].To)
	}
	h.until("the re-injected message to leave the spool", func() bool { _, err := sp.Get(good.ID); return err != nil })

	if _, err := h.s.Reinject(bad.ID, "ivy", "try"); !errors.Is(err, spool.ErrCorrupt) || !strings.Contains(err.Error(), "recipients") {
		t.Fatalf("Reinject of an unreadable message: %v, want ErrCorrupt naming its recipients", err)
	}
	if _, err := h.s.Reinject(good.ID, "ivy", "again"); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("second Reinject: %v, want ErrNotFound", err)
	}
	if err := h.s.DeleteQuarantined(bad.ID, "ivy", ""); err == nil {
		t.Fatal("delete without a reason: no error")
	}
	if err := h.s.DeleteQuarantined(bad.ID, "ivy", "unrecoverable"); err != nil {
		t.Fatal(err)
	}
	if e := h.next("policy"); e.str("action") != "quarantine_delete" || e.str("queue_id") != bad.ID || e.str("by") != "ivy" {
		t.Fatalf("policy record %v", e.fields)
	}
	if q, err := sp.Quarantined(); err != nil || len(q) != 0 {
		t.Fatalf("Quarantined after all = %v, %v; want none", q, err)
	}
}

// TestBounceInFlight: a message bounced by queue id while a session holds
// its only delivery is not lost: the in-flight recipient is bounced with
// the rest (a record, the DSN to the sender), the message leaves the
// spool, and the session's late outcome changes nothing.
func TestBounceInFlight(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	sinks, port := loopbacktest.StartSinks(t, []string{ip(94, 30)}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Data: func(_ string, to []string, _ []byte) error {
			if len(to) == 1 && strings.Contains(to[0], "@src.test") {
				return nil // the DSN
			}
			entered <- struct{}{}
			<-release
			return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
		}}
	})
	h := newHarness(t, port, nil)
	for _, d := range []string{"x.test", "src.test"} {
		h.mxFor(d, ip(94, 30))
	}
	m := h.inject("s@src.test", "a@x.test")
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatal("the delivery never reached DATA")
	}
	n, err := h.s.Bounce(Selector{QueueID: m.ID}, "recalled", "erin")
	close(release)
	if err != nil || n != 1 {
		t.Fatalf("Bounce = %d, %v; want the one recipient in flight", n, err)
	}
	for {
		e := h.next("bounced", "dsn", "deferred", "delivered")
		if e.name == "dsn" {
			continue
		}
		if e.name != "bounced" || e.str("recipient") != "a@x.test" || e.str("by") != "erin" || e.str("enhanced_code") != "5.0.0" {
			t.Fatalf("record %s %v, want a@x.test bounced by erin", e.name, e.fields)
		}
		break
	}
	if _, err := h.sp.Get(m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("bounced message still spooled: %v", err)
	}
	msgs := sinks[0].WaitMessages(t, 1)
	if !slices.Equal(msgs[0].To, []string{"s@src.test"}) || !bytes.Contains(msgs[0].Data, []byte("Final-Recipient: rfc822; a@x.test")) {
		t.Fatalf("DSN to %v:\n%s", msgs[0].To, msgs[0].Data)
	}
	h.quiet() // the session's 451 comes after: no record, no retry
	if h.s.Pending() != 0 || h.q.Stats().Delayed != 0 {
		t.Fatalf("%d messages held, queues %+v after the bounce", h.s.Pending(), h.q.Stats())
	}
}

// TestOperatorRebindCountsOnce: active mail (held by a suspension) is
// moved through the delayed queue to its new pair, and counted once.
func TestOperatorRebindCountsOnce(t *testing.T) {
	t.Parallel()
	_, port := loopbacktest.StartSinks(t, []string{ip(96, 30)}, nil)
	var cfgs []binding.Config
	for i, a := range bindingIPs {
		cfgs = append(cfgs, binding.Config{Name: fmt.Sprintf("b%d", i), Address: a})
	}
	set, err := binding.New(cfgs, []binding.GroupConfig{{Name: "clean", Members: []binding.Member{{Name: "b2", Weight: 1}}}},
		"mta.test", func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, port, func(o *Options) {
		o.Bindings = set
		o.Shaper = testShaper(t, func(*config.Shaping) {})
	})
	h.mxFor("z.test", ip(96, 30))
	h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "z.test", Source: policy.SourceOperator,
		Reason: "hold", Until: h.clock.Now().Add(time.Hour)})
	for _, r := range []string{"a@z.test", "b@z.test", "c@z.test"} {
		injectVia(h, "b0", "s@src.test", r)
	}
	if st := h.q.Stats(); st.Active != 3 {
		t.Fatalf("queues %+v, want 3 active", st)
	}
	moved, err := h.s.Rebind("z.test", "", "clean", 0, "hal", "move")
	if err != nil || moved != 3 {
		t.Fatalf("Rebind = %d, %v; want 3", moved, err)
	}
}
