package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/spool"
)

// viewSink answers 550 5.1.1 to recipients at bounce.test, 451 4.3.0 to
// those at x.test and y.test, and accepts the rest.
func viewSink(t *testing.T, addr string) int {
	t.Helper()
	_, port := loopbacktest.StartSinks(t, []string{addr}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			to = strings.TrimSuffix(to, ">")
			switch {
			case strings.HasSuffix(to, "@bounce.test"):
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user")
			case strings.HasSuffix(to, "@x.test"), strings.HasSuffix(to, "@y.test"):
				return loopbacktest.Reply(451, [3]int{4, 3, 0}, "try again later")
			}
			return nil
		}}
	})
	return port
}

// viewFixture queues m1 (x.test, y.test) and m2 (x.test) as deferred and
// bounces m3 (bounce.test); it returns the three messages and the bounce
// class the bounced record carried.
func viewFixture(t *testing.T) (*harness, []*spool.Message, string) {
	h := newHarness(t, viewSink(t, ip(91, 10)), nil)
	for _, d := range []string{"x.test", "y.test", "bounce.test"} {
		h.mxFor(d, ip(91, 10))
	}
	m1 := h.inject("s@src.test", "a@x.test", "b@y.test")
	m2 := h.inject("t@src.test", "c@x.test")
	m3 := h.inject("", "d@bounce.test") // the null sender: no DSN to deliver besides
	class := ""
	deferred := 0
	for range 4 {
		e := h.next(outcomeEvents...)
		switch e.name {
		case "deferred":
			deferred++
		case "bounced":
			class = fmt.Sprint(e.fields["bounce_class"])
		default:
			t.Fatalf("outcome %s %v", e.name, e.fields)
		}
	}
	if deferred != 3 || class == "" {
		t.Fatalf("%d deferred, bounce class %q; want 3 and one bounce", deferred, class)
	}
	h.quiet()
	return h, []*spool.Message{m1, m2, m3}, class
}

func itemByName(p ViewPage, name string) *ViewItem {
	for i := range p.Items {
		it := &p.Items[i]
		if cmpName := it.Domain + it.Site + it.Binding; cmpName == name || it.Domain+"|"+it.Binding == name {
			return it
		}
	}
	return nil
}

