package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// remote starts a DNS server and one sink per ip (all on one port) and
// returns them with that port.
func remote(t *testing.T, ips []string, cfg func(i int) loopbacktest.Config) (*loopbacktest.DNS, []*loopbacktest.Sink, int) {
	t.Helper()
	z := loopbacktest.StartDNS(t)
	sinks, port := loopbacktest.StartSinks(t, ips, cfg)
	return z, sinks, port
}

// addMX points domain's MX at a host with address ip.
func addMX(t *testing.T, z *loopbacktest.DNS, domain, ip string) {
	t.Helper()
	z.Add(t, fmt.Sprintf("%s. 300 IN MX 10 mx.%s.", domain, domain), fmt.Sprintf("mx.%s. 300 IN A %s", domain, ip))
}

// wantKeys returns the tally keys the acked messages must produce.
func wantKeys(msgs []testMsg, in *injection) map[string]bool {
	want := map[string]bool{}
	for i, m := range msgs {
		if in.acked[i] == "" {
			continue
		}
		for _, r := range m.to {
			want[tallyKey(m.id, r)] = true
		}
	}
	return want
}

func ips(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s.%d", prefix, i+1)
	}
	return out
}

// TestCrashAfterAckLosesNothing is the "foundation" issue's check: every
// message acked with 250 survives a SIGKILL and is recovered, then
// delivered, after a restart on the same spool.
func TestCrashAfterAckLosesNothing(t *testing.T) {
	t.Parallel()
	const n, clients, domains = 1000, 20, 4
	var open atomic.Bool // the sink defers every RCPT until the test opens it
	ty := newTally()
	z, _, port := remote(t, []string{"127.0.1.1"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{
			Rcpt: func(string) error {
				if !open.Load() {
					return loopbacktest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "not yet")
				}
				return nil
			},
			Data: ty.add,
		}
	})
	for d := range domains {
		addMX(t, z, fmt.Sprintf("r%d.e2e", d), "127.0.1.1")
	}
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	msgs := make([]testMsg, n)
	for i := range msgs {
		msgs[i] = testMsg{id: fmt.Sprintf("crash-%d@e2e", i), from: "app@snd1.e2e", to: []string{fmt.Sprintf("u%d@r%d.e2e", i, i%domains)}}
	}

	d := start(t, e)
	in := inject(d.smtpAddr, clients, msgs, nil)
	d.kill() // right after the last 250
	if len(in.errs) > 0 || in.ackedCount() != n {
		t.Fatalf("injection: %d of %d acked, errors %v", in.ackedCount(), n, in.errs)
	}
	received := 0
	for _, r := range d.records() {
		if r.str("event") == "received" {
			received++
		}
	}
	t.Logf("first run: %d received records before SIGKILL", received)

	d = start(t, e)
	rec := d.waitLog("spool_recovered", 10*time.Second, func(r record) bool { return r.str("event") == "spool_recovered" })
	if rec.num("messages") != n || rec.num("recipients") != n || rec.num("quarantined") != 0 {
		t.Fatalf("spool_recovered = messages %d, recipients %d, quarantined %d; want %d, %d, 0",
			rec.num("messages"), rec.num("recipients"), rec.num("quarantined"), n, n)
	}

	want := wantKeys(msgs, in)
	open.Store(true)
	ty.wait(t, 60*time.Second, fmt.Sprintf("all %d recovered messages delivered", n), func() bool { return ty.missing(want) == 0 })
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
	if extra, keys := ty.dups(); extra != 0 {
		t.Errorf("%d duplicate deliveries without a crash mid-delivery: %v", extra, keys[:min(len(keys), 5)])
	}
}

// bulk is the many-domains setup of the engine tests: five sinks, n
// messages to 50 domains (every 100th also to a second domain).
type bulk struct {
	ty    *tally
	sinks []*loopbacktest.Sink
	env   *env
	msgs  []testMsg
}

const (
	bulkDomains  = 50
	bulkMaxConns = 40
)

var bulkBindings = []string{"127.0.0.2", "127.0.0.3"}

