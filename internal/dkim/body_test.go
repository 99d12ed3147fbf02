package dkim

import (
	"context"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/connpool/loopbacktest"
	"github.com/mtad/mtad/internal/spool"
)

func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{MemTableSize: 8 << 20, CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

// genBody is a message of about size bytes made as it is read, so that a
// test's own copy does not count in the memory measured.
type genBody struct {
	head   string
	size   int
	off    int
	sample func() // called at each MiB read
}

func (g *genBody) Read(p []byte) (int, error) {
	if g.off >= len(g.head)+g.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.off < len(g.head)+g.size {
		if g.off < len(g.head) {
			k := copy(p[n:], g.head[g.off:])
			n += k
			g.off += k
			continue
		}
		// Body lines of 78 letters and CRLF, copied up to the next MiB
		// boundary at most.
		pos := g.off - len(g.head)
		end := min(g.size, (pos/(1<<20)+1)<<20)
		k := 0
		for n < len(p) && pos+k < end {
			c := copy(p[n:], bodyLine[(pos+k)%80:])
			c = min(c, end-pos-k)
			n += c
			k += c
		}
		g.off += k
		if g.sample != nil && (pos+k)%(1<<20) == 0 {
			g.sample()
		}
	}
	return n, nil
}

var bodyLine = strings.Repeat("abcdefghijklmnopqrstuvwxyz", 3) + "\r\n"

// TestSignBody signs a message stored in a real spool, small (one record)
// and large (chunked), and the new body read back from the spool verifies.
func TestSignBody(t *testing.T) {
	t.Parallel()
	sp := openSpool(t)
	keys := mustLoad(t, rsaEntry(t, "example.com", "s1"), edEntry(t, "example.com", "e1"))
	s := NewSigner(keys)
	for _, size := range []int{80, 3 * spool.ChunkSize} {
		body := sp.NewBody()
		if _, err := io.Copy(body, &genBody{head: testMsg, size: size}); err != nil {
			t.Fatal(err)
		}
		out, res, err := s.SignBody(sp, body)
		if err != nil {
			t.Fatalf("SignBody(%d): %v", size, err)
		}
		if out == body || len(res.Signatures) != 2 {
			t.Fatalf("SignBody(%d): same body %v, %+v", size, out == body, res)
		}
		if want := int64(len(res.Header) + len(testMsg) + size); out.Len() != want {
			t.Errorf("signed body %d bytes, want %d", out.Len(), want)
		}
		r, err := out.Reader()
		if err != nil {
			t.Fatal(err)
		}
		vs, err := dkim.VerifyWithOptions(r, &dkim.VerifyOptions{LookupTXT: lookup(keys)})
		_ = r.Close()
		if err != nil || len(vs) != 2 || vs[0].Err != nil || vs[1].Err != nil {
			t.Errorf("size %d: verify %v %+v", size, err, vs)
		}
		if _, err := body.Reader(); err == nil {
			t.Errorf("the old body was not dropped")
		}
		out.Abort()
	}
	// Unsigned: the body comes back as it was.
	body := sp.NewBody()
	_, _ = io.WriteString(body, strings.Replace(testMsg, "example.com>", "example.org>", 1))
	out, res, err := s.SignBody(sp, body)
	if err != nil || out != body || res.Unsigned != "no key for example.org" {
		t.Errorf("unsigned: same body %v, %+v, %v", out == body, res, err)
	}
	body.Abort()
}

// TestSignMemoryFlat signs a 25 MiB message made as it is read, with
// the collector kept tight, and samples the live heap at each MiB: it
// must stay far below the body's size, so the body is never held whole.
// (go-msgauth's canonicalizers do allocate a little garbage per write, so
// the total allocated grows with the body; what is live does not.)
func TestSignMemoryFlat(t *testing.T) {
	// Not parallel: the GC percent is process-wide, and other tests'
	// allocations would blur the measure.
	keys := mustLoad(t, rsaEntry(t, "example.com", "s1"), edEntry(t, "example.com", "e1"))
	s := NewSigner(keys)
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	const size = 25 << 20
	g := &genBody{head: testMsg, size: size, sample: func() {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
	}}
	res, err := s.Sign(g)
	if err != nil || len(res.Signatures) != 2 {
		t.Fatalf("Sign: %+v %v", res, err)
	}
	if grew := int64(peak) - int64(base); grew > 4<<20 {
		t.Errorf("heap grew by %d bytes while signing a %d-byte message", grew, size)
	}
	t.Logf("heap growth while signing 25 MiB: %d KiB", (int64(peak)-int64(base))>>10)
}

// TestCheckDNS looks keys up on a loopback DNS server: a matching record
// passes, a missing one or one with another key fails naming the entry,
// its file and the record.
func TestCheckDNS(t *testing.T) {
	t.Parallel()
	z := loopbacktest.StartDNS(t)
	good := rsaEntry(t, "example.com", "s1")
	good.DNSCheck = true
	ed := edEntry(t, "example.com", "e1")
	ed.DNSCheck = true
	keys := mustLoad(t, good, ed)
	for _, k := range keys.All() {
		z.Add(t, zoneTXT(k))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := CheckDNS(ctx, keys, []string{z.Addr}, 2*time.Second); err != nil {
		t.Fatalf("CheckDNS: %v", err)
	}

	// Another key published under the selector; and a selector with no
	// record.
	other := entry("example.com", "s1", keyFile(t, pemPKCS1(rsa1024()), 0o600))
	other.DNSCheck = true
	missing := edEntry(t, "example.com", "gone")
	missing.DNSCheck = true
	err := CheckDNS(ctx, mustLoad(t, other, missing), []string{z.Addr}, 2*time.Second)
	if err == nil {
		t.Fatal("CheckDNS accepted a mismatching and a missing record")
	}
	for _, want := range []string{
		`dkim[0].key_file "` + other.KeyFile + `": dns_check of s1._domainkey.example.com TXT: p= publishes another key`,
		`dkim[1].key_file "` + missing.KeyFile + `": dns_check of gone._domainkey.example.com TXT: no such name (NXDOMAIN)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// A server failure is an error too, not a pass.
	z.SetRcode("s1._domainkey.example.com.", dns.RcodeServerFailure)
	if err := CheckDNS(ctx, keys, []string{z.Addr}, 2*time.Second); err == nil || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("SERVFAIL: %v", err)
	}
	// Keys without dns_check are not looked up.
	if err := CheckDNS(ctx, mustLoad(t, rsaEntry(t, "nowhere.example", "x")), []string{z.Addr}, time.Second); err != nil {
		t.Errorf("no dns_check: %v", err)
	}
}