func TestQueueViewCounts(t *testing.T) {
	t.Parallel()
	h, msgs, class := viewFixture(t)
	page, err := h.s.QueueView(ViewQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if page.By != "domain" || page.Total != 3 || page.Limit != DefaultViewLimit {
		t.Fatalf("page %+v, want 3 domains by domain", page)
	}
	// What the spool has pending per domain is what the view has delayed.
	pending := map[string]int{}
	for _, m := range msgs {
		got, err := h.sp.Get(m.ID)
		if err != nil {
			continue // m3 bounced and left
		}
		for _, r := range got.Recipients {
			if r.State == spool.Pending {
				pending[r.Addr[strings.IndexByte(r.Addr, '@')+1:]]++
			}
		}
	}
	for _, dom := range []string{"x.test", "y.test"} {
		it := itemByName(page, dom)
		if it == nil {
			t.Fatalf("no row for %s in %+v", dom, page.Items)
		}
		if it.Delayed != pending[dom] || it.Active != 0 || it.Deferred != int64(pending[dom]) || it.Bounced != 0 {
			t.Errorf("%s: %+v, want delayed = deferred = %d (the spool's pending)", dom, it, pending[dom])
		}
		if lr := it.LastReply; lr == nil || lr.Code != 451 || lr.Enhanced != "4.3.0" || !strings.Contains(lr.Text, "try again later") {
			t.Errorf("%s last reply %+v, want the 451 4.3.0", dom, it.LastReply)
		}
		if it.OldestSeconds != 0 {
			t.Errorf("%s oldest %ds, want 0 on a clock that has not moved", dom, it.OldestSeconds)
		}
		if it.Suspension != nil || it.Throttle != nil {
			t.Errorf("%s: suspension %+v throttle %+v, want none", dom, it.Suspension, it.Throttle)
		}
	}
	b := itemByName(page, "bounce.test")
	if b == nil || b.Bounced != 1 || b.Delayed != 0 || b.BounceClasses[class] != 1 || len(b.BounceClasses) != 1 {
		t.Fatalf("bounce.test %+v, want 1 bounced of class %s", b, class)
	}
	if b.LastReply == nil || b.LastReply.Code != 550 || b.LastReply.Enhanced != "5.1.1" {
		t.Errorf("bounce.test last reply %+v, want 550 5.1.1", b.LastReply)
	}

	// The clock moves: the oldest age follows the arrival.
	h.clock.Advance(90e9)
	page, _ = h.s.QueueView(ViewQuery{Domain: "x.test"})
	if page.Total != 1 || page.Items[0].OldestSeconds != 90 {
		t.Fatalf("x.test after 90s: %+v", page.Items)
	}
}

func TestQueueViewSortPageFilter(t *testing.T) {
	t.Parallel()
	h, _, _ := viewFixture(t)
	names := func(p ViewPage) []string {
		var n []string
		for _, it := range p.Items {
			n = append(n, it.name)
		}
		return n
	}
	p, err := h.s.QueueView(ViewQuery{Sort: "delayed", Desc: true})
	if err != nil || !slices.Equal(names(p), []string{"x.test", "y.test", "bounce.test"}) {
		t.Fatalf("by delayed desc: %v %v", names(p), err)
	}
	p, _ = h.s.QueueView(ViewQuery{Sort: "name"})
	if !slices.Equal(names(p), []string{"bounce.test", "x.test", "y.test"}) {
		t.Fatalf("by name: %v", names(p))
	}
	p, _ = h.s.QueueView(ViewQuery{Sort: "delayed", Desc: true, Limit: 1, Offset: 1})
	if p.Total != 3 || !slices.Equal(names(p), []string{"y.test"}) {
		t.Fatalf("page 2 of 1: total %d %v", p.Total, names(p))
	}
	p, _ = h.s.QueueView(ViewQuery{Offset: 10})
	if p.Total != 3 || len(p.Items) != 0 {
		t.Fatalf("past the end: %+v", p)
	}
	p, _ = h.s.QueueView(ViewQuery{Domain: "[xy].TEST", Sort: "name"})
	if !slices.Equal(names(p), []string{"x.test", "y.test"}) {
		t.Fatalf("glob: %v", names(p))
	}
	// By pair and binding: the deliveries spread over the bindings.
	p, _ = h.s.QueueView(ViewQuery{By: "pair", Sort: "name"})
	x := 0
	for _, it := range p.Items {
		if it.Binding == "" || it.Site != "" {
			t.Fatalf("pair row %+v without its binding", it)
		}
		if it.Domain == "x.test" {
			x += it.Delayed
		}
	}
	if x != 2 {
		t.Fatalf("by pair: x.test delayed %d, want 2: %+v", x, p.Items)
	}
	p, _ = h.s.QueueView(ViewQuery{By: "binding"})
	delayed, bounced := 0, int64(0)
	for _, it := range p.Items {
		delayed, bounced = delayed+it.Delayed, bounced+it.Bounced
		one, err := h.s.QueueView(ViewQuery{Binding: it.Binding})
		sum := 0
		for _, d := range one.Items {
			sum += d.Delayed
		}
		if err != nil || sum != it.Delayed {
			t.Fatalf("binding %s: domains' delayed %d, binding row %d (%v)", it.Binding, sum, it.Delayed, err)
		}
	}
	if delayed != 3 || bounced != 1 {
		t.Fatalf("by binding: %d delayed %d bounced, want 3 and 1: %+v", delayed, bounced, p.Items)
	}
	p, _ = h.s.QueueView(ViewQuery{By: "site"})
	if p.Total != 3 || !strings.HasPrefix(p.Items[0].Site, "domain:") {
		t.Fatalf("by site without shaping: %+v", p.Items)
	}

	for _, tc := range []struct {
		q     ViewQuery
		param string
	}{
		{ViewQuery{By: "mx"}, "by"},
		{ViewQuery{Sort: "size"}, "sort"},
		{ViewQuery{Limit: MaxViewLimit + 1}, "limit"},
		{ViewQuery{Offset: -1}, "offset"},
		{ViewQuery{Domain: "[x"}, "domain"},
		{ViewQuery{Binding: "nope"}, "binding"},
		{ViewQuery{Provider: "gmail"}, "provider"},
	} {
		_, err := h.s.QueueView(tc.q)
		var qe *QueryError
		if !errors.Is(err, ErrBadQuery) || !errors.As(err, &qe) || qe.Param != tc.param {
			t.Errorf("QueueView(%+v) = %v, want a bad %s", tc.q, err, tc.param)
		}
	}
}

func TestMessagesAndDetail(t *testing.T) {
	t.Parallel()
	h, msgs, _ := viewFixture(t)
	m1, m2 := msgs[0], msgs[1]
	ids := func(p MessagePage) []string {
		var n []string
		for _, it := range p.Items {
			n = append(n, it.QueueID+"@"+it.Domain)
		}
		return n
	}
	p, err := h.s.Messages(MessageQuery{Domain: "X.test"})
	if err != nil || !slices.Equal(ids(p), []string{m1.ID + "@x.test", m2.ID + "@x.test"}) || p.Next != "" {
		t.Fatalf("x.test: %v next %q %v", ids(p), p.Next, err)
	}
	it := p.Items[0]
	if it.State != "delayed" || it.NextAttempt == nil || it.Attempts != 1 || it.Sender != "s@src.test" ||
		!slices.Equal(it.Recipients, []string{"a@x.test"}) || it.Size != m1.Size || !it.Arrival.Equal(m1.Received) {
		t.Fatalf("item %+v", it)
	}
	p, _ = h.s.Messages(MessageQuery{Domain: "x.test", Limit: 1})
	if !slices.Equal(ids(p), []string{m1.ID + "@x.test"}) || p.Next != m1.ID {
		t.Fatalf("page 1: %v next %q", ids(p), p.Next)
	}
	p, _ = h.s.Messages(MessageQuery{Domain: "x.test", Limit: 1, After: p.Next})
	if !slices.Equal(ids(p), []string{m2.ID + "@x.test"}) {
		t.Fatalf("page 2: %v", ids(p))
	}
	p, _ = h.s.Messages(MessageQuery{Sender: "S@SRC.test"})
	if !slices.Equal(ids(p), []string{m1.ID + "@x.test", m1.ID + "@y.test"}) {
		t.Fatalf("by sender: %v", ids(p))
	}
	p, _ = h.s.Messages(MessageQuery{Domain: "x.test", Binding: it.Binding})
	if len(p.Items) == 0 || p.Items[0].QueueID != m1.ID {
		t.Fatalf("pair: %v", ids(p))
	}
	for _, pi := range p.Items {
		if pi.Binding != it.Binding {
			t.Fatalf("pair %s: item %+v", it.Binding, pi)
		}
	}
	for _, q := range []MessageQuery{{}, {Domain: "x.test", Sender: "s@src.test"}, {Binding: "b0"},
		{Domain: "x.test", Binding: "nope"}, {Domain: "x..test"}, {Sender: "s@src.test", Limit: 5000}} {
		if _, err := h.s.Messages(q); !errors.Is(err, ErrBadQuery) {
			t.Errorf("Messages(%+v) = %v, want a bad query", q, err)
		}
	}

	d, err := h.s.Message(m1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Held || d.Sender != "s@src.test" || len(d.Recipients) != 2 || d.Recipients[0].State != spool.Pending.String() ||
		d.Recipients[0].LastCode != 451 || d.Recipients[0].Attempts != 1 || d.Truncated {
		t.Fatalf("detail %+v", d)
	}
	if d.Headers != "From: s@src.test\r\nSubject: test for a@x.test\r\n" {
		t.Fatalf("headers %q", d.Headers)
	}
	if _, err := h.s.Message("nope"); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := h.s.MessageBody(msgs[2].ID); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("body of a bounced message: %v", err)
	}
}

func TestHeaderEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"A: b\r\n\r\nbody", 6},
		{"A: b\n\nbody", 5},
		{"A: b\r\nC: d\r\n", -1},
		{"\r\n\r\n", 2},
	} {
		if got := headerEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("headerEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
	if got := notifyString(spool.NotifySuccess | spool.NotifyDelay); got != "SUCCESS,DELAY" {
		t.Errorf("notify %q", got)
	}
}

// FuzzViewQuery: any query is answered or refused with a QueryError that
// names one of the view's parameters; never a panic, never a page past
// its limit.
func FuzzViewQuery(f *testing.F) {
	f.Add("domain", "active", "*.example.com", "", 0, 0, false)
	f.Add("pair", "oldest", "[", "b0", 10, 5, true)
	f.Add("site", "name", "x.test", "nope", -1, -1, false)
	h := newHarness(f, 1, nil)
	h.q.Domain("x.test").Pair(0)
	f.Fuzz(func(t *testing.T, by, sort, domain, binding string, limit, offset int, desc bool) {
		p, err := h.s.QueueView(ViewQuery{By: by, Sort: sort, Domain: domain, Binding: binding, Limit: limit, Offset: offset, Desc: desc})
		if err != nil {
			var qe *QueryError
			if !errors.As(err, &qe) || !slices.Contains([]string{"by", "sort", "limit", "offset", "domain", "binding"}, qe.Param) {
				t.Fatalf("error %v is not a QueryError naming a parameter", err)
			}
			return
		}
		if len(p.Items) > p.Limit || p.Limit > MaxViewLimit {
			t.Fatalf("page of %d items, limit %d", len(p.Items), p.Limit)
		}
	})
}

// FuzzMessageQuery: likewise for Messages' chooser.
func FuzzMessageQuery(f *testing.F) {
	f.Add("x.test", "", "", 0, "")
	f.Add("", "b0", "", 10, "01")
	f.Add("", "", "s@src.test", 2000, "")
	h := newHarness(f, 1, nil)
	f.Fuzz(func(t *testing.T, domain, binding, sender string, limit int, after string) {
		p, err := h.s.Messages(MessageQuery{Domain: domain, Binding: binding, Sender: sender, Limit: limit, After: after})
		if err != nil {
			var qe *QueryError
			if !errors.As(err, &qe) || !slices.Contains([]string{"limit", "domain", "binding", "sender"}, qe.Param) {
				t.Fatalf("error %v is not a QueryError naming a parameter", err)
			}
			return
		}
		if p.Items == nil || len(p.Items) > MaxMessageLimit {
			t.Fatalf("page %+v", p)
		}
	})
}

// TestQueueViewPolicy: with shaping, a row shows the suspension and the
// throttle in force over it, and the site it rolls up to.
func TestQueueViewPolicy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, viewSink(t, ip(91, 11)), func(o *Options) { o.Shaper = testShaper(t, nil) })
	h.mxFor("x.test", ip(91, 11))
	h.resolved("x.test")
	h.inject("", "a@x.test")
	h.deferredAll(1)
	now := h.clock.Now()
	sp := h.s.Suspend(policy.Suspension{Kind: policy.ScopeDomain, Name: "x.test", Reason: "too many 451s",
		Source: policy.SourceOperator, Until: now.Add(time.Hour)})
	rate, err := policy.ParseRate("2/m")
	if err != nil {
		t.Fatal(err)
	}
	h.s.overrides.Set(policy.Override{Rule: "slow", Scope: policy.ScopeKey(policy.ScopeDomain, "x.test", ""),
		MaxMessageRate: &rate, Start: now, End: now.Add(30 * time.Minute)})

	p, err := h.s.QueueView(ViewQuery{})
	if err != nil || p.Total != 1 {
		t.Fatalf("%+v %v", p, err)
	}
	it := p.Items[0]
	if s := it.Suspension; s == nil || s.ID != sp.ID || s.Reason != "too many 451s" || s.By != policy.SourceOperator ||
		!s.Until.Equal(sp.Until) || s.Scope != policy.ScopeKey(policy.ScopeDomain, "x.test", "") {
		t.Errorf("suspension %+v, want %+v", it.Suspension, sp)
	}
	if th := it.Throttle; th == nil || th.Rate != "2/m" || !th.Until.Equal(now.Add(30*time.Minute)) {
		t.Errorf("throttle %+v, want 2/m until +30m", it.Throttle)
	}
	p, _ = h.s.QueueView(ViewQuery{By: "site"})
	if p.Total != 1 || p.Items[0].Site == "" || p.Items[0].Delayed != 1 || p.Items[0].Suspension == nil {
		t.Errorf("by site: %+v", p.Items)
	}
	// Once they end, neither is shown.
	h.clock.Advance(2 * time.Hour)
	if p, _ = h.s.QueueView(ViewQuery{}); p.Items[0].Suspension != nil || p.Items[0].Throttle != nil {
		t.Errorf("after both ended: %+v %+v", p.Items[0].Suspension, p.Items[0].Throttle)
	}
}

