package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestInteropPostfix: a private Postfix instance relays into mtad. Messages
// enter Postfix by its sendmail command (maildrop → pickup → cleanup →
// qmgr: the instance has no smtpd and listens on no port at all), Postfix's
// smtp client relays them to relayhost = mtad, and each must reach the sink
// intact with exactly two Received fields prepended, Postfix's and mtad's.
//
// Pipelining is observed on the wire: relayhost is a transparent TCP relay
// in this test, in front of mtad's listener, that watches what Postfix
// sends. A single read from Postfix holding both MAIL FROM and RCPT TO
// proves Postfix sent RCPT before mtad could have answered MAIL (mtad has
// not seen MAIL until the relay has read it), i.e. RFC 2920 pipelining.
// The relay also sees mtad offer PIPELINING in its EHLO reply.
//
// Postfix's master must run as root: not root, the test skips and says so.
// Postfix missing (as root) fails it: `make deps` installs Postfix.
func TestInteropPostfix(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("Postfix's master runs as root: run this test as root (CI does); 'make deps' installs Postfix")
	}
	pf := findPostfix(t)
	in := startInterop(t)
	relay := startWireRelay(t, in.d.smtpAddr)
	inst := pf.start(t, relay.port)
	t.Cleanup(func() { // runs before the instance's own cleanup removes its log
		if t.Failed() {
			t.Log(inst.logTail())
		}
	})

	const n = 50
	msgs := make([]sentMsg, n)
	for i := range msgs {
		to := []string{fmt.Sprintf("pf%d@a.interop", i)}
		if i%5 == 0 {
			to = append(to, fmt.Sprintf("pf%d@b.interop", i))
		}
		body := fmt.Sprintf("Message %d through Postfix into mtad.\r\n", i)
		if i%10 == 3 {
			body = trickyBody()
		}
		msgs[i] = newMsg(fmt.Sprintf("postfix-%d@interop", i), "app@snd.interop", to, "", body)
	}
	inst.sendmail(t, msgs)

	in.verify(t, msgs, 2)
	inst.stop(t)
	in.stop(t)

	txns, piped, offered := relay.stats()
	t.Logf("Postfix → mtad: %d transactions, %d sent with RCPT in the same read as MAIL (pipelined)", txns, piped)
	if !offered {
		t.Errorf("mtad's EHLO reply to Postfix did not offer PIPELINING")
	}
	if txns == 0 || piped != txns {
		t.Errorf("%d of %d transactions from Postfix were pipelined, want all (Postfix pipelines whenever PIPELINING is offered)", piped, txns)
	}
}

// ---------------------------------------------------------------- the relay

// wireRelay is a TCP relay on 127.0.0.1:0 in front of mtad's listener that
// passes bytes both ways unchanged and watches them. It owns its goroutines:
// the accept loop and two copiers per connection, stopped and waited for at
// the test's end.
type wireRelay struct {
	port   int
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]bool
	txns    int  // client reads holding MAIL FROM
	piped   int  // ... that also hold RCPT TO
	offered bool // a server reply offered PIPELINING
}

func startWireRelay(t *testing.T, target string) *wireRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay listen: %v", err)
	}
	r := &wireRelay{port: ln.Addr().(*net.TCPAddr).Port, target: target, ln: ln, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		r.closed = true
		for c := range r.conns {
			_ = c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *wireRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed at cleanup
		}
		s, err := net.DialTimeout("tcp", r.target, 10*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !r.track(c, s) {
			return
		}
		r.wg.Add(2)
		go r.pipe(s, c, r.watchClient)
		go r.pipe(c, s, r.watchServer)
	}
}

// track registers both ends, or closes them when the relay is closing.
func (r *wireRelay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		if r.closed {
			_ = c.Close()
		} else {
			r.conns[c] = true
		}
	}
	return !r.closed
}

