package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/hooks"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/scheduler"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
)

// schedPolicy is the daemon's adminPolicy (cmd/mtad) over a real
// scheduler: shaping, suspensions and throttles are the scheduler's.
type schedPolicy struct {
	*scheduler.Scheduler
	bindings *binding.Set
}

func (p schedPolicy) ResolveShaping(domain, b string) (Shaping, error) {
	r, err := p.Scheduler.ResolveShaping(domain, b)
	if err != nil {
		return Shaping{}, err
	}
	return Shaping{Domain: r.Domain, Binding: r.Binding, MX: r.MX, Shaping: r.Shaping}, nil
}
func (p schedPolicy) HasBinding(name string) bool { return p.bindings.ByName(name) != nil }

// schedQueues is cmd/mtad's adminQueues over the real scheduler (that
// adapter lives in package main): the views and lists as the scheduler
// answers them.
type schedQueues struct{ s *scheduler.Scheduler }

func (q schedQueues) QueueView(v QueueQuery) (any, error) {
	return q.s.QueueView(scheduler.ViewQuery{By: v.By, Sort: v.Sort, Desc: v.Desc, Limit: v.Limit, Offset: v.Offset,
		Domain: v.Domain, Provider: v.Provider, Binding: v.Binding})
}

func (q schedQueues) Messages(v MessageQuery) (any, error) {
	return q.s.Messages(scheduler.MessageQuery{Domain: v.Domain, Binding: v.Binding, Sender: v.Sender, Limit: v.Limit, After: v.After})
}

func (q schedQueues) Message(id string) (any, error) { return q.s.Message(id) }

func (q schedQueues) MessageBody(id string) (io.ReadCloser, int64, error) {
	br, err := q.s.MessageBody(id)
	if err != nil {
		return nil, 0, err
	}
	return br, br.Size(), nil
}

// chromiumPath finds Debian's chromium, or skips the test saying how to
// get it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found: install it (as root: apt-get install -y chromium, or test/e2e/deps.sh) to test the status page in a browser")
	return ""
}