// TestQueueViewOperatorEnds: an operator's bounce counts in the view's
// bounced and its class 25 (admin failure), as its log record, metric and
// summary do; a cancel is no bounce there but is the pair's last reply.
func TestQueueViewOperatorEnds(t *testing.T) {
	t.Parallel()
	h, _, _ := viewFixture(t)
	if n, err := h.s.Bounce(Selector{Domain: "x.test"}, "spam complaint", "erin"); err != nil || n != 2 {
		t.Fatalf("bounce x.test: %d, %v; want 2", n, err)
	}
	if n, err := h.s.Cancel(Selector{Domain: "y.test"}, "wrong list", "gus", false); err != nil || n != 1 {
		t.Fatalf("cancel y.test: %d, %v; want 1", n, err)
	}
	page, err := h.s.QueueView(ViewQuery{})
	if err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprint(int(policy.ClassAdminFailure))
	x := itemByName(page, "x.test")
	if x == nil || x.Bounced != 2 || x.BounceClasses[admin] != 2 || x.Delayed != 0 {
		t.Fatalf("x.test %+v, want 2 bounced of class %s and none delayed", x, admin)
	}
	if x.LastReply == nil || !strings.Contains(x.LastReply.Text, "bounced by erin: spam complaint") {
		t.Errorf("x.test last reply %+v, want the operator's bounce", x.LastReply)
	}
	y := itemByName(page, "y.test")
	if y == nil || y.Bounced != 0 || y.BounceClasses[admin] != 0 || y.Delayed != 0 {
		t.Fatalf("y.test %+v, want no bounce and none delayed", y)
	}
	if y.LastReply == nil || !strings.Contains(y.LastReply.Text, "cancelled by gus: wrong list") {
		t.Errorf("y.test last reply %+v, want the operator's cancel", y.LastReply)
	}
}
