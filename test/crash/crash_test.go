package crash

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
)

// Kill moments.
const (
	killInjection = "injection" // while clients inject (after k more 250s)
	killDelivery  = "delivery"  // while sinks take mail (after k more accepted)
	killDSN       = "dsn"       // right after a 550 at the sink, while the DSN is owed
	killStartup   = "startup"   // 0-100 ms after the process started: during spool recovery
	killSalvage   = "salvage"   // during a spool salvage of a damaged table (salvage_test.go)
)

// size is one run's shape.
type size struct {
	messages, clients int
	rounds            []string
	conns             int           // the sinks' site: connections per binding
	settle            time.Duration // bound on the final drain of the queue
}

// The short round runs in `make test` (≈ 1,000 messages in well under a
// minute on 2 cores); the full run is `make test-crash`.
var (
	short = size{messages: 1000, clients: 10, conns: 4, settle: 3 * time.Minute,
		rounds: []string{killInjection, killSalvage, killDSN, killDelivery, killStartup}}
	full = size{messages: 20000, clients: 50, conns: 10, settle: 10 * time.Minute,
		rounds: []string{
			killInjection, killSalvage, killStartup, killDSN, killDelivery,
			killInjection, killDelivery, killDSN, killStartup,
			killInjection, killSalvage, killStartup, killDSN, killDelivery,
		}}
)

// Duplicate window. DESIGN.md invariant 2 and README ("a message leaves the
// spool when its last recipient is final... synced with the next injected
// message, or within 20 ms") allow a re-send only for a message whose
// remote 250 came shortly before a crash: the time from the sink's 250 to
// the scheduler's spool update, plus the 20 ms FinishSyncDelay. We check
// that every duplicate's first delivery (its dot read by the sink) lies
// within dupBefore before a kill or dupAfter after it (the sink may read
// a dot the killed daemon had already written). The bound is far above
// 20 ms because on 2 shared cores a loaded daemon may take hundreds of
// milliseconds from the remote's reply to the update; it is still far
// below the run's length, so a re-send outside any kill's window fails.
const (
	dupBefore = 1500 * time.Millisecond
	dupAfter  = 500 * time.Millisecond
)

type kill struct {
	kind   string
	at     time.Time
	fired  bool   // the trip wire fired (false: the bounded wait ran out first)
	detail string // e.g. whether the daemon was ready
}

func TestCrashHarness(t *testing.T) {
	sz := short
	if os.Getenv("MTAD_CRASH") == "full" {
		sz = full
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MTAD_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MTAD_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with MTAD_CRASH_SEED=%d); %d messages, %d clients, rounds %v",
		seed, seed, sz.messages, sz.clients, sz.rounds)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	began := time.Now()

	ty := newTally()
	sinks, _ := loopbacktest.StartSinks(t, []string{"127.0.0.1"}, func(int) loopbacktest.Config {
		return loopbacktest.Config{
			Rcpt: func(to string) error {
				if strings.HasPrefix(to, "bad") {
					ty.event(evRefuse)
					return loopbacktest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
				}
				return nil
			},
			Data: func(from string, _ []string, data []byte) error {
				dot := time.Now()
				// A slow receiver: 5-20 ms a message, so mail queues up
				// and a kill finds sessions mid-transaction.
				time.Sleep(time.Duration(5+rand.IntN(16)) * time.Millisecond)
				ty.take(from, data, dot)
				return nil
			},
			ReadTimeout: 30 * time.Second,
		}
	})
	e := &env{dir: t.TempDir(), sinkAddr: sinks[0].Addr, conns: sz.conns}
	w := &work{n: sz.messages, tries: make([]int, sz.messages), bad: make([]bool, sz.messages), ty: ty}
	for i := range w.bad {
		w.bad[i] = rng.IntN(10) == 0 // one in ten hard-bounces, so DSNs are owed
	}
	hc := &http.Client{Timeout: 5 * time.Second}

	injRounds := 0
	for _, r := range sz.rounds {
		if r == killInjection {
			injRounds++
		}
	}
	var kills []kill
	var salvages []map[string]any
	for n, kind := range sz.rounds {
		if kind == killSalvage {
			// The previous round's kill left the spool stopped.
			k, rec := salvageRound(t, e)
			kills, salvages = append(kills, k), append(salvages, rec)
			t.Logf("round %d: SIGKILL during %s (%s); salvage completed: %v", n+1, kind, k.detail, salvageCounts(rec))
			continue
		}
		d := launch(t, e)
		k := kill{kind: kind}
		switch kind {
		case killStartup:
			time.Sleep(time.Duration(rng.IntN(101)) * time.Millisecond)
			k.fired = true
			d.kill()
			k.at = time.Now()
			k.detail = "after ready"
			if !d.scanReady() {
				k.detail = "before ready"
			}
		case killInjection:
			d.waitReady(2 * time.Minute)
			left := w.remaining()
			share := max(1, left/injRounds)
			injRounds--
			want := max(1, share/2+rng.IntN(share/2+1))
			trip := ty.arm(evAck, want)
			wait := inject(d.smtpAddr, sz.clients, w)
			k.fired = waitTrip(trip, 2*time.Minute)
			time.Sleep(time.Duration(rng.IntN(6)) * time.Millisecond)
			d.kill()
			k.at = time.Now()
			ty.disarm()
			wait() // every client's session breaks with the daemon
			k.detail = fmt.Sprintf("after %d more acks", want)
		case killDelivery, killDSN:
			d.waitReady(2 * time.Minute)
			q, err := d.queued(hc)
			if err != nil {
				t.Fatal(err)
			}
			ev, spread, jitter := evAccept, max(1, q/2), 16
			if kind == killDSN {
				ev, spread, jitter = evRefuse, max(1, q/20), 21
			}
			want := 1 + rng.IntN(spread)
			trip := ty.arm(ev, want)
			k.fired = waitTrip(trip, time.Minute)
			time.Sleep(time.Duration(rng.IntN(jitter)) * time.Millisecond)
			d.kill()
			k.at = time.Now()
			ty.disarm()
			k.detail = fmt.Sprintf("queue %d, after %d more", q, want)
		}
		kills = append(kills, k)
		t.Logf("round %d: SIGKILL during %s (%s, trip wire fired: %v)", n+1, kind, k.detail, k.fired)
	}

	// The last run: inject what is left, then let the queue drain.
	d := launch(t, e)
	d.waitReady(2 * time.Minute)
	for range 5 {
		if w.remaining() == 0 {
			break
		}
		inject(d.smtpAddr, sz.clients, w)()
	}
	if left := w.remaining(); left > 0 {
		t.Errorf("%d messages still unacked after the last run's injection", left)
	}
	deadline := time.Now().Add(sz.settle)
	for {
		q, err := d.queued(hc)
		if err == nil && q == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue not empty after %s (queued %d, err %v); log:\n%s", sz.settle, q, err, tail(d.logPath, 20))
		}
		time.Sleep(100 * time.Millisecond) // polling the admin API: no event to wait on
	}
	d.stop(time.Minute)

	check(t, w, ty, kills, e, len(salvages) > 0)
	t.Logf("run time %s on %d CPUs", time.Since(began).Round(time.Second), runtime.NumCPU())
}

