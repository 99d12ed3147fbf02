package smtpclient

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
)

// startSink runs a minimal pipelining SMTP sink on 127.0.0.1:0: it accepts
// everything, answers as soon as its input is drained, and allocates next
// to nothing, so a benchmark measures the client.
func startSink(b *testing.B, chunking bool) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReaderSize(conn, 64<<10)
		w := bufio.NewWriter(conn)
		w.WriteString("220 sink ESMTP\r\n")
		w.Flush()
		inData := false
		ehlo := "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n"
		if chunking {
			ehlo = "250-sink\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 SIZE\r\n"
		}
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			var resp string
			switch {
			case !inData && bytes.HasPrefix(line, []byte("BDAT ")):
				n := 0 // parsed by hand: the sink must not allocate per chunk
				for _, ch := range line[len("BDAT "):] {
					if ch < '0' || ch > '9' {
						break
					}
					n = n*10 + int(ch-'0')
				}
				if _, err := r.Discard(n); err != nil {
					return
				}
				resp = "250 2.0.0 ok\r\n"
			case inData:
				if string(line) == ".\r\n" {
					inData = false
					resp = "250 2.0.0 ok\r\n"
				}
			case bytes.HasPrefix(line, []byte("EHLO")):
				resp = ehlo
			case bytes.HasPrefix(line, []byte("DATA")):
				inData = true
				resp = "354 go\r\n"
			case bytes.HasPrefix(line, []byte("QUIT")):
				w.WriteString("221 bye\r\n")
				w.Flush()
				return
			default:
				resp = "250 2.1.0 ok\r\n"
			}
			w.WriteString(resp)
			if r.Buffered() == 0 {
				w.Flush()
			}
		}
	}()
	b.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

// BenchmarkSend sends a 5 KB message to one recipient per transaction over
// one loopback connection.
func BenchmarkSend(b *testing.B) {
	addr := startSink(b, false)
	c := newClient(b, addr, Options{})
	var body bytes.Buffer
	for body.Len() < 5<<10 {
		body.WriteString(strings.Repeat("x", 70) + "\r\n")
	}
	env := Envelope{From: "sender@src.test", To: []string{"rcpt@dst.test"}, Size: int64(body.Len())}
	b.SetBytes(int64(body.Len()))
	b.ReportAllocs()
	for b.Loop() {
		res, err := c.Send(env, Bytes(body.Bytes()))
		if err != nil || res.Data != nil {
			b.Fatalf("Send = %+v, %v", res, err)
		}
	}
	if err := c.Quit(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSendStream streams a body (as from the spool) by DATA and by
// BDAT, 100 KB and 10 MiB: B/op and allocs/op stay flat with the body's
// size, since a Send holds no more than its pooled chunk buffers.
func BenchmarkSendStream(b *testing.B) {
	for _, chunked := range []bool{false, true} {
		for _, size := range []int{100 << 10, 10 << 20} {
			name := fmt.Sprintf("DATA/%dKiB", size>>10)
			if chunked {
				name = fmt.Sprintf("BDAT/%dKiB", size>>10)
			}
			b.Run(name, func(b *testing.B) {
				addr := startSink(b, chunked)
				c := newClient(b, addr, Options{})
				var body bytes.Buffer
				for body.Len() < size {
					body.WriteString(strings.Repeat("x", 70) + "\r\n")
				}
				env := Envelope{From: "sender@src.test", To: []string{"rcpt@dst.test"}, Size: int64(body.Len())}
				r := bytes.NewReader(body.Bytes())
				b.SetBytes(int64(body.Len()))
				b.ReportAllocs()
				for b.Loop() {
					r.Reset(body.Bytes())
					res, err := c.Send(env, Stream(r, int64(body.Len())))
					if err != nil || res.Data != nil {
						b.Fatalf("Send = %+v, %v", res, err)
					}
				}
				if err := c.Quit(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