// pipe copies from src to dst, showing each read to watch, until either
// side ends; then it closes both, so that the other direction ends too.
func (r *wireRelay) pipe(dst, src net.Conn, watch func([]byte)) {
	defer r.wg.Done()
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		r.mu.Lock()
		delete(r.conns, src)
		delete(r.conns, dst)
		r.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			watch(buf[:n])
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *wireRelay) watchClient(b []byte) {
	up := bytes.ToUpper(b)
	if !bytes.Contains(up, []byte("MAIL FROM:")) {
		return
	}
	r.mu.Lock()
	r.txns++
	if bytes.Contains(up, []byte("RCPT TO:")) {
		r.piped++
	}
	r.mu.Unlock()
}

func (r *wireRelay) watchServer(b []byte) {
	up := bytes.ToUpper(b)
	if bytes.Contains(up, []byte("250-PIPELINING\r\n")) || bytes.Contains(up, []byte("250 PIPELINING\r\n")) {
		r.mu.Lock()
		r.offered = true
		r.mu.Unlock()
	}
}

func (r *wireRelay) stats() (txns, piped int, offered bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.txns, r.piped, r.offered
}

// ---------------------------------------------------------------- Postfix

// postfixCmds are the paths of Postfix's commands.
type postfixCmds struct {
	postfix, postconf, sendmail string
}

func findPostfix(t *testing.T) postfixCmds {
	t.Helper()
	find := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		p := filepath.Join("/usr/sbin", name) // root's PATH has it; others' may not
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("Postfix's %s not found: run 'make deps' (as root it installs Postfix with apt)", name)
		}
		return p
	}
	return postfixCmds{postfix: find("postfix"), postconf: find("postconf"), sendmail: find("sendmail")}
}

// postfixInstance is a private Postfix: its config, queue, data and log
// under one temporary directory, never /etc/postfix.
type postfixInstance struct {
	cmds postfixCmds
	dir  string // the instance's root
	etc  string // config_directory
	mu   sync.Mutex
	once bool // stopped
}

// run runs one Postfix command, bounded in time.
func (p *postfixInstance) run(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// postconfDefault reads a parameter's compiled-in default (the Debian
// package's paths), so the instance works wherever the package put them.
func (c postfixCmds) postconfDefault(t *testing.T, param string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.postconf, "-d", "-h", param).Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("postconf -d -h %s: %v %s", param, err, out)
	}
	return string(bytes.TrimSpace(out))
}