func waitTrip(trip <-chan struct{}, timeout time.Duration) bool {
	select {
	case <-trip:
		return true
	case <-time.After(timeout):
		return false
	}
}

// salvageCounts is a spool_salvaged record's counts, for the test log.
func salvageCounts(rec map[string]any) string {
	if rec == nil {
		return "no spool_salvaged record"
	}
	var b strings.Builder
	for _, k := range []string{"copied", "quarantined", "dsn_owed", "notice_owed", "unreadable_envelopes", "kept_quarantined", "kept_dsn_owed", "damaged_ranges"} {
		fmt.Fprintf(&b, "%s %v ", k, rec[k])
	}
	return strings.TrimSpace(b.String())
}

// check compares what the clients were told with what the sinks saw.
// Every acked message must be delivered, bounced with a DSN, or (after a
// salvage) bounced with the salvage's 5.3.0 DSN or its damage notice. The
// one loss allowed is a message whose envelope (meta record) the damaged
// store cannot read: no sender to tell, counted as "envelope lost".
func check(t *testing.T, w *work, ty *tally, kills []kill, e *env, salvaged bool) {
	t.Helper()
	ty.mu.Lock()
	defer ty.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()

	acked := make([]bool, w.n)
	for _, a := range w.attempts {
		if a.state == stAcked {
			acked[a.msg] = true
		}
	}
	var never []string
	for i, ok := range acked {
		if !ok {
			never = append(never, strconv.Itoa(i))
		}
	}
	var qids map[string]string // Message-ID → queue id, read when needed
	qidOf := func(id string) string {
		if qids == nil {
			qids = queueIDs(t, e.dir)
		}
		return qids[id]
	}
	notified := func(id string) bool {
		if ty.notified[id] != nil {
			return true
		}
		if len(ty.notifiedQID) == 0 {
			return false
		}
		q := qidOf(id)
		return q != "" && ty.notifiedQID[q] != nil
	}
	var states [4]int
	var unexplained []*attempt
	bouncedDamaged, notifiedDamaged := 0, 0
	var lostAcked, badDelivered, goodDSN, unackedSeen, uncertainSeen []string
	sent := map[string]bool{}
	for _, a := range w.attempts {
		states[a.state]++
		sent[a.id] = true
		del, dsn := ty.delivered[a.id], ty.dsn[a.id]
		switch a.state {
		case stAcked:
			switch {
			case (a.bad && dsn != nil) || (!a.bad && del != nil):
			case ty.damaged[a.msg] != nil:
				bouncedDamaged++
			case notified(a.id):
				notifiedDamaged++
			default:
				unexplained = append(unexplained, a)
			}
		case stUncertain:
			if del != nil || dsn != nil || ty.notified[a.id] != nil {
				uncertainSeen = append(uncertainSeen, a.id)
			}
		default:
			if del != nil || dsn != nil || ty.notified[a.id] != nil {
				unackedSeen = append(unackedSeen, a.id)
			}
		}
		if a.bad && del != nil {
			badDelivered = append(badDelivered, a.id)
		}
		if !a.bad && dsn != nil {
			goodDSN = append(goodDSN, a.id)
		}
	}
	// An acked message neither delivered nor bounced nor notified is
	// lost, and an error, unless a salvage met its envelope unreadable
	// in the damaged store (by its queue id, from the daemon's
	// "received" record). One whose envelope read but whose recipients
	// did not was owed a notice: lost in silence, also an error.
	envelopeLost, silent := 0, 0
	if len(unexplained) > 0 && salvaged {
		var ask []string
		for _, a := range unexplained {
			if q := qidOf(a.id); q != "" {
				ask = append(ask, q)
			}
		}
		envelope, rcpts := inDamage(t, filepath.Join(e.dir, "spool"), ask)
		for _, a := range unexplained {
			q := qidOf(a.id)
			switch {
			case q != "" && envelope[q]:
				envelopeLost++
				continue
			case q != "" && rcpts[q]:
				silent++
			}
			lostAcked = append(lostAcked, a.id)
		}
	} else {
		for _, a := range unexplained {
			lostAcked = append(lostAcked, a.id)
		}
	}
	for id := range ty.dsn {
		if !sent[id] {
			unackedSeen = append(unackedSeen, id+" (DSN)")
		}
	}
	for id := range ty.notified {
		if !sent[id] {
			unackedSeen = append(unackedSeen, id+" (notice)")
		}
	}

	// lead is the largest time from a duplicate's first arrival to the
	// kill after it (within the window): how wide the window was in fact.
	dups, dupDSN, outside, lead := 0, 0, []string{}, time.Duration(0)
	inWindow := func(at time.Time) bool {
		for _, k := range kills {
			if !at.Before(k.at.Add(-dupBefore)) && !at.After(k.at.Add(dupAfter)) {
				lead = max(lead, k.at.Sub(at))
				return true
			}
		}
		return false
	}
	for id, a := range ty.delivered {
		if a.n > 1 {
			dups += a.n - 1
			if !inWindow(a.first) {
				outside = append(outside, id)
			}
		}
	}
	for id, a := range ty.dsn {
		if a.n > 1 {
			dupDSN += a.n - 1
			if !inWindow(a.first) {
				outside = append(outside, id+" (DSN)")
			}
		}
	}
	// A notice is sent again when a kill lands between its spooling and
	// the record that it was sent: the same window.
	dupNotice := 0
	for q, a := range ty.notifiedQID {
		if a.n > 1 {
			dupNotice += a.n - 1
			if !inWindow(a.first) {
				outside = append(outside, q+" (notice)")
			}
		}
	}

	byKind := map[string]int{}
	for _, k := range kills {
		byKind[k.kind]++
	}
	t.Logf("messages %d: attempts %d (acked %d, lost answer %d, refused %d, not sent %d)",
		w.n, len(w.attempts), states[stAcked], states[stUncertain], states[stRefused], states[stNotSent])
	t.Logf("kills %d %v; sinks: %d delivered, %d DSNs, %d refusals", len(kills), byKind,
		len(ty.delivered), len(ty.dsn), ty.events[evRefuse])
	t.Logf("salvage: %d acked messages bounced with a 5.3.0 DSN (damaged in the spool), %d notified (envelope readable, recipients not: damage notice), "+
		"%d envelope lost (meta record unreadable in the damaged store: no sender to tell), %d lost in silence (envelope readable, no notice)",
		bouncedDamaged, notifiedDamaged, envelopeLost, silent)
	t.Logf("duplicates: %d deliveries, %d DSNs, %d notices (allowed: first arrival %s before to %s after a kill; largest seen %s before); answers lost to a kill yet delivered: %d",
		dups, dupDSN, dupNotice, dupBefore, dupAfter, lead.Round(time.Millisecond), len(uncertainSeen))

	report := func(what string, ids []string) {
		if len(ids) > 0 {
			sort.Strings(ids)
			t.Errorf("%s: %d, e.g. %v", what, len(ids), ids[:min(10, len(ids))])
		}
	}
	report("messages never acked after their attempts", never)
	report("acked but neither delivered, bounced with a DSN, nor notified", lostAcked)
	report("refused or never sent, yet at a sink", unackedSeen)
	report("duplicates outside the unsynced window of every kill", outside)
	report("refused recipients delivered", badDelivered)
	report("delivered recipients bounced", goodDSN)
	report("Message-IDs the harness never sent", ty.strangers)
	if ty.dsnNoID > 0 {
		t.Errorf("%d DSNs name no Message-ID of ours", ty.dsnNoID)
	}
	if ty.noticeNoID > 0 {
		t.Errorf("%d damage notices name no queue id", ty.noticeNoID)
	}
}