func newBulk(t *testing.T, netPrefix, tag string, n int) *bulk {
	t.Helper()
	b := &bulk{ty: newTally()}
	sinkIPs := ips(netPrefix, 5)
	var z *loopbacktest.DNS
	var port int
	z, b.sinks, port = remote(t, sinkIPs, func(int) loopbacktest.Config { return loopbacktest.Config{Data: b.ty.add} })
	for d := range bulkDomains {
		addMX(t, z, fmt.Sprintf("d%d.e2e", d), sinkIPs[d%len(sinkIPs)])
	}
	b.env = newEnv(t, cfgOpts{dns: z.Addr, port: port, maxConnections: bulkMaxConns, perDomain: 4, bindings: bulkBindings})
	b.msgs = make([]testMsg, n)
	for i := range b.msgs {
		to := []string{fmt.Sprintf("u%d@d%d.e2e", i, i%bulkDomains)}
		if i%100 == 7 {
			to = append(to, fmt.Sprintf("v%d@d%d.e2e", i, (i+1)%bulkDomains))
		}
		b.msgs[i] = testMsg{id: fmt.Sprintf("%s-%d@e2e", tag, i), from: "app@sender.e2e", to: to}
	}
	return b
}

// TestDeliversManyDomainsExactlyOnce is the "engine" issue's check: 10,000
// messages to 50 domains over two bindings, each recipient delivered once,
// each delivery logged with its queue id, recipient, domain, binding and MX.
func TestDeliversManyDomainsExactlyOnce(t *testing.T) {
	t.Parallel()
	n := 10000
	if testing.Short() {
		n = 1000
	}
	b := newBulk(t, "127.0.2", "engine", n)
	d := start(t, b.env)
	in := inject(d.smtpAddr, 20, b.msgs, nil)
	if len(in.errs) > 0 || in.ackedCount() != n {
		t.Fatalf("injection: %d of %d acked, errors %v", in.ackedCount(), n, in.errs)
	}
	want := wantKeys(b.msgs, in)
	b.ty.wait(t, 120*time.Second, fmt.Sprintf("%d deliveries", len(want)), func() bool { return b.ty.missing(want) == 0 })
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
	if extra, keys := b.ty.dups(); extra != 0 {
		t.Errorf("%d duplicate deliveries: %v", extra, keys[:min(len(keys), 5)])
	}

	// The delivery log: one "delivered" record per recipient, complete.
	qid := map[string]string{} // recipient → queue id given at injection
	for i, m := range b.msgs {
		for _, r := range m.to {
			qid[r] = in.acked[i]
		}
	}
	perBinding := map[string]int{}
	seen := map[string]bool{}
	for _, r := range d.records() {
		if r.str("event") != "delivered" {
			continue
		}
		rcpt := r.str("recipient")
		dom := rcpt[strings.IndexByte(rcpt, '@')+1:]
		switch {
		case r.str("queue_id") == "" || r.str("queue_id") != qid[rcpt]:
			t.Errorf("delivered record for %q has queue_id %q, want %q: %v", rcpt, r.str("queue_id"), qid[rcpt], r)
		case r.str("domain") != dom:
			t.Errorf("delivered record for %q has domain %q: %v", rcpt, r.str("domain"), r)
		case r.str("binding") != "b2" && r.str("binding") != "b3":
			t.Errorf("delivered record for %q has binding %q, want b2 or b3: %v", rcpt, r.str("binding"), r)
		case r.str("mx") != "mx."+dom:
			t.Errorf("delivered record for %q has mx %q, want %q: %v", rcpt, r.str("mx"), "mx."+dom, r)
		case seen[rcpt]:
			t.Errorf("two delivered records for %q", rcpt)
		}
		seen[rcpt] = true
		perBinding[r.str("binding")]++
	}
	if len(seen) != len(qid) {
		t.Errorf("%d recipients have a delivered record, want %d", len(seen), len(qid))
	}
	if perBinding["b2"] == 0 || perBinding["b3"] == 0 {
		t.Errorf("deliveries per binding %v: want both bindings used", perBinding)
	}
	sources := map[string]int{}
	for _, s := range b.sinks {
		for _, m := range s.Messages() {
			sources[m.RemoteIP]++
		}
	}
	for ip := range sources {
		if ip != "127.0.0.2" && ip != "127.0.0.3" {
			t.Errorf("a sink saw a connection from %s, not from a binding: %v", ip, sources)
		}
	}
	t.Logf("%d messages, %d deliveries; per binding %v; per source %v", n, len(want), perBinding, sources)
}