// deliveringScheduler starts a real scheduler with a real spool that
// delivers page.test's mail, through a loopback DNS server, to a loopback
// SMTP sink that refuses nouser@ for good (550 5.1.1) and full@ for now
// (452 4.2.2).
func deliveringScheduler(t *testing.T) (*scheduler.Scheduler, *binding.Set, *spool.Spool) {
	t.Helper()
	const sinkIP = "127.0.93.1"
	_, port := loopbacktest.StartSinks(t, []string{sinkIP}, func(int) loopbacktest.Config {
		return loopbacktest.Config{Rcpt: func(to string) error {
			// Long, with an unbroken URL, as big providers answer: the
			// page must wrap them inside their column.
			const more = "; see https://support.page.test/mail/answer/6596?visit_id=0123456789abcdef0123456789abcdef0123456789&rd=1&hl=en-GB-oxendict"
			switch strings.Split(to, "@")[0] {
			case "nouser":
				return loopbacktest.Reply(550, [3]int{5, 1, 1}, "no such user <b>here</b>; please check the address for typos or unnecessary spaces"+more)
			case "full":
				return loopbacktest.Reply(452, [3]int{4, 2, 2}, "mailbox full, the recipient has exceeded their storage quota"+more)
			}
			return nil
		}}
	})
	dns := loopbacktest.StartDNS(t)
	dns.Add(t, "page.test. 60 IN MX 10 mx.page.test.", "mx.page.test. 60 IN A "+sinkIP)
	set, err := binding.New([]binding.Config{{Name: "b0", Address: "127.0.0.1", EHLO: "b0.mta.test"}}, nil, "mta.test",
		func(netip.Addr) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	res, err := mx.New(mx.Options{Servers: []string{dns.Addr}, Port: port, AllowLoopback: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 4 << 20, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	to := 5 * time.Second
	s, err := scheduler.New(scheduler.Options{
		Spool: sp, Queues: queue.New(), Bindings: set, Hooks: hooks.NewRegistry(), Hostname: "mta.test",
		MaintainInterval: 10 * time.Millisecond, RetryInterval: 10 * time.Minute, MaxRetryInterval: time.Hour,
		Pool: connpool.Options{MaxConnections: 20, Resolver: res, IdleTimeout: 50 * time.Millisecond, ConnectTimeout: to,
			Timeouts: smtpclient.Timeouts{Greeting: to, EHLO: to, Mail: to, Rcpt: to, DataInit: to,
				DataBlock: to, DataTerm: to, StartTLS: to, Quit: to}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	s.Start()
	return s, set, sp
}

// TestStatusPageInBrowser drives the status page in headless Chromium
// against the real admin server and a real scheduler that has delivered,
// bounced and deferred mail over loopback, and checks what a person
// would see: the token form first (the API needs one), then, once the
// token is entered, the summary's figures as the API gives them, the
// last hour's chart with its 60 points a line, the queue sections'
// rows as GET /api/v1/queues gives them, and a suspension made
// through the API listed at the next refresh, its reason shown as text,
// not markup. A full-page screenshot is saved (MTAD_SCREENSHOT_DIR, or
// the system's temporary directory) and its path logged.
func TestStatusPageInBrowser(t *testing.T) {
	exe := chromiumPath(t)
	sched, set, sp := deliveringScheduler(t)

	// Real activity: the null sender (no DSNs), two delivered, one
	// bounced, one deferred.
	m := &spool.Message{Received: time.Now()}
	for _, r := range []string{"a@page.test", "b@page.test", "nouser@page.test", "full@page.test"} {
		m.Recipients = append(m.Recipients, spool.Recipient{Addr: r})
	}
	if err := sp.Put(m, []byte("Subject: page\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	sched.Intake(m)
	deadline := time.Now().Add(20 * time.Second)
	for {
		tot := sched.Summary().Totals
		if tot.Delivered == 2 && tot.Bounced == 1 && tot.Deferred == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler did not settle the message: totals %+v", tot)
		}
		time.Sleep(10 * time.Millisecond) // polling a counter: no event to wait on from here
	}

	tok := strings.Repeat("t", 40)
	toks, err := ParseTokens(strings.NewReader("ops:" + tok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	base := startServer(t, Options{Summary: func() any { return sched.Summary() }, Policy: schedPolicy{sched, set}, Tokens: toks,
		Queues: schedQueues{sched}})
	apiGet := func(path string, v any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
	}

	// The browser: its own profile, gone with it; no sandbox when root
	// (Chromium refuses to start sandboxed as root).
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.WindowSize(1280, 900))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer func() {
		// Close the browser and wait for its process before goleak looks.
		if err := chromedp.Cancel(bctx); err != nil {
			t.Errorf("closing the browser: %v", err)
		}
		cancelBrowser()
		cancelAlloc()
	}()
	run := func(step string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, actions...); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	textOf := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeReady))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	eval := func(step, expr string, v any) {
		t.Helper()
		raw, err := chromedp.Run(bctx, chromedp.Evaluate[json.RawMessage](expr))
		if err == nil {
			err = json.Unmarshal(raw, v)
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] { return chromedp.Poll[chromedp.Void](expr) }

	// 1. No token yet: the form, and an error line saying why.
	run("open the page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#token-form")))
	if e := textOf("#error"); !strings.Contains(e, "not authorized") {
		t.Errorf("error line before the token: %q", e)
	}
	// A wrong token is refused and the form stays.
	run("wrong token", chromedp.SendKeys(chromedp.CSS("#token"), strings.Repeat("x", 40)),
		chromedp.Click(chromedp.CSS("#token-form button")),
		poll(`document.getElementById("token-note").textContent.includes("refused")`))

	// 2. The right token: the form goes, the data comes.
	run("enter the token", chromedp.SendKeys(chromedp.CSS("#token"), tok),
		chromedp.Click(chromedp.CSS("#token-form button")),
		chromedp.WaitNotVisible(chromedp.CSS("#token-form")),
		poll(`document.getElementById("tot-delivered").textContent !== ""`))
	if e := textOf("#refreshed"); !strings.HasPrefix(e, "refreshed ") {
		t.Errorf("refreshed line: %q", e)
	}

	// 3. The summary as rendered equals the API's. The last minute moves
	// with the clock, so both are read again if one refresh fell between.
	var api scheduler.Summary
	var shown map[string]string
	readShown := `(() => { const o = {}; for (const td of document.querySelectorAll("#summary td, #state td")) o[td.id] = td.textContent; return o; })()`
	for try := 0; ; try++ {
		eval("read the summary", readShown, &shown)
		apiGet("/api/v1/summary", &api)
		var again map[string]string
		eval("read the summary again", readShown, &again)
		if fmt.Sprint(again) == fmt.Sprint(shown) || try == 3 {
			break
		}
	}
	want := map[string]int64{
		"tot-received": api.Totals.Received, "tot-received_recipients": api.Totals.ReceivedRecipients,
		"tot-delivered": api.Totals.Delivered, "tot-deferred": api.Totals.Deferred, "tot-bounced": api.Totals.Bounced,
		"tot-expired": api.Totals.Expired, "tot-cancelled": api.Totals.Cancelled,
		"min-received": api.LastMinute.Received, "min-received_recipients": api.LastMinute.ReceivedRecipients,
		"min-delivered": api.LastMinute.Delivered, "min-deferred": api.LastMinute.Deferred,
		"min-bounced": api.LastMinute.Bounced, "min-expired": api.LastMinute.Expired,
		"min-cancelled":   api.LastMinute.Cancelled,
		"queued_messages": int64(api.QueuedMessages), "queued_recipients": api.QueuedRecipients,
		"suspension_count": int64(api.Suspensions),
	}
	for id, n := range want {
		if shown[id] != strconv.FormatInt(n, 10) {
			t.Errorf("#%s shows %q, the API says %d", id, shown[id], n)
		}
	}
	if shown["tot-delivered"] != "2" || shown["tot-bounced"] != "1" || shown["tot-deferred"] != "1" || shown["queued_messages"] != "1" {
		t.Errorf("the page does not show what happened (2 delivered, 1 bounced, 1 deferred and queued): %v", shown)
	}
	if c := fmt.Sprintf("%d of %d", api.Connections, api.MaxConnections); shown["connections"] != c {
		t.Errorf("connections: %q, want %q", shown["connections"], c)
	}
	if !strings.Contains(shown["spool"], " B") || !strings.Contains(shown["spool"], "free") || strings.Contains(shown["spool"], "unknown") {
		t.Errorf("spool: %q, want its bytes used and free", shown["spool"])
	}

	// 4. The chart: 60 points a line, and the minute of the deliveries
	// drawn above the baseline.
	var points map[string][]string
	eval("read the chart", `(() => { const o = {}; for (const k of ["received","delivered","deferred","bounced"]) o[k] = document.getElementById("line-" + k).getAttribute("points").trim().split(/\s+/); return o; })()`, &points)
	for k, pts := range points {
		if len(pts) != 60 {
			t.Errorf("chart line %s: %d points, want 60", k, len(pts))
		}
	}
	raised := false
	for _, p := range points["delivered"] {
		if _, y, ok := strings.Cut(p, ","); ok {
			if f, err := strconv.ParseFloat(y, 64); err == nil && f < 170 {
				raised = true
			}
		}
	}
	if !raised {
		t.Errorf("chart: no minute of the delivered line above the baseline: %v", points["delivered"])
	}

	// 5. The queue sections as the API serves them: page.test is the
	// busiest (its deferred recipient is queued) and the troubled domain
	// with its last remote reply shown as text (the sink's 550 has markup
	// in it), and b0 is listed with its connections; each row equals the
	// API's.
	var byDomain, byBinding scheduler.ViewPage
	apiGet("/api/v1/queues?by=domain&sort=active&order=desc", &byDomain)
	apiGet("/api/v1/queues?by=binding&sort=connections&order=desc", &byBinding)
	if len(byDomain.Items) != 1 || byDomain.Items[0].Domain != "page.test" || byDomain.Items[0].LastReply == nil ||
		len(byBinding.Items) != 1 || byBinding.Items[0].Binding != "b0" {
		t.Fatalf("the API's queues: %+v by binding %+v; want page.test with a last reply, and b0", byDomain, byBinding)
	}
	pd, pb := byDomain.Items[0], byBinding.Items[0]
	run("wait for the queue sections", poll(`document.querySelector("#busiest table") !== null && document.querySelector("#troubled table") !== null && document.querySelector("#bindings table") !== null`))
	cells := func(sel string) []string {
		t.Helper()
		var c []string
		eval("read "+sel, `Array.from(document.querySelectorAll("`+sel+` tbody tr:first-child td")).map((td) => td.textContent)`, &c)
		return c
	}
	n := strconv.Itoa
	if c, w := cells("#busiest"), []string{"page.test", pd.Provider, n(pd.Active), n(pd.Delayed), n(pd.Connections)}; len(c) < 5 || fmt.Sprint(c[:5]) != fmt.Sprint(w) {
		t.Errorf("busiest domains' row %q, want %q then the age", c, w)
	}
	lr := pd.LastReply
	if c := cells("#troubled"); len(c) != 5 || c[0] != "page.test" || c[1] != strconv.FormatInt(pd.Deferred, 10) ||
		c[2] != strconv.FormatInt(pd.Bounced, 10) || c[3] != n(pd.Delayed) ||
		!strings.HasPrefix(c[4], fmt.Sprintf("%d %s %s", lr.Code, lr.Enhanced, lr.Text)) {
		t.Errorf("troubled domains' row %q; the API: deferred %d bounced %d delayed %d, last reply %+v", c, pd.Deferred, pd.Bounced, pd.Delayed, lr)
	}
	if pd.Deferred != 1 || pd.Bounced != 1 {
		t.Errorf("page.test deferred %d bounced %d, want 1 and 1", pd.Deferred, pd.Bounced)
	}
	if c, w := cells("#bindings"), []string{"b0", n(pb.Connections), n(pb.Active), n(pb.Delayed)}; fmt.Sprint(c) != fmt.Sprint(w) {
		t.Errorf("connections per binding's row %q, want %q", c, w)
	}
	var markup bool
	eval("look for markup in replies", `document.querySelector("#troubled b") !== null`, &markup)
	if markup {
		t.Error("a remote reply was parsed as HTML")
	}
	if s := textOf("#suspensions"); s != "none" {
		t.Errorf("suspensions before one is made: %q, want none", s)
	}

	// 6. A suspension made through the API is listed at the next
	// refresh, its reason as text (never as markup).
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/suspensions",
		strings.NewReader(`{"scope":"domain","name":"page.test","duration":"1h","reason":"<b id=\"x\">abuse</b> desk","by":"tester"}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST suspension: %d", resp.StatusCode)
	}
	run("wait for the suspension", poll(`document.getElementById("suspensions").textContent.includes("page.test")`))
	if s := textOf("#suspensions"); !strings.Contains(s, `<b id="x">abuse</b> desk`) || !strings.Contains(s, "operator") {
		t.Errorf("suspensions: %q, want page.test's with its reason as typed", s)
	}
	markup = false
	eval("look for markup", `document.querySelector("#suspensions b, #x") !== null`, &markup)
	if markup {
		t.Error("the suspension's reason was parsed as HTML")
	}
	run("wait for the count", poll(`document.getElementById("suspension_count").textContent === "1"`))

	// 7. The layout at 1280×900, the width a tester found broken: no
	// horizontal scrolling of the page, no section drawn over another
	// (the troubled domains' long reply over the bindings' table).
	var layout struct {
		ScrollWidth, ClientWidth int
		Overlaps                 []string
	}
	eval("measure the layout", `(() => {
		const ids = ["summary-section", "chart-section", "busiest", "troubled", "bindings", "suspensions"];
		const boxes = ids.map((id) => [id, (document.querySelector("#" + id + " table") || document.getElementById(id)).getBoundingClientRect()]);
		const overlaps = [];
		for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
			const [a, ra] = boxes[i], [b, rb] = boxes[j];
			if (ra.left < rb.right && rb.left < ra.right && ra.top < rb.bottom && rb.top < ra.bottom) overlaps.push(a + " × " + b);
		}
		return { ScrollWidth: document.documentElement.scrollWidth, ClientWidth: document.documentElement.clientWidth, Overlaps: overlaps };
	})()`, &layout)
	if layout.ScrollWidth > layout.ClientWidth {
		t.Errorf("the page overflows: scrollWidth %d > clientWidth %d", layout.ScrollWidth, layout.ClientWidth)
	}
	if len(layout.Overlaps) > 0 {
		t.Errorf("boxes drawn over each other: %q", layout.Overlaps)
	}
	// A local error has no reply code (0): only its enhanced code shows.
	var zeroReply string
	eval("format a code-0 reply", `window.mtadReplyText({code: 0, enhanced: "4.4.1", text: "connection refused"})`, &zeroReply)
	if zeroReply != "4.4.1 connection refused" {
		t.Errorf("code-0 reply shown as %q, want %q", zeroReply, "4.4.1 connection refused")
	}

	// 8. The screenshot, for a person to look at.
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("MTAD_SCREENSHOT_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, "mtad-status-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page screenshot: %s (%d bytes)", path, len(png))
}
