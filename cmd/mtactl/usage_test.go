package main

// What mtactl refuses before asking the daemon. The commands' exchanges
// with the real endpoints (queues, messages, bounce, rebind, reload, the
// quarantine) are driven against the running daemon, with the real
// mtactl binary, by test/e2e's TestMtactlEveryCommand.

import (
	"strings"
	"testing"
)

// TestNewCommandsUsage: what mtactl refuses before asking the daemon
// (exit 2 with the usage line), whether or not the endpoints exist.
func TestNewCommandsUsage(t *testing.T) {
	t.Parallel()
	base, _ := startAdmin(t)
	for _, args := range [][]string{
		{"queue-summary", "extra"},
		{"queue-summary", "--limit", "x"},
		{"domain"},
		{"binding", "a", "b"},
		{"message"},
		{"message", "list"},
		{"message", "list", "--domain", "a.test", "--sender", "s@x.test"},
		{"message", "list", "--binding", "b1"},
		{"message", "show"},
		{"bounce", "--reason", "r"},
		{"bounce", "--queue-id", "1", "--sender", "s@x.test", "--reason", "r"},
		{"bounce", "--sender", "s@x.test"},
		{"bounce", "--sender", "s@x.test", "--binding", "b1", "--reason", "r"},
		{"cancel", "--queue-id", "1", "--binding", "b1", "--reason", "r"},
		{"rebind", "--domain", "a.test", "--reason", "r"},
		{"reload", "now"},
		{"quarantine"},
		{"quarantine", "show"},
		{"quarantine", "reinject", "01A"},
		{"quarantine", "delete", "01A", "01B", "--reason", "r"},
		{"top", "--limit", "0"},
	} {
		code, out, errOut := mtactl(t, base, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "usage: mtactl "+args[0]) {
			t.Errorf("%q: exit %d stdout %q stderr %q, want 2 and the usage line", args, code, out, errOut)
		}
	}
}