// TestKillMidDeliveryRestart SIGKILLs the daemon when about half of the
// deliveries have arrived and restarts it: every acked message arrives, and
// a recipient is sent twice only if its first delivery was in flight at the
// kill or had arrived within the spool's unsynced window before it (a
// finished message's delete is synced within spool FinishSyncDelay, 20 ms;
// see spool.Update), never one from earlier.
func TestKillMidDeliveryRestart(t *testing.T) {
	t.Parallel()
	n := 5000
	if testing.Short() {
		n = 1000
	}
	b := newBulk(t, "127.0.3", "midkill", n)
	d := start(t, b.env)

	var in *injection
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		in = inject(d.smtpAddr, 20, b.msgs, nil)
	}()
	first := d
	defer func() { first.kill(); wg.Wait() }() // on a failed wait, end the clients too
	total := len(b.msgs) + len(b.msgs)/100
	b.ty.wait(t, 120*time.Second, "half the deliveries", func() bool { return b.ty.total >= total/2 })
	killAt := time.Now()
	d.kill()
	wg.Wait()
	b.ty.mu.Lock()
	atKill := b.ty.total
	b.ty.mu.Unlock()
	t.Logf("killed with %d deliveries at the sinks; %d of %d messages acked, %d clients cut", atKill, in.ackedCount(), n, len(in.errs))

	d = start(t, b.env)
	rec := d.waitLog("spool_recovered", 10*time.Second, func(r record) bool { return r.str("event") == "spool_recovered" })
	t.Logf("spool_recovered: messages %d, recipients %d, quarantined %d", rec.num("messages"), rec.num("recipients"), rec.num("quarantined"))
	if rec.num("quarantined") != 0 {
		t.Errorf("quarantined = %d after a SIGKILL, want 0", rec.num("quarantined"))
	}
	want := wantKeys(b.msgs, in)
	b.ty.wait(t, 120*time.Second, fmt.Sprintf("all %d acked deliveries", len(want)), func() bool { return b.ty.missing(want) == 0 })
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
	extra, keys := b.ty.dups()
	sort.Strings(keys)
	// The window: the 20 ms sync delay, plus the fsync, plus how late the
	// sink's record and the kill can be on a loaded machine under -race.
	const window = 20*time.Millisecond + time.Second
	var oldest time.Duration
	for _, k := range keys {
		age := killAt.Sub(b.ty.firstArrival(k))
		oldest = max(oldest, age)
		if age > window {
			t.Errorf("%s sent again after the kill, though its first delivery arrived %v before it (window %v)", k, age, window)
		}
	}
	t.Logf("duplicates after the kill: %d, first delivered at most %v before the kill: %v", extra, oldest, keys[:min(len(keys), 10)])
}

