package admin

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// bigBody is a body larger than the kernel's socket buffers on both ends
// of a loopback connection (a few MB), so its writes must wait for the
// reader.
const bigBody = 12 << 20

// pattern is bigBody's content: each byte says its offset, so a body
// with a byte lost or repeated does not compare equal.
func pattern(n int) io.Reader {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%015d\n", i*16)
	}
	return bytes.NewReader(b.Bytes()[:n])
}

// bodyQueues serves one big message body; the rest of Queues is not used.
type bodyQueues struct{}

func (bodyQueues) QueueView(QueueQuery) (any, error)  { return nil, nil }
func (bodyQueues) Messages(MessageQuery) (any, error) { return nil, nil }
func (bodyQueues) Message(string) (any, error)        { return nil, nil }
func (bodyQueues) MessageBody(string) (io.ReadCloser, int64, error) {
	return io.NopCloser(pattern(bigBody)), bigBody, nil
}

// bigQuarantine is testQuarantine with a big readable message.
type bigQuarantine struct{ testQuarantine }

func (*bigQuarantine) Body(string) (io.ReadCloser, error) { return io.NopCloser(pattern(bigBody)), nil }

// slowGet fetches path over a connection whose reader takes longer, in
// all, than the server's write timeout, though it never stalls for long:
// 64 KiB, then a pause (about 3 MB/s at most), with a receive buffer of 256 KiB so the kernel
// does not read megabytes ahead for it.
func slowGet(t *testing.T, addr, path string) ([]byte, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetReadBuffer(256 << 10); err != nil {
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
		time.Sleep(20 * time.Millisecond)
	}
	return got.Bytes(), nil
}

// TestBodyToSlowReader: a body longer to read than the write timeout
// reaches a slow operator whole (messages and quarantine), as each 64
// KiB gets its own deadline; before, the timeout cut the whole answer.
func TestBodyToSlowReader(t *testing.T) {
	t.Parallel()
	base := startServer(t, Options{Queues: bodyQueues{}, Quarantine: &bigQuarantine{}, WriteTimeout: time.Second})
	addr := strings.TrimPrefix(base, "http://")
	want, _ := io.ReadAll(pattern(bigBody))
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
