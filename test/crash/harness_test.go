package crash

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

// mtadBin is the daemon built once by TestMain.
var mtadBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mtad-crash-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash: temp dir:", err)
		os.Exit(1)
	}
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "crash:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }))
}

// build compiles ./cmd/mtad of the module this package is in, so the
// harness always crashes the code under test, not an installed binary.
func build(dir string) error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return errors.New("go env GOMOD: not inside a module")
	}
	mtadBin = filepath.Join(dir, "mtad")
	cmd := exec.Command("go", "build", "-o", mtadBin, "./cmd/mtad")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/mtad: %w\n%s", err, out)
	}
	return nil
}

// ---------------------------------------------------------------- daemon

// env is the run's files: the spool survives every kill; each start gets
// a config and a log file of its own, so that a line cut short by a
// SIGKILL never sits in front of the next run's records.
type env struct {
	dir      string
	sinkAddr string
	conns    int // shaping max_connections for the sinks' site
	runs     int
}

func (e *env) config(logPath string) string {
	return fmt.Sprintf(`hostname: mtad.crash
spool:
  dir: %s
log:
  level: info
  format: json
  file: %s
inject:
  smtp:
    listen: ["127.0.0.1:0"]
    relay_networks: ["127.0.0.0/8"]
    max_sessions: 200
    max_sessions_per_ip: 200
    shutdown_grace: 5s
admin:
  listen: 127.0.0.1:0
dns:
  # Never asked: both test domains have static routes. A dead loopback
  # port keeps a mistake from reaching a real resolver.
  servers: ["127.0.0.1:9"]
  timeout: 1s
routes:
  - domain: ok.test
    host: %s
  - domain: sender.test
    host: %s
delivery:
  max_connections: 40
  reserve: 2
  maintain_interval: 100ms
  retry_interval: 1s
  max_retry_interval: 2s
  idle_timeout: 1s
  tls: disabled
shaping:
  domains:
    - match: "*"
      max_connections: %d
`, filepath.Join(e.dir, "spool"), logPath, e.sinkAddr, e.sinkAddr, e.conns)
}

// daemon is one run of the binary.
type daemon struct {
	t        *testing.T
	cmd      *exec.Cmd
	out      bytes.Buffer // stdout and stderr; read only after done
	done     chan struct{}
	logPath  string
	started  time.Time
	smtpAddr string
	admin    string
	// quarantined is the spool_recovered record's count (-1 until seen):
	// a SIGKILL must never leave a message the recovery cannot read.
	quarantined int
}

// launch starts the daemon on the spool without waiting for it; the
// process is SIGKILLed in t.Cleanup if still running.
func launch(t *testing.T, e *env) *daemon {
	t.Helper()
	e.runs++
	d := &daemon{t: t, done: make(chan struct{}), quarantined: -1, logPath: filepath.Join(e.dir, fmt.Sprintf("mtad-%02d.log", e.runs))}
	cfg := filepath.Join(e.dir, fmt.Sprintf("mtad-%02d.yaml", e.runs))
	if err := os.WriteFile(cfg, []byte(e.config(d.logPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", cfg}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-root") // the daemon refuses root otherwise
	}
	d.cmd = exec.Command(mtadBin, args...)
	d.cmd.Dir = e.dir
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start mtad: %v", err)
	}
	d.started = time.Now()
	go func() { // owned by d: ends when the process does, which kill forces
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.kill)
	return d
}

// waitReady waits (bounded) for the "ready" record and reads the
// injection and admin addresses from the log.
func (d *daemon) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d.scanReady() {
			if d.smtpAddr == "" || d.admin == "" {
				d.t.Fatalf("mtad ready without the injection (%q) or admin (%q) address", d.smtpAddr, d.admin)
			}
			if d.quarantined != 0 {
				d.t.Errorf("start-up after a SIGKILL: spool_recovered quarantined = %d, want 0 (no record seen: -1)", d.quarantined)
			}
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("mtad not ready after %s; log:\n%s", timeout, tail(d.logPath, 20))
		}
		select {
		case <-d.done:
			d.t.Fatalf("mtad exited before ready (%v): %s\nlog:\n%s", d.cmd.ProcessState, d.out.String(), tail(d.logPath, 20))
		case <-time.After(20 * time.Millisecond): // polling a file: no event to wait on
		}
	}
}