// TestSIGTERMWhileInjecting: SIGTERM during injection lets transactions
// under way finish, exits 0, and every message acked before it is
// delivered (before the exit or after a restart).
func TestSIGTERMWhileInjecting(t *testing.T) {
	t.Parallel()
	const n, domains = 3000, 4
	ty := newTally()
	z, _, port := remote(t, []string{"127.0.4.1"}, func(int) loopbacktest.Config { return loopbacktest.Config{Data: ty.add} })
	for d := range domains {
		addMX(t, z, fmt.Sprintf("t%d.e2e", d), "127.0.4.1")
	}
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	msgs := make([]testMsg, n)
	for i := range msgs {
		msgs[i] = testMsg{id: fmt.Sprintf("term-%d@e2e", i), from: "app@snd4.e2e", to: []string{fmt.Sprintf("u%d@t%d.e2e", i, i%domains)}}
	}
	d := start(t, e)

	trigger := make(chan struct{})
	var once sync.Once
	var in *injection
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		in = inject(d.smtpAddr, 20, msgs, func(k int64) {
			if k >= 300 {
				once.Do(func() { close(trigger) })
			}
		})
	}()
	first := d
	defer func() { first.kill(); <-injected }() // on a failure, end the clients too
	select {
	case <-trigger:
	case <-injected:
		t.Fatal("injection ended before 300 acks")
	case <-time.After(60 * time.Second):
		t.Fatal("no 300 acks within 60s")
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := d.wait(60 * time.Second)
	select {
	case <-injected:
	case <-time.After(60 * time.Second):
		t.Fatal("injecting clients still running 60s after the daemon exited")
	}
	if code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
	steps := map[string]int{}
	for _, ce := range in.errs {
		steps[ce.step]++
		// A session may be refused or ended between transactions; one whose
		// MAIL was accepted must run to its 250.
		if ce.step != "dial" && ce.step != "ehlo" && ce.step != "mail" {
			t.Errorf("a transaction under way was cut by SIGTERM at %s: %v", ce.step, ce.err)
		}
	}
	t.Logf("SIGTERM after 300 acks: %d of %d acked, clients ended at %v", in.ackedCount(), n, steps)

	d = start(t, e)
	want := wantKeys(msgs, in)
	ty.wait(t, 60*time.Second, fmt.Sprintf("all %d acked messages delivered", len(want)), func() bool { return ty.missing(want) == 0 })
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after the second SIGTERM = %d, want 0; output: %s", code, d.output())
	}
}

// TestCLI covers the commands that do not start the daemon.
func TestCLI(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
		t.Helper()
		cmd := exec.Command(mtadBin, args...)
		cmd.Dir = moduleRoot
		cmd.Stdin = strings.NewReader(stdin)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
			t.Fatalf("run mtad %v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), o.String(), e.String()
	}

	t.Run("check-config shipped", func(t *testing.T) {
		t.Parallel()
		code, out, errOut := run(t, "", "--check-config", "--config", "configs/mtad.yaml")
		if code != 0 {
			t.Fatalf("exit %d; stdout %q stderr %q", code, out, errOut)
		}
	})
	t.Run("check-config unknown key", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(path, []byte("hostname: mtad.e2e\ndelivery:\n  max_conections: 5\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := run(t, "", "--check-config", "--config", path)
		if code != 1 || !strings.Contains(errOut, "delivery.max_conections") {
			t.Fatalf("exit %d, stderr %q; want 1 naming delivery.max_conections", code, errOut)
		}
	})
	t.Run("version", func(t *testing.T) {
		t.Parallel()
		code, out, errOut := run(t, "", "--version")
		f := strings.Fields(out)
		if code != 0 || len(f) != 2 || f[0] != "mtad" || f[1] == "" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and \"mtad <version>\"", code, out, errOut)
		}
	})
	t.Run("hash-password", func(t *testing.T) {
		t.Parallel()
		const pw = "correct horse battery"
		code, out, errOut := run(t, pw+"\n", "hash-password")
		h := strings.TrimSpace(out)
		if code != 0 || !(strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$")) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and a bcrypt hash", code, out, errOut)
		}
		if err := bcrypt.CompareHashAndPassword([]byte(h), []byte(pw)); err != nil {
			t.Fatalf("hash %q does not match the password: %v", h, err)
		}
	})
}

