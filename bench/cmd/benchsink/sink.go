package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// record is one message as the sink saw it.
type record struct {
	arrival int64  // unix nanoseconds when the final "." was read
	id      string // the id in the topmost Received header ("with ESMTP id X"), "" if none
}

// stats is the sink's running summary, written to the stats file.
type stats struct {
	Port    int   `json:"port"`
	Count   int64 `json:"count"`
	FirstNs int64 `json:"first_ns"` // arrival of the first message, 0 before any
	LastNs  int64 `json:"last_ns"`  // arrival of the latest message
	Conns   int64 `json:"conns"`    // connections accepted
	Bytes   int64 `json:"bytes"`    // message bytes received (after dot-unstuffing is NOT done: wire bytes)
}

// sink is an SMTP server that accepts every command and every message,
// answers pipelined commands in one write per batch, and remembers when each
// message arrived. It keeps no bodies.
type sink struct {
	port       int
	listeners  []net.Listener
	noChunking atomic.Bool // don't offer CHUNKING (set before the port is published)

	mu      sync.Mutex
	recs    []record
	conns   map[net.Conn]struct{}
	closing bool

	count, firstNs, lastNs, nconns, nbytes atomic.Int64

	wg sync.WaitGroup // accept loops and connection handlers
}

// listenSink listens on every address in addrs on one shared port: port, or
// when port is 0 a free one found on addrs[0] (retried a few times in case
// another address has it taken).
func listenSink(addrs []string, port int) (*sink, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no address to listen on")
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("address %q is not a loopback IP", a)
		}
	}
	var lastErr error
	for try := 0; try < 20; try++ {
		lns, p, err := listenAll(addrs, port)
		if err == nil {
			s := &sink{port: p, listeners: lns, conns: map[net.Conn]struct{}{}}
			for _, ln := range lns {
				s.wg.Add(1)
				go s.accept(ln)
			}
			return s, nil
		}
		lastErr = err
		if port != 0 {
			break
		}
	}
	return nil, lastErr
}

func listenAll(addrs []string, port int) ([]net.Listener, int, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, 0, fmt.Errorf("listening on %s port %d: %w", a, port, err)
		}
		if port == 0 {
			port = ln.Addr().(*net.TCPAddr).Port
		}
		lns = append(lns, ln)
	}
	return lns, port, nil
}

func (s *sink) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by close()
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.nconns.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// close stops accepting, drops every open connection and waits for all
// goroutines.
func (s *sink) close() {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sink) snapshot() stats {
	return stats{Port: s.port, Count: s.count.Load(), FirstNs: s.firstNs.Load(), LastNs: s.lastNs.Load(), Conns: s.nconns.Load(), Bytes: s.nbytes.Load()}
}

// records returns a copy of what has been received so far.
func (s *sink) records() []record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record(nil), s.recs...)
}

func (s *sink) received(id string, size int64) int64 {
	now := time.Now().UnixNano()
	s.firstNs.CompareAndSwap(0, now)
	s.lastNs.Store(now)
	s.nbytes.Add(size)
	s.mu.Lock()
	s.recs = append(s.recs, record{arrival: now, id: id})
	s.mu.Unlock()
	return s.count.Add(1)
}

// idleTimeout bounds how long a silent client keeps a connection.
const idleTimeout = 5 * time.Minute

// ehloReply offers what a big mailbox provider's MX offers (Gmail's and
// Outlook's do offer CHUNKING): a client may send MAIL, RCPT and BDAT with
// the body in one write.
const ehloReply = "250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SIZE 209715200\r\n"

// ehloReplyNoChunking is ehloReply without CHUNKING (-chunking=false).
const ehloReplyNoChunking = "250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE 209715200\r\n"

// maxHeaderKept is how much of a BDAT message's start is kept to find the
// Received id in.
const maxHeaderKept = 8 << 10

