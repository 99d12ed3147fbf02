package smtpclient

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"testing"
)

// startSink runs a minimal pipelining SMTP sink on 127.0.0.1:0: it accepts
// everything, answers as soon as its input is drained, and allocates next
// to nothing, so a benchmark measures the client.
func startSink(b *testing.B) string {
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
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			var resp string
			switch {
			case inData:
				if string(line) == ".\r\n" {
					inData = false
					resp = "250 2.0.0 ok\r\n"
				}
			case bytes.HasPrefix(line, []byte("EHLO")):
				resp = "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n"
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
	addr := startSink(b)
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