// TestSIGHUPBrokenConfigKeepsRunning: a reload of a bad file is refused and
// logged, and the daemon goes on accepting and delivering mail.
func TestSIGHUPBrokenConfigKeepsRunning(t *testing.T) {
	t.Parallel()
	ty := newTally()
	z, _, port := remote(t, []string{"127.0.6.1"}, func(int) loopbacktest.Config { return loopbacktest.Config{Data: ty.add} })
	addMX(t, z, "hup.e2e", "127.0.6.1")
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	good, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, e)

	for i, bad := range []struct{ name, text, mention string }{
		{"unknown key", string(good) + "bogus_key: 1\n", "bogus_key"},
		{"not YAML", string(good) + "spool: [unclosed\n", ""},
	} {
		if err := os.WriteFile(e.cfgPath, []byte(bad.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var r record
		d.waitRecords(fmt.Sprintf("refusing reload #%d (%s)", i+1, bad.name), 10*time.Second, func(recs []record) bool {
			refusals := 0
			for _, rec := range recs {
				if strings.HasPrefix(rec.str("msg"), "reload refused") {
					if refusals++; refusals == i+1 {
						r = rec
						return true
					}
				}
			}
			return false
		})
		t.Logf("reload of a config with %s refused: %s", bad.name, r.str("error"))
		if bad.mention != "" && !strings.Contains(r.str("error"), bad.mention) {
			t.Errorf("reload refusal %v does not name %q", r, bad.mention)
		}
		select {
		case <-d.done:
			t.Fatalf("mtad exited after SIGHUP with a broken config (%s): %s", bad.name, d.output())
		default:
		}
	}

	msgs := []testMsg{{id: "hup-1@e2e", from: "app@snd6.e2e", to: []string{"user@hup.e2e"}}}
	in := inject(d.smtpAddr, 1, msgs, nil)
	if len(in.errs) > 0 || in.ackedCount() != 1 {
		t.Fatalf("injection after the refused reloads: %v", in.errs)
	}
	want := wantKeys(msgs, in)
	ty.wait(t, 30*time.Second, "the message sent after the refused reloads", func() bool { return ty.missing(want) == 0 })
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
}

// TestBounceDSN: a recipient refused with 550 is bounced, and a DSN with
// the null sender, multipart/report, reaches the sender's domain.
func TestBounceDSN(t *testing.T) {
	t.Parallel()
	z, sinks, port := remote(t, []string{"127.0.7.1", "127.0.7.2"}, func(i int) loopbacktest.Config {
		if i == 1 {
			return loopbacktest.Config{Rcpt: func(string) error {
				return loopbacktest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
			}}
		}
		return loopbacktest.Config{}
	})
	addMX(t, z, "snd7.e2e", "127.0.7.1")
	addMX(t, z, "bad.e2e", "127.0.7.2")
	e := newEnv(t, cfgOpts{dns: z.Addr, port: port})
	d := start(t, e)
	msgs := []testMsg{{id: "bounce-1@e2e", from: "app@snd7.e2e", to: []string{"nobody@bad.e2e"}}}
	in := inject(d.smtpAddr, 1, msgs, nil)
	if len(in.errs) > 0 || in.ackedCount() != 1 {
		t.Fatalf("injection: %v", in.errs)
	}
	sinks[0].Wait(t, 30*time.Second, "a DSN", func(msgs []loopbacktest.Message, _ int) bool { return len(msgs) > 0 })
	dsn := sinks[0].Messages()[0]
	if dsn.From != "" {
		t.Errorf("DSN envelope sender %q, want the null sender", dsn.From)
	}
	if len(dsn.To) != 1 || dsn.To[0] != "app@snd7.e2e" {
		t.Errorf("DSN sent to %v, want [app@snd7.e2e]", dsn.To)
	}
	body := string(dsn.Data)
	for _, s := range []string{"multipart/report", "report-type=delivery-status", "message/delivery-status", "nobody@bad.e2e", "5.1.1", "bounce-1@e2e"} {
		if !strings.Contains(body, s) {
			t.Errorf("DSN does not contain %q:\n%s", s, body)
		}
	}
	r := d.waitLog("bounced nobody@bad.e2e", 10*time.Second, func(r record) bool {
		return r.str("event") == "bounced" && r.str("recipient") == "nobody@bad.e2e"
	})
	if r.num("code") != 550 || r.str("queue_id") != in.acked[0] || r.str("phase") != "rcpt" {
		t.Errorf("bounced record %v: want code 550, phase rcpt, queue_id %s", r, in.acked[0])
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; output: %s", code, d.output())
	}
	if n := len(sinks[0].Messages()); n != 1 {
		t.Errorf("the sender's sink got %d messages, want exactly one DSN", n)
	}
}