// serve speaks SMTP on c until QUIT, EOF or an error. Replies are buffered
// and flushed only when the client has nothing more buffered, so a pipelined
// MAIL/RCPT/DATA group costs one write.
func (s *sink) serve(c net.Conn) {
	br := bufio.NewReaderSize(c, 64<<10)
	bw := bufio.NewWriterSize(c, 4<<10)
	// A BDAT transaction's state: its bytes so far and the start of them.
	var bdatSize int64
	var bdatHead []byte
	inMail := false
	if _, err := bw.WriteString("220 sink.bench ESMTP\r\n"); err != nil {
		return
	}
	for {
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !discardLine(br) {
				return
			}
			bw.WriteString("500 5.5.2 Error: line too long\r\n")
			continue
		}
		if err != nil {
			return
		}
		var reply string
		switch verb(line) {
		case "EHLO":
			reply = ehloReply
			if s.noChunking.Load() {
				reply = ehloReplyNoChunking
			}
		case "HELO":
			reply = "250 sink.bench\r\n"
		case "MAIL":
			reply = "250 2.1.0 Ok\r\n"
			inMail, bdatSize, bdatHead = true, 0, bdatHead[:0]
		case "RCPT":
			reply = "250 2.1.5 Ok\r\n"
		case "RSET":
			reply = "250 2.0.0 Ok\r\n"
			inMail = false
		case "NOOP":
			reply = "250 2.0.0 Ok\r\n"
		case "BDAT":
			size, last, ok := bdatArgs(line)
			if !ok {
				reply = "501 5.5.4 Error: BDAT size [LAST]\r\n"
				inMail = false // the chunk's extent is unknown: the session is lost
				bw.WriteString(reply)
				bw.Flush()
				return
			}
			keep := min(size, int64(maxHeaderKept-len(bdatHead)))
			if keep > 0 {
				bdatHead = append(bdatHead, make([]byte, keep)...)
				if _, err := io.ReadFull(br, bdatHead[len(bdatHead)-int(keep):]); err != nil {
					return
				}
			}
			if _, err := br.Discard(int(size - keep)); err != nil {
				return
			}
			if !inMail {
				reply = "503 5.5.1 Error: need MAIL command\r\n"
				break
			}
			bdatSize += size
			if !last {
				reply = "250 2.0.0 Ok: " + strconv.FormatInt(size, 10) + " octets\r\n"
				break
			}
			n := s.received(headerID(bdatHead), bdatSize)
			inMail = false
			reply = "250 2.0.0 Ok: queued as " + strconv.FormatInt(n, 10) + "\r\n"
		case "QUIT":
			bw.WriteString("221 2.0.0 Bye\r\n")
			bw.Flush()
			return
		case "DATA":
			bw.WriteString("354 End data with <CR><LF>.<CR><LF>\r\n")
			if err := bw.Flush(); err != nil {
				return
			}
			id, size, err := readData(br)
			if err != nil {
				return
			}
			n := s.received(id, size)
			inMail = false
			reply = "250 2.0.0 Ok: queued as " + strconv.FormatInt(n, 10) + "\r\n"
		default:
			reply = "502 5.5.2 Error: command not recognized\r\n"
		}
		if _, err := bw.WriteString(reply); err != nil {
			return
		}
	}
}

// bdatArgs parses "BDAT size [LAST]".
func bdatArgs(line []byte) (size int64, last, ok bool) {
	f := bytes.Fields(line)
	if len(f) < 2 || len(f) > 3 {
		return 0, false, false
	}
	size, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil || size < 0 {
		return 0, false, false
	}
	if len(f) == 3 {
		if !bytes.EqualFold(f[2], []byte("LAST")) {
			return 0, false, false
		}
		last = true
	}
	return size, last, true
}

// headerID finds the Received id in the start of a message sent with BDAT
// (not dot-stuffed, possibly cut off), the way readData does for DATA.
func headerID(head []byte) string {
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(head), strings.NewReader("\r\n.\r\n")))
	id, _, err := readData(r)
	if err != nil {
		return ""
	}
	return id
}

// verb returns the command word of line, upper-cased, at most 4 letters.
func verb(line []byte) string {
	var v [4]byte
	n := 0
	for ; n < len(line) && n < 4; n++ {
		b := line[n]
		if b == ' ' || b == '\r' || b == '\n' {
			break
		}
		if 'a' <= b && b <= 'z' {
			b -= 'a' - 'A'
		}
		v[n] = b
	}
	return string(v[:n])
}

// discardLine skips the rest of an over-long line. It reports false on a
// read error.
func discardLine(br *bufio.Reader) bool {
	for {
		_, err := br.ReadSlice('\n')
		if err == nil {
			return true
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return false
		}
	}
}

// maxReceived bounds how much of the topmost Received header is kept.
const maxReceived = 2048

// readData reads a message up to the line ".", returning the id named in its
// topmost Received header and its size in bytes on the wire.
func readData(r *bufio.Reader) (id string, size int64, err error) {
	atLineStart, inHeaders := true, true
	var rcvd []byte
	capturing, captured := false, false
	for {
		chunk, err := r.ReadSlice('\n')
		whole := err == nil // chunk ends a line
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", size, err
		}
		if atLineStart && whole && (string(chunk) == ".\r\n" || string(chunk) == ".\n") {
			return receivedID(rcvd), size, nil
		}
		size += int64(len(chunk))
		if inHeaders && atLineStart {
			switch {
			case string(chunk) == "\r\n" || string(chunk) == "\n":
				inHeaders = false
				capturing = false
			case capturing && (chunk[0] == ' ' || chunk[0] == '\t'):
				// a continuation of the Received header: keep it below
			case capturing:
				capturing, captured = false, true
			case !captured && len(chunk) >= 9 && bytes.EqualFold(chunk[:9], []byte("Received:")):
				capturing = true
			}
		}
		if capturing && len(rcvd) < maxReceived {
			rcvd = append(rcvd, chunk[:min(len(chunk), maxReceived-len(rcvd))]...)
		}
		atLineStart = whole
	}
}

// receivedID returns the token after " id " in a Received header ("... with
// ESMTP id 4ABC123; date"), or "" when there is none.
func receivedID(h []byte) string {
	f := bytes.Fields(h)
	for i := 0; i+1 < len(f); i++ {
		if bytes.EqualFold(f[i], []byte("id")) {
			return string(bytes.TrimRight(f[i+1], ";"))
		}
	}
	return ""
}
