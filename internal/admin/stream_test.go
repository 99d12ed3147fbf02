package admin

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// bigBody is a body much larger than the socket buffers of the test's
// connections (smallBuffers), so its writes must wait for the reader.
const bigBody = 6 << 20

// smallBuffers is a listener whose connections have small send buffers:
// the kernel's default grows to 4 MB on loopback, which would hold much
// of a body and hide how slowly the reader takes it.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		err = c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	}
	return c, err
}

// startSmallBuffers serves s's handlers (authentication, deadlines and
// all) on a loopback listener with small buffers; the test's cleanup
// stops it and waits for it.
func startSmallBuffers(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(smallBuffers{ln}) }()
	t.Cleanup(func() {
		if err := s.srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// pattern is a body of n bytes in which a byte lost or repeated shows:
// each byte is a function of its offset, repeating only every 16 MB.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i ^ i>>8 ^ i>>16)
	}
	return b
}

// bodyQueues serves one message body; the rest of Queues is not used.
type bodyQueues struct{ body []byte }

func (bodyQueues) QueueView(QueueQuery) (any, error)  { return nil, nil }
func (bodyQueues) Messages(MessageQuery) (any, error) { return nil, nil }
func (bodyQueues) Message(string) (any, error)        { return nil, nil }
func (q bodyQueues) MessageBody(string) (io.ReadCloser, int64, error) {
	return io.NopCloser(bytes.NewReader(q.body)), int64(len(q.body)), nil
}

// bigQuarantine is testQuarantine whose readable message has body.
type bigQuarantine struct {
	testQuarantine
	body []byte
}

func (q *bigQuarantine) Body(string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(q.body)), nil
}

// slowGet fetches path over a connection whose reader takes longer, in
// all, than the server's write timeout, though it never stalls for long:
// 64 KiB, then a pause (1.6 MB/s at most), with a small receive buffer so
// the kernel does not read ahead for it.
func slowGet(t *testing.T, addr, path string) ([]byte, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	var got bytes.Buffer
	for range bigBody/(64<<10) + 2 { // bounded: one more round than the body needs
		n, err := io.CopyN(&got, resp.Body, 64<<10)
		if err != nil || n == 0 {
			return got.Bytes(), err
		}
		time.Sleep(40 * time.Millisecond)
	}
	return got.Bytes(), nil
}

// TestBodyToSlowReader: a body longer to read than the write timeout
// reaches a slow operator whole (messages and quarantine), as each 64
// KiB gets its own deadline; before, the timeout cut the whole answer.
func TestBodyToSlowReader(t *testing.T) {
	t.Parallel()
	want := pattern(bigBody)
	// The reader takes about 4 s over the body, twice the write timeout;
	// no chunk waits for it for more than a tenth of one.
	addr := startSmallBuffers(t, New(Options{Queues: bodyQueues{want}, Quarantine: &bigQuarantine{body: want}, WriteTimeout: 2 * time.Second}))
	for _, path := range []string{"/api/v1/messages/01ABC/body", "/api/v1/quarantine/01GOOD/body"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			got, err := slowGet(t, addr, path)
			if err != nil && err != io.EOF {
				t.Fatalf("%v after %d of %d bytes", err, len(got), bigBody)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%d bytes, want the %d of the body", len(got), bigBody)
			}
		})
	}
}
