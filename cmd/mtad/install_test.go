package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall runs `make install` into a DESTDIR with another PREFIX
// and checks the tree: binaries that run, the unit pointing at them (and
// accepted by systemd-analyze where it exists), a config for a service
// that --check-config accepts, the logrotate file, the spool directory; a
// second install keeps an edited config and leaves the shipped one beside it.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	build := t.TempDir()
	const prefix = "/opt/mtad"
	makeInstall := func() string {
		t.Helper()
		cmd := exec.Command("make", "-C", root, "install", "DESTDIR="+dest, "PREFIX="+prefix, "BIN="+build)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
		return string(out)
	}
	out := makeInstall()
	if !strings.Contains(out, "not creating the mtad user (DESTDIR is set)") {
		t.Errorf("make install with DESTDIR does not say it skipped the user:\n%s", out)
	}

	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dest, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	mode := func(rel string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dest, rel))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	for _, bin := range []string{"mtad", "mtactl"} {
		if m := mode(prefix + "/bin/" + bin); m.Perm() != 0o755 {
			t.Errorf("%s/bin/%s mode %v, want 0755", prefix, bin, m)
		}
	}
	mtad := filepath.Join(dest, prefix, "bin/mtad")
	if v, err := exec.Command(mtad, "--version").Output(); err != nil || !strings.HasPrefix(string(v), "mtad ") {
		t.Errorf("installed mtad --version: %q, %v", v, err)
	}

	unit := read("lib/systemd/system/mtad.service")
	for _, want := range []string{
		"\nType=notify\n", "\nExecStart=" + prefix + "/bin/mtad --config /etc/mtad/mtad.yaml\n",
		"\nExecReload=/bin/kill -HUP $MAINPID\n", "\nWatchdogSec=30s\n", "\nRestart=on-failure\n",
		"\nUser=mtad\n", "\nProtectSystem=strict\n", "\nReadWritePaths=/var/spool/mtad\n", "\nLogsDirectory=mtad\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("installed unit lacks %q", strings.TrimSpace(want))
		}
	}
	if m := mode("lib/systemd/system/mtad.service"); m.Perm() != 0o644 {
		t.Errorf("unit mode %v, want 0644", m)
	}
	verifyUnit(t, unit, mtad)

	cfg := read("etc/mtad/mtad.yaml")
	if !strings.Contains(cfg, "\n  dir: /var/spool/mtad\n") || !strings.Contains(cfg, "\nresponse_rules_file: /etc/mtad/response-rules.yaml\n") {
		t.Errorf("installed config does not use the service's paths:\n%s", cfg)
	}
	if strings.Contains(cfg, "\nhostname: localhost\n") || !strings.Contains(cfg, "\n# hostname: mail.example.com") {
		t.Errorf("installed config names the host localhost:\n%s", cfg)
	}
	if strings.Contains(cfg, "host: 127.0.0.1:2526") || !strings.Contains(cfg, "\nroutes: []\n") {
		t.Errorf("installed config keeps make run's routes to its capture sink:\n%s", cfg)
	}
	if m := mode("etc/mtad/mtad.yaml"); m.Perm() != 0o640 {
		t.Errorf("config mode %v, want 0640", m)
	}
	// The rules file is where the config says, under DESTDIR here.
	check := exec.Command(mtad, "--check-config", "--config", filepath.Join(dest, "etc/mtad/mtad.yaml"))
	check.Env = append(os.Environ(), "MTAD_RESPONSE_RULES_FILE="+filepath.Join(dest, "etc/mtad/response-rules.yaml"))
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("installed config: mtad --check-config: %v\n%s", err, out)
	}
	if lr := read("etc/logrotate.d/mtad"); !strings.Contains(lr, "--signal=USR1") || !strings.Contains(lr, "/var/log/mtad/") {
		t.Errorf("logrotate file does not signal USR1 for /var/log/mtad:\n%s", lr)
	}
	if m := mode("var/spool/mtad"); !m.IsDir() || m.Perm() != 0o750 {
		t.Errorf("/var/spool/mtad: %v, want a 0750 directory", m)
	}

	// An operator's config survives a reinstall.
	edited := cfg + "\n# edited by the operator\n"
	if err := os.WriteFile(filepath.Join(dest, "etc/mtad/mtad.yaml"), []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	out = makeInstall()
	if got := read("etc/mtad/mtad.yaml"); got != edited {
		t.Error("make install overwrote an existing /etc/mtad/mtad.yaml")
	}
	if got := read("etc/mtad/mtad.yaml.dist"); got != cfg {
		t.Error("the shipped config is not beside the kept one as mtad.yaml.dist")
	}
	if !strings.Contains(out, "kept "+filepath.Join(dest, "etc/mtad/mtad.yaml")) {
		t.Errorf("make install does not say it kept the config:\n%s", out)
	}
}

// verifyUnit runs systemd-analyze verify on the unit (with ExecStart
// pointing at the staged binary, which it checks exists), failing on any
// complaint: it exits 0 on an unknown value, so its output is the verdict.
func verifyUnit(t *testing.T, unit, mtad string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit is checked by content only")
		return
	}
	dir := t.TempDir()
	lines := strings.Split(unit, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
			_, args, _ := strings.Cut(rest, " ")
			lines[i] = "ExecStart=" + mtad + " " + args
		}
	}
	path := filepath.Join(dir, "mtad.service")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(sa, "verify", path)
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, stderr.String())
	}
}
