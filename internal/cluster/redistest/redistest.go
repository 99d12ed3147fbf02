// Package redistest runs a real redis-server for tests: on a free
// loopback port, in the test's temporary directory, without persistence,
// killed (SIGKILL) at the end. It never talks to any other Redis.
package redistest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a real redis-server the test starts on a free loopback
// port in its own directory, without persistence.
type Server struct {
	t    testing.TB
	dir  string
	port int
	cmd  *exec.Cmd
}

// Start starts redis-server. redis-server cannot be given port 0 and
// report the port it took (--port 0 turns TCP off), so a port is taken
// from the kernel with a listener on :0 and given back just before; a
// start that loses that port to another process is retried.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not installed (test/e2e/deps.sh installs it): %v", err)
	}
	r := &Server{t: t, dir: t.TempDir()}
	for try := 0; try < 3; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		if r.start() == nil {
			t.Cleanup(r.Kill)
			return r
		}
	}
	t.Fatal("redis-server did not start in 3 tries")
	return nil
}

func (r *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start runs redis-server on r.port and waits (at most 5 s) for PING.
func (r *Server) start() error {
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	r.cmd.Stdout, r.cmd.Stderr = os.Stderr, os.Stderr
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	var err error
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err = rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Kill()
	return err
}

// Kill stops redis-server with SIGKILL (as a crash would) and reaps it.
func (r *Server) Kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Restart starts redis-server again on the same port, empty.
func (r *Server) Restart() {
	if err := r.start(); err != nil {
		r.t.Fatalf("redis-server restart: %v", err)
	}
}

// Pause stops redis-server with SIGSTOP: it holds its connections and
// answers nothing (a stalled server, unlike Kill's refused connections)
// until Resume.
func (r *Server) Pause() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume continues a paused redis-server (SIGCONT).
func (r *Server) Resume() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGCONT)
	}
}
