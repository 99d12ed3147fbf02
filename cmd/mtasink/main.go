// Command mtasink is mtad's capture sink for trying mtad on one machine:
// an SMTP server on a loopback address that accepts every message and
// writes each one, as received, to <dir>/<timestamp>-<n>.eml (with a
// Return-Path and an X-Envelope-To field in front, for the envelope).
// `make run` starts it beside mtad, and the shipped configs/mtad.yaml
// routes the reserved .test domains (RFC 6761) to it, so a message to
// user@example.test goes the whole way (injection, spool, scheduler,
// delivery) without leaving the machine.
//
//	mtasink [--listen 127.0.0.1:2526] [--dir var/sink]
//
// It prints "mtasink listening on ADDR, writing to DIR" once it listens,
// then one line per stored message; SIGINT or SIGTERM stops it.
//
// It must never listen outside 127.0.0.0/8 and ::1 (it accepts anything
// from anyone), never deliver or relay what it receives, and never answer
// 250 before the message's file is complete and synced. It is a tool for
// people and tests, not part of the daemon.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mtasink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:2526", "loopback host:port to accept SMTP on (port 0: any free port)")
	dir := fs.String("dir", "var/sink", "directory to write the messages to (created if missing)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mtasink: unexpected arguments %q\n", fs.Args())
		return 2
	}
	// Asked for before listening, so that a signal arriving as soon as
	// the port is announced is not lost.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	s, err := Listen(*listen, *dir, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "mtasink:", err)
		return 1
	}
	s.outMu.Lock() // messages may already be arriving and reported
	fmt.Fprintf(stdout, "mtasink listening on %s, writing to %s\n", s.Addr(), *dir)
	s.outMu.Unlock()
	<-sigs
	if err := s.Close(5 * time.Second); err != nil {
		fmt.Fprintln(stderr, "mtasink: stop:", err)
		return 1
	}
	return 0
}
