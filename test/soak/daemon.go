package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is mtad's config for the soak: everything on loopback, the DNS
// server and sinks above, retries short so deferred mail comes back
// within the soak, phase timeouts short so a silent sink costs seconds.
func config(spool, logPath, dnsAddr string, port int) string {
	return fmt.Sprintf(`hostname: mtad.soak
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
    max_sessions: 100
    shutdown_grace: 10s
  http:
    listen: ["127.0.0.1:0"]
admin:
  listen: 127.0.0.1:0
  pprof: true
dns:
  servers: ["%s"]
  timeout: 2s
delivery:
  port: %d
  allow_loopback_mx: true
  max_connections: 100
  reserve: 5
  maintain_interval: 200ms
  retry_interval: 5s
  max_retry_interval: 30s
  idle_timeout: 2s
  tls: disabled
  timeouts:
    connect: 5s
    greeting: 5s
    ehlo: 5s
    mail: 5s
    rcpt: 5s
    data_init: 5s
    data_block: 10s
    data_term: 10s
    quit: 5s
shaping:
  domains:
    - match: "*"
      max_connections: 4
hooks:
  plugins: [accounting]
`, spool, logPath, dnsAddr, port)
}

// daemon is the running mtad.
type daemon struct {
	cmd               *exec.Cmd
	out               bytes.Buffer // stdout and stderr; read only after done
	done              chan struct{}
	smtp, http, admin string
	logPath           string
	hc                *http.Client
}

// startMtad runs mtad and waits (at most 30 s) for its "ready" record,
// reading the addresses it listens on from its log.
func startMtad(bin, cfg, logPath, dir string) (*daemon, error) {
	args := []string{"--config", cfg}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-root") // mtad refuses root without it
	}
	d := &daemon{cmd: exec.Command(bin, args...), done: make(chan struct{}), logPath: logPath,
		hc: &http.Client{Timeout: 10 * time.Second}}
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start mtad: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if d.readAddrs() {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("mtad exited before ready (%v): %s\n%s", d.cmd.ProcessState, d.out.String(), tail(logPath, 20))
		case <-time.After(50 * time.Millisecond): // polling a file: no event to wait on
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("mtad not ready after 30s:\n%s", tail(logPath, 20))
		}
	}
}

func (d *daemon) readAddrs() bool {
	f, err := os.Open(d.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	ready := false
	for sc.Scan() {
		var r struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue
		}
		switch r.Msg {
		case "listening for SMTP injection":
			d.smtp = r.Addr
		case "listening for HTTP injection":
			d.http = r.Addr
		case "admin API listening":
			d.admin = r.Addr
		case "ready":
			ready = true
		}
	}
	return ready && d.smtp != "" && d.http != "" && d.admin != ""
}

func (d *daemon) kill() {
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// stop sends SIGTERM and waits up to grace for the exit.
func (d *daemon) stop(grace time.Duration) (int, error) {
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("SIGTERM mtad: %w", err)
	}
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode(), nil
	case <-time.After(grace):
		d.kill()
		return -1, fmt.Errorf("mtad still running %s after SIGTERM (killed):\n%s", grace, tail(d.logPath, 20))
	}
}

// sample is one reading of the daemon's resources.
type sample struct {
	at                      time.Duration
	rssKB, goroutines, fds  int64
	queuedMsgs, queuedRcpts int64
}

func (s sample) String() string {
	return fmt.Sprintf("  t=%-6s rss=%6.1f MiB goroutines=%5d fds=%4d queued=%d msgs / %d rcpts",
		s.at.Truncate(time.Second), float64(s.rssKB)/1024, s.goroutines, s.fds, s.queuedMsgs, s.queuedRcpts)
}

func (d *daemon) sample(at time.Duration) (sample, error) {
	s := sample{at: at}
	pid := d.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			s.rssKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = int64(len(ents))
	if s.goroutines, err = d.goroutines(); err != nil {
		return s, err
	}
	sum, err := d.summary()
	if err != nil {
		return s, err
	}
	s.queuedMsgs, s.queuedRcpts = int64(sum.QueuedMessages), sum.QueuedRecipients
	return s, nil
}

// goroutines reads "goroutine profile: total N", the first line of the
// debug=1 goroutine profile.
func (d *daemon) goroutines() (int64, error) {
	resp, err := d.hc.Get("http://" + d.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	defer io.Copy(io.Discard, io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("pprof goroutine: %s", resp.Status)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("pprof goroutine: %w", err)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("pprof goroutine: first line %q", line)
	}
	return strconv.ParseInt(v, 10, 64)
}

// summary is the part of GET /api/v1/summary the soak reports.
type summary struct {
	Totals struct {
		Received           int64 `json:"received"`
		ReceivedRecipients int64 `json:"received_recipients"`
		Delivered          int64 `json:"delivered"`
		Deferred           int64 `json:"deferred"`
		Bounced            int64 `json:"bounced"`
		Expired            int64 `json:"expired"`
	} `json:"totals"`
	QueuedMessages   int   `json:"queued_messages"`
	QueuedRecipients int64 `json:"queued_recipients"`
}

func (d *daemon) summary() (summary, error) {
	var s summary
	resp, err := d.hc.Get("http://" + d.admin + "/api/v1/summary")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("summary: %s", resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&s); err != nil {
		return s, errors.Join(errors.New("summary: decode"), err)
	}
	return s, nil
}
