package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// TestRefusesRoot: as root (euid 0, passed in) the daemon does not start
// without --allow-root: one line, exit 2. The commands that start no
// daemon, and a bad configuration, are answered as before. Not parallel:
// a daemon let past the check applies the runtime settings (GC percent,
// memory limit) to the process before it fails; they are put back.
func TestRefusesRoot(t *testing.T) {
	prevGC := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLimit) })
	dir := t.TempDir()
	// A spool "directory" that is a file: a daemon let past the check
	// fails at once opening it, and starts nothing.
	notDir := filepath.Join(dir, "spool")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "mtad.yaml")
	if err := os.WriteFile(cfg, []byte("hostname: mx.test\nspool:\n  dir: "+notDir+"\nresponse_rules_file: \"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const refusal = "mtad: refusing to run as root: run it as an unprivileged user (the systemd unit uses mtad), or pass --allow-root\n"
	for _, tt := range []struct {
		name   string
		euid   int
		args   []string
		code   int
		stderr string // exact when refusal, else a substring
	}{
		{"root", 0, []string{"--config", cfg}, 2, refusal},
		{"root, check-config", 0, []string{"--config", cfg, "--check-config"}, 0, ""},
		{"root, version", 0, []string{"--version"}, 0, ""},
		{"root, bad config first", 0, []string{"--config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{"root, allowed", 0, []string{"--config", cfg, "--allow-root"}, 1, "spool"},
		{"not root", 1000, []string{"--config", cfg}, 1, "spool"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, tt.euid, strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, stderr.String())
			}
			switch {
			case tt.stderr == refusal && stderr.String() != refusal:
				t.Errorf("stderr %q, want %q", stderr.String(), refusal)
			case tt.stderr != refusal && strings.Contains(stderr.String(), "refusing to run as root"):
				t.Errorf("refused: %q", stderr.String())
			case !strings.Contains(stderr.String(), tt.stderr):
				t.Errorf("stderr %q, want it to mention %q", stderr.String(), tt.stderr)
			}
		})
	}
}
