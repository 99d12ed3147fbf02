package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseStat(t *testing.T) {
	t.Parallel()
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 20 0 1 0 100 200 300"
	tests := []struct {
		line      string
		pid, ppid int
		ticks     int64
		wantErr   bool
	}{
		// utime=11 stime=12 cutime=13 cstime=20 (fields 14..17 of the line)
		{"42 (mtad)" + tail, 42, 1, 56, false},
		{"7 (a (weird) name)" + tail, 7, 1, 56, false},
		{"7 (x y)" + tail, 7, 1, 56, false},
		{"7 (short) S 1 2", 0, 0, 0, true},
		{"no parens", 0, 0, 0, true},
		{"x (bad pid)" + tail, 0, 0, 0, true},
	}
	for _, tc := range tests {
		got, err := parseStat([]byte(tc.line))
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v, want error %v", tc.line, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && (got.pid != tc.pid || got.ppid != tc.ppid || got.ticks != tc.ticks) {
			t.Errorf("%q: got %+v, want pid %d ppid %d ticks %d", tc.line, got, tc.pid, tc.ppid, tc.ticks)
		}
	}
}

// TestSampleTreeSeesChildren starts a child and a grandchild and expects
// the sample of this process's tree to include both.
func TestSampleTreeSeesChildren(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("sh", "-c", "sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := sampleTree("/proc", cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if s.procs == 2 { // sh and its sleep
			if s.rssKB <= 0 || s.pssKB <= 0 || s.rootHWM <= 0 {
				t.Fatalf("sample %+v: want memory figures > 0", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sample of sh has %d processes after 10 s, want 2", s.procs)
		}
		time.Sleep(10 * time.Millisecond) // waiting for sh to fork: nothing to block on
	}
}

func TestSampleTreeGone(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := sampleTree("/proc", cmd.Process.Pid); !errors.Is(err, errGone) {
		t.Fatalf("sampling a reaped pid: %v, want errGone", err)
	}
}

// TestWatchCountsCPU burns CPU in a child and expects watch to charge it.
func TestWatchCountsCPU(t *testing.T) {
	t.Parallel()
	// Once told to on stdin, the shell burns a fixed amount of CPU (≈0.3 s
	// here) in a grandchild, then idles until killed.
	cmd := exec.Command("sh", "-c", `read go; sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; echo done; sleep 30`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	stop := make(chan os.Signal, 1)
	type watched struct {
		res result
		err error
	}
	got := make(chan watched, 1)
	go func() {
		r, err := watch(cmd.Process.Pid, 20*time.Millisecond, stop, func() { in.Write([]byte("go\n")) })
		got <- watched{r, err}
	}()
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil { // "done": the burner has exited and been reaped
		t.Fatal(err)
	}
	stop <- syscall.SIGTERM
	w := <-got
	if w.err != nil {
		t.Fatal(w.err)
	}
	if w.res.CPUSeconds < 0.05 || w.res.Samples < 2 || w.res.RootExited {
		t.Fatalf("result %+v: want ≥ 0.05 CPU s over ≥ 2 samples", w.res)
	}
}