// scanReady reads this run's log and reports whether it says "ready".
// A last line cut short by a SIGKILL is skipped, not an error.
func (d *daemon) scanReady() bool {
	f, err := os.Open(d.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	ready := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r map[string]any
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue
		}
		addr, _ := r["addr"].(string)
		if q, ok := r["quarantined"].(float64); ok && r["event"] == "spool_recovered" {
			d.quarantined = int(q)
		}
		switch r["msg"] {
		case "listening for SMTP injection":
			d.smtpAddr = addr
		case "admin API listening":
			d.admin = addr
		case "ready":
			ready = true
		}
	}
	return ready
}

// kill SIGKILLs the daemon (if it still runs) and waits for it.
func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (d *daemon) stop(timeout time.Duration) {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.kill()
		d.t.Errorf("mtad did not exit within %s of SIGTERM; log:\n%s", timeout, tail(d.logPath, 20))
	}
}

// queued reads queued_messages from GET /api/v1/summary.
func (d *daemon) queued(c *http.Client) (int, error) {
	resp, err := c.Get("http://" + d.admin + "/api/v1/summary")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET /api/v1/summary: %s: %s", resp.Status, b)
	}
	var s struct {
		QueuedMessages *int `json:"queued_messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return 0, fmt.Errorf("GET /api/v1/summary: %w", err)
	}
	if s.QueuedMessages == nil {
		return 0, errors.New("GET /api/v1/summary: no queued_messages")
	}
	return *s.QueuedMessages, nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------- sinks

// Counted events; a round arms a trip wire on one of them.
const (
	evAck    = iota // a 250 to an injected message's dot
	evAccept        // a sink took a message (non-DSN)
	evRefuse        // a sink refused a RCPT with 550 (a DSN is now owed)
	evCount
)

// arrival is what the sinks saw of one Message-ID.
type arrival struct {
	n     int       // times taken
	first time.Time // when its dot was first read
}

// tally is the sinks' record, kept in the test process so it outlives
// every kill of the daemon.
type tally struct {
	mu        sync.Mutex
	delivered map[string]*arrival // Message-ID → deliveries of the message
	dsn       map[string]*arrival // original Message-ID → DSNs naming it
	damaged   map[int]*arrival    // message number → 5.3.0 DSNs of a salvage naming its recipient
	// A salvage's damage notices (no recipient to name: see
	// scheduler.BounceDamaged), by the Message-ID they quote and by the
	// queue id they name.
	notified    map[string]*arrival
	notifiedQID map[string]*arrival
	noticeNoID  int      // notices naming no queue id
	strangers   []string // Message-IDs the harness never sent
	dsnNoID     int      // DSNs naming none of our Message-IDs
	events      [evCount]int
	wire        struct {
		ev, at int
		ch     chan struct{}
	}
}

func newTally() *tally {
	return &tally{delivered: map[string]*arrival{}, dsn: map[string]*arrival{}, damaged: map[int]*arrival{},
		notified: map[string]*arrival{}, notifiedQID: map[string]*arrival{}}
}

// arm returns a channel closed once n more events of kind ev happened.
func (ty *tally) arm(ev, n int) <-chan struct{} {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	ch := make(chan struct{})
	ty.wire.ev, ty.wire.at, ty.wire.ch = ev, ty.events[ev]+n, ch
	return ch
}

func (ty *tally) disarm() {
	ty.mu.Lock()
	ty.wire.ch = nil
	ty.mu.Unlock()
}

// count records one event; call with ty.mu held.
func (ty *tally) count(ev int) {
	ty.events[ev]++
	if ty.wire.ch != nil && ty.wire.ev == ev && ty.events[ev] >= ty.wire.at {
		close(ty.wire.ch)
		ty.wire.ch = nil
	}
}

func (ty *tally) event(ev int) {
	ty.mu.Lock()
	ty.count(ev)
	ty.mu.Unlock()
}

// ourID matches the Message-IDs the harness sends; in a DSN it finds the
// original's among the returned headers.
var ourID = regexp.MustCompile(`<(crash\.\d+\.\d+@inject\.test)>`)

// take records a message a sink accepted; dot is when its body ended.
func (ty *tally) take(from string, data []byte, dot time.Time) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	if from == "" && isNotice(data) {
		qid := noticeQID(data)
		if qid == "" {
			ty.noticeNoID++
			return
		}
		add(ty.notifiedQID, qid, dot)
		seen := map[string]bool{}
		for _, m := range ourID.FindAllSubmatch(data, -1) {
			seen[string(m[1])] = true
		}
		for id := range seen {
			add(ty.notified, id, dot)
		}
		return
	}
	if from == "" { // a DSN: count every original it names
		seen := map[string]bool{}
		for _, m := range ourID.FindAllSubmatch(data, -1) {
			seen[string(m[1])] = true
		}
		if len(seen) == 0 {
			// A salvage's DSN for a damaged message names no header of
			// it, only its recipients.
			if msgs := damagedMsgs(data); len(msgs) > 0 {
				for _, n := range msgs {
					a := ty.damaged[n]
					if a == nil {
						a = &arrival{first: dot}
						ty.damaged[n] = a
					}
					a.n++
				}
				return
			}
			ty.dsnNoID++
		}
		for id := range seen {
			add(ty.dsn, id, dot)
		}
		return
	}
	ty.count(evAccept)
	id := messageID(data)
	if !ourID.MatchString("<" + id + ">") {
		ty.strangers = append(ty.strangers, id)
		return
	}
	add(ty.delivered, id, dot)
}

func add(m map[string]*arrival, id string, at time.Time) {
	a := m[id]
	if a == nil {
		a = &arrival{first: at}
		m[id] = a
	}
	a.n++
}

func messageID(data []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return ""
	}
	return strings.Trim(m.Header.Get("Message-ID"), "<> ")
}

// ---------------------------------------------------------------- injection

// Attempt states: what the injecting client knows of one transaction.
const (
	stNotSent   = iota // failed before the final dot: mtad cannot have it
	stRefused          // an SMTP error reply to the dot: mtad must not keep it
	stUncertain        // the connection broke after the dot: the 250 may have been lost
	stAcked            // 250: mtad must deliver or bounce it
)

// attempt is one transaction: message msg's try number try, under a
// Message-ID of its own, so that a lost answer followed by a resend can
// never pass for a duplicate delivery.
type attempt struct {
	msg, try int
	id       string
	bad      bool // its recipient is refused with 550 at the sink
	state    int
}

// work hands out the messages still to be acked to the clients; a
// message whose attempt failed goes back for a new attempt.
type work struct {
	mu       sync.Mutex
	next, n  int
	again    []int
	tries    []int
	bad      []bool
	attempts []*attempt
	ty       *tally
}

// maxTries bounds the attempts of one message; a message still unacked
// after them is reported, never retried forever.
const maxTries = 10

func (w *work) take() (*attempt, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var i int
	switch {
	case len(w.again) > 0:
		i, w.again = w.again[0], w.again[1:]
	case w.next < w.n:
		i = w.next
		w.next++
	default:
		return nil, false
	}
	w.tries[i]++
	a := &attempt{msg: i, try: w.tries[i], id: fmt.Sprintf("crash.%d.%d@inject.test", i, w.tries[i]), bad: w.bad[i]}
	w.attempts = append(w.attempts, a)
	return a, true
}

func (w *work) done(a *attempt, state int) {
	w.mu.Lock()
	a.state = state
	if state != stAcked && w.tries[a.msg] < maxTries {
		w.again = append(w.again, a.msg)
	}
	w.mu.Unlock()
	if state == stAcked {
		w.ty.event(evAck)
	}
}

func (w *work) remaining() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n - w.next + len(w.again)
}

// inject runs clients concurrent sessions against addr until the work is
// done or each client's session fails (the daemon was killed); it returns
// a function that waits for them.
func inject(addr string, clients int, w *work) (wait func()) {
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client(addr, w)
		}()
	}
	return wg.Wait
}

func client(addr string, w *work) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return
	}
	defer c.Close()
	// Bounds on a daemon that stops answering; far above what a reply takes.
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if err := c.Hello("client.inject.test"); err != nil {
		return
	}
	for {
		a, ok := w.take()
		if !ok {
			_ = c.Quit()
			return
		}
		st := send(c, a)
		w.done(a, st)
		if st != stAcked {
			return // the session is broken or refused: a new one takes over
		}
	}
}

func send(c *smtp.Client, a *attempt) int {
	rcpt := fmt.Sprintf("u%d@ok.test", a.msg)
	if a.bad {
		rcpt = fmt.Sprintf("bad%d@ok.test", a.msg)
	}
	if err := c.Mail("app@sender.test", nil); err != nil {
		return stNotSent
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return stNotSent
	}
	wc, err := c.Data()
	if err != nil {
		return stNotSent
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <app@sender.test>\r\nTo: <%s>\r\nSubject: crash harness\r\nMessage-ID: <%s>\r\nDate: %s\r\n\r\n",
		rcpt, a.id, time.Now().Format(time.RFC1123Z))
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for range 14 { // ≈ 1 KB of body
		b.WriteString(line)
	}
	if _, err := wc.Write(b.Bytes()); err != nil {
		return stNotSent // the final dot is written by Close only
	}
	if err := wc.Close(); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return stRefused
		}
		return stUncertain
	}
	return stAcked
}