// start configures and starts the instance with relayhost =
// [127.0.0.1]:relayPort. Its stop is registered as a cleanup, so the
// instance is stopped however the test ends.
func (c postfixCmds) start(t *testing.T, relayPort int) *postfixInstance {
	t.Helper()
	// Not t.TempDir(): Postfix's daemons run as user postfix and must be
	// able to reach the instance's directories, and the test's temporary
	// directories are 0700 root.
	dir, err := os.MkdirTemp("", "mtad-interop-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	p := &postfixInstance{cmds: c, dir: dir, etc: filepath.Join(dir, "etc")}
	t.Cleanup(func() {
		p.stop(t)
		_ = os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"etc", "queue", "data", "log"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pu, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("user postfix: %v (is Postfix installed? 'make deps')", err)
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}

	mainCf := fmt.Sprintf(`# Private instance of mtad's interop test (test/e2e/interop_postfix_test.go).
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
command_directory = %[2]s
daemon_directory = %[3]s
meta_directory = %[4]s
shlib_directory = %[5]s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.interop.test
mydomain = interop.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
# No smtpd runs (master.cf has none); this keeps any other inet service
# on loopback.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:%[6]d
# Postfix's smtp client pipelines whenever the server offers PIPELINING
# (there is no switch but discarding the keyword); this test checks it did.
smtp_discard_ehlo_keywords =
smtp_tls_security_level = none
smtputf8_enable = no
maillog_file = %[1]s/log/maillog
maillog_file_prefixes = %[1]s/log
biff = no
queue_minfree = 0
# A message mtad defers comes back quickly instead of in minutes.
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
`, dir, c.postconfDefault(t, "command_directory"), c.postconfDefault(t, "daemon_directory"),
		c.postconfDefault(t, "meta_directory"), c.postconfDefault(t, "shlib_directory"), relayPort)
	masterCf := `# service type private unpriv chroot wakeup maxproc command
pickup    unix  n - n 60    1  pickup
cleanup   unix  n - n -     0  cleanup
qmgr      unix  n - n 300   1  qmgr
rewrite   unix  - - n -     -  trivial-rewrite
bounce    unix  - - n -     0  bounce
defer     unix  - - n -     0  bounce
trace     unix  - - n -     0  bounce
verify    unix  - - n -     1  verify
flush     unix  n - n 1000? 0  flush
proxymap  unix  - - n -     -  proxymap
proxywrite unix - - n -     1  proxymap
smtp      unix  - - n -     10 smtp
relay     unix  - - n -     10 smtp
showq     unix  n - n -     -  showq
error     unix  - - n -     -  error
retry     unix  - - n -     -  error
discard   unix  - - n -     -  discard
local     unix  - n n -     -  local
anvil     unix  - - n -     1  anvil
scache    unix  - - n -     1  scache
postlog   unix-dgram n - n - 1 postlogd
`
	if err := os.WriteFile(filepath.Join(p.etc, "main.cf"), []byte(mainCf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.etc, "master.cf"), []byte(masterCf), 0o644); err != nil {
		t.Fatal(err)
	}
	// check creates the queue's directories with their owners and modes.
	if out, err := p.run(60*time.Second, c.postfix, "-c", p.etc, "check"); err != nil {
		t.Fatalf("postfix check: %v\n%s\n%s", err, out, p.logTail())
	}
	if out, err := p.run(60*time.Second, c.postfix, "-c", p.etc, "start"); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, p.logTail())
	}
	return p
}

// sendmail hands each message to Postfix's sendmail command (-i: a lone
// dot is content; -f: the envelope sender), four at a time.
func (p *postfixInstance) sendmail(t *testing.T, msgs []sentMsg) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make([]error, len(msgs))
	for i, m := range msgs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args := append([]string{"-C", p.etc, "-i", "-f", m.from, "--"}, m.to...)
			cmd := exec.CommandContext(ctx, p.cmds.sendmail, args...)
			cmd.Stdin = bytes.NewReader(m.data)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("sendmail %s: %v: %s", m.id, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%v\n%s", err, p.logTail())
		}
	}
}

// stop stops the instance (once): "postfix stop", then waits for master
// to exit; "postfix abort" and SIGKILL of master are the bounded fallbacks.
func (p *postfixInstance) stop(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.once {
		return
	}
	p.once = true
	master := p.masterPID()
	if master == 0 {
		return // never started
	}
	if out, err := p.run(30*time.Second, p.cmds.postfix, "-c", p.etc, "stop"); err != nil {
		t.Logf("postfix stop: %v: %s", err, out)
	}
	if p.waitGone(master, 20*time.Second) {
		return
	}
	t.Logf("Postfix master %d still up 20s after stop: abort", master)
	_, _ = p.run(10*time.Second, p.cmds.postfix, "-c", p.etc, "abort")
	if p.waitGone(master, 5*time.Second) {
		return
	}
	_ = syscall.Kill(master, syscall.SIGKILL)
	if !p.waitGone(master, 5*time.Second) {
		t.Errorf("Postfix master %d survives SIGKILL", master)
	}
}

// masterPID reads the instance's master pid file; 0 when there is none.
func (p *postfixInstance) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitGone polls until pid is no Postfix master any more (a recycled pid
// is told apart by its command name), at most timeout.
func (p *postfixInstance) waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "master" {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond) // a process's exit gives no event to wait on here
	}
}

// logTail is the end of the instance's maillog, for failure messages.
func (p *postfixInstance) logTail() string {
	return "Postfix maillog:\n" + tail(filepath.Join(p.dir, "log", "maillog"), 30)
}
