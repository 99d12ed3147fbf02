package conform

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"mime/quotedprintable"
	"runtime"
	"sync"
	"testing"
)

// patternReader yields header, then a pattern repeated up to n octets of
// body, without holding the body.
type patternReader struct {
	header, pattern []byte
	n, off          int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if len(p.header) > 0 {
		k := copy(b, p.header)
		p.header = p.header[k:]
		return k, nil
	}
	if p.off >= p.n {
		return 0, io.EOF
	}
	i := p.off % int64(len(p.pattern))
	k := copy(b, p.pattern[i:])
	if rem := p.n - p.off; int64(k) > rem {
		k = int(rem)
	}
	p.off += int64(k)
	return k, nil
}

// A 25 MiB body of 3,000-octet lines goes through Rewrite as a stream: what
// it allocates stays far below the body's size, and the quoted-printable it
// writes decodes to the same octets (compared by SHA-256). Not parallel, so
// the allocation count is this test's alone.
func TestRewriteStreams25MiB(t *testing.T) {
	const size = 25 << 20
	header := []byte("From: a@example.com\r\nSubject: big\r\n\r\n")
	line := bytes.Repeat([]byte("abcdefghij klmnopqrstuvwxyz ="), 104)[:3000]
	pattern := append(line, crlf...)
	size3002 := int64(size) / int64(len(pattern)) * int64(len(pattern)) // whole lines
	open := func() (io.ReadCloser, error) {
		return io.NopCloser(&patternReader{header: header, pattern: pattern, n: size3002}), nil
	}

	want := sha256.New()
	io.Copy(want, &patternReader{pattern: pattern, n: size3002})

	pr, pw := io.Pipe()
	var (
		wg      sync.WaitGroup
		got     = sha256.New()
		readErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		br := bufio.NewReader(pr)
		for { // skip the header
			l, err := br.ReadSlice('\n')
			if err != nil {
				readErr = err
				pr.CloseWithError(err)
				return
			}
			if len(l) == 2 {
				break
			}
		}
		_, readErr = io.Copy(got, quotedprintable.NewReader(br))
		pr.CloseWithError(readErr)
	}()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := Rewrite(open, pw, Options{})
	runtime.ReadMemStats(&after)
	pw.Close()
	wg.Wait()
	if err != nil || readErr != nil {
		t.Fatalf("Rewrite: %v; decoding: %v", err, readErr)
	}
	if res.Reencoded != 1 {
		t.Errorf("Result %+v", res)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Error("decoded body differs from the original")
	}
	// The pipe reader's decoding runs concurrently and allocates a little
	// too; 4 MiB is 1/6 of the body.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d octets for a %d-octet body", alloc, size3002)
	if alloc > 4<<20 {
		t.Errorf("Rewrite of a %d-octet body allocated %d octets", size3002, alloc)
	}
}
