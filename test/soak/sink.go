package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fault is what a sink does during one phase of its schedule.
type fault int

const (
	faultNone       fault = iota // accept every message
	faultSlow                    // accept, 3s after the final dot
	faultDefer                   // 451 4.3.0 to every RCPT
	faultBounce                  // 550 5.1.1 to every RCPT
	faultMidData                 // close the connection after a few body bytes
	faultNoGreeting              // accept TCP, never send 220
	faultRefused                 // listener closed: connect refused
	numFaults
)

var faultNames = [numFaults]string{"accept", "slow-accept", "4xx-defer", "5xx-bounce", "disconnect-mid-DATA", "no-greeting", "refused"}

func (f fault) String() string { return faultNames[f] }

// sinkSchedule is the round every misbehaving sink goes through, one
// entry per phase; sinks start at different offsets so that some always
// accept. Accepting phases are half of it, so mail drains between faults.
var sinkSchedule = []fault{faultNone, faultSlow, faultDefer, faultNone, faultBounce, faultNone,
	faultMidData, faultNone, faultNoGreeting, faultNone, faultRefused, faultNone}

// sink is a raw-TCP SMTP receiver on one loopback address whose behaviour
// is set by its current fault. It speaks just enough ESMTP for mtad
// (no PIPELINING, so mtad sends with DATA) and records every accepted
// message's Message-ID.
type sink struct {
	addr string // ip:port, fixed for the sink's life (re-bound after "refused")

	mode atomic.Int32 // current fault

	mu       sync.Mutex
	ln       net.Listener // nil while refusing
	conns    map[net.Conn]struct{}
	stopped  bool
	accepted int64               // messages answered 250 after the dot
	ids      map[string]struct{} // distinct Message-IDs accepted
	faults   *faultCounts

	wg sync.WaitGroup // accept loops and connections
}

// faultCounts counts faults as they are served (a transaction or
// connection that met one), by kind, over all sinks and the DNS server.
type faultCounts struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *faultCounts) add(kind string) {
	c.mu.Lock()
	c.n[kind]++
	c.mu.Unlock()
}

func (c *faultCounts) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// startSink listens on ip:port (port 0: chosen by the system) and serves.
func startSink(ip string, port int, fc *faultCounts) (*sink, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return nil, err
	}
	s := &sink{addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}, ids: map[string]struct{}{}, faults: fc}
	s.serve(ln)
	return s, nil
}

func (s *sink) serve(ln net.Listener) {
	s.ln = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed: refusing or stopped
			}
			s.mu.Lock()
			if s.stopped {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				s.session(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
		}
	}()
}

// setMode switches the sink's behaviour; "refused" closes the listener,
// leaving it re-binds the same address.
func (s *sink) setMode(f fault) error {
	s.mode.Store(int32(f))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	switch {
	case f == faultRefused && s.ln != nil:
		s.ln.Close()
		s.ln = nil
		s.faults.add("sink " + f.String() + " (listener stopped)")
	case f != faultRefused && s.ln == nil:
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("sink %s: re-listen: %w", s.addr, err)
		}
		s.serve(ln)
	}
	return nil
}

// stop closes the listener and every connection, and waits for them.
func (s *sink) stop() {
	s.mu.Lock()
	s.stopped = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sink) counts() (accepted int64, distinct int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, len(s.ids)
}

// session serves one connection. Every read and write has a deadline, so
// a session lasts at most as long as its peer keeps talking.
func (s *sink) session(c net.Conn) {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	say := func(line string) bool {
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		w.WriteString(line + "\r\n")
		return w.Flush() == nil
	}
	readLine := func() (string, error) {
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		l, err := r.ReadString('\n')
		return strings.TrimRight(l, "\r\n"), err
	}
	if fault(s.mode.Load()) == faultNoGreeting {
		s.faults.add("sink " + faultNoGreeting.String())
		// Hold the connection silent until mtad's greeting timeout
		// closes it (or 60s, the read deadline).
		_, _ = readLine()
		return
	}
	if !say("220 sink.soak ESMTP") {
		return
	}
	for n := 0; n < 100000; n++ { // bounded: a session of mtad's is far shorter
		line, err := readLine()
		if err != nil {
			return
		}
		verb := strings.ToUpper(line)
		if i := strings.IndexAny(verb, " :"); i >= 0 {
			verb = verb[:i]
		}
		switch verb {
		case "EHLO":
			say("250-sink.soak\r\n250-8BITMIME\r\n250 SIZE 52428800")
		case "HELO":
			say("250 sink.soak")
		case "MAIL", "RSET", "NOOP":
			say("250 2.0.0 ok")
		case "RCPT":
			switch f := fault(s.mode.Load()); f {
			case faultDefer:
				s.faults.add("sink " + f.String())
				say("451 4.3.0 soak: try again later")
			case faultBounce:
				s.faults.add("sink " + f.String())
				say("550 5.1.1 soak: no such user")
			default:
				say("250 2.1.5 ok")
			}
		case "DATA":
			if !say("354 go ahead") {
				return
			}
			if fault(s.mode.Load()) == faultMidData {
				s.faults.add("sink " + faultMidData.String())
				buf := make([]byte, 100)
				_, _ = r.Read(buf)
				return
			}
			id, err := readBody(r, c)
			if err != nil {
				return
			}
			if fault(s.mode.Load()) == faultSlow {
				s.faults.add("sink " + faultSlow.String())
				time.Sleep(3 * time.Second) // within mtad's data_term of 10s
			}
			s.mu.Lock()
			s.accepted++
			if id != "" {
				s.ids[id] = struct{}{}
			}
			s.mu.Unlock()
			say("250 2.0.0 queued")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("500 5.5.2 unknown command")
		}
	}
}

// readBody reads a DATA body up to its final dot and returns its
// Message-ID (without brackets), "" when it has none.
func readBody(r *bufio.Reader, c net.Conn) (string, error) {
	var id string
	inHeader := true
	for {
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "." {
			return id, nil
		}
		if inHeader {
			if l == "" {
				inHeader = false
			} else if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Message-ID") {
				id = strings.Trim(strings.TrimSpace(v), "<>")
			}
		}
		if len(l) > 1<<20 {
			return "", errors.New("line too long")
		}
	}
}
