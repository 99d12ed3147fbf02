// Command mtad is the outbound SMTP delivery daemon. This file only parses
// flags and dispatches; daemon.go wires the packages together.
//
//	mtad [--config FILE] [--check-config] [--version] [--allow-root]
//	mtad hash-password        read a password on stdin, print its bcrypt hash
//
// The daemon refuses to run as root (exit 2) unless --allow-root is given:
// it needs no privilege (its ports are above 1024 by default, or granted
// CAP_NET_BIND_SERVICE by the systemd unit, which runs it as mtad), and a
// listener parsing hostile input as root turns any bug into a root bug.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/inject"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Geteuid(), os.Stdin, os.Stdout, os.Stderr))
}

// run is main with its surroundings passed in; euid is the effective user
// id, so that the root check is tested without being root.
func run(args []string, euid int, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "hash-password" {
		return hashPassword(stdin, stdout, stderr)
	}
	fs := flag.NewFlagSet("mtad", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "configs/mtad.yaml", "configuration file (YAML)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	allowRoot := fs.Bool("allow-root", false, "run the daemon even as root (not advised; see README, Security)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mtad [--config FILE] [--check-config] [--version] [--allow-root]\n       mtad hash-password")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "mtad: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mtad", version)
		return 0
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "mtad:", err)
		return 1
	}
	if *check {
		// Build everything that can fail on a valid-looking config (bindings
		// not on this host, unknown plugins, unreadable TLS files) without
		// opening the spool or any socket.
		if err := checkConfig(cfg); err != nil {
			fmt.Fprintln(stderr, "mtad:", err)
			return 1
		}
		fmt.Fprintf(stdout, "mtad: %s: configuration is valid\n", *cfgPath)
		return 0
	}
	// After the configuration is read, so that a bad one is reported
	// first; --check-config, --version and hash-password need no check.
	if euid == 0 && !*allowRoot {
		fmt.Fprintln(stderr, "mtad: refusing to run as root: run it as an unprivileged user (the systemd unit uses mtad), or pass --allow-root")
		return 2
	}
	if err := runDaemon(*cfgPath, cfg); err != nil {
		fmt.Fprintln(stderr, "mtad:", err)
		return 1
	}
	return 0
}

// hashPassword reads one line (the password) and prints its bcrypt hash, for
// inject.smtp.auth_users_file.
func hashPassword(stdin io.Reader, stdout, stderr io.Writer) int {
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(stderr, "mtad: hash-password:", err)
		return 1
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(stderr, "mtad: hash-password: empty password on standard input")
		return 1
	}
	h, err := inject.HashPassword(pw)
	if err != nil {
		fmt.Fprintln(stderr, "mtad: hash-password:", err)
		return 1
	}
	fmt.Fprintln(stdout, h)
	return 0
}
