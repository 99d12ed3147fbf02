// Command mtad is the outbound SMTP delivery daemon. This file only parses
// flags and dispatches; daemon.go wires the packages together.
//
//	mtad [--config FILE] [--check-config] [--version]
//	mtad hash-password        read a password on stdin, print its bcrypt hash
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
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "hash-password" {
		return hashPassword(stdin, stdout, stderr)
	}
	fs := flag.NewFlagSet("mtad", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "configs/mtad.yaml", "configuration file (YAML)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mtad [--config FILE] [--check-config] [--version]\n       mtad hash-password")
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
