package smtpclient

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func encodeBody(b []byte, bufSize int) string {
	var out bytes.Buffer
	w := bufio.NewWriterSize(&out, bufSize)
	writeBody(w, b)
	w.Flush()
	return out.String()
}

func TestWriteBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", ".\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n.\r\n"},
		{"a\n\nb\n", "a\r\n\r\nb\r\n.\r\n"},
		{".x\n.\n", "..x\r\n..\r\n.\r\n"},
		{".", "..\r\n.\r\n"},
		{"a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n"},
		{"a\rb", "a\r\nb\r\n.\r\n"},
		{"a\r", "a\r\n.\r\n"},
		{"a\r\r\n", "a\r\n\r\n.\r\n"},
		{"\r\n\r\n", "\r\n\r\n.\r\n"},
		{"x\n.\r\nSMUGGLED", "x\r\n..\r\nSMUGGLED\r\n.\r\n"},
		{"x\r\n.\rSMUGGLED", "x\r\n..\r\nSMUGGLED\r\n.\r\n"},
		{"x\r.\r\n", "x\r\n..\r\n.\r\n"},
		{"mid . dot\r\n", "mid . dot\r\n.\r\n"},
	} {
		for _, size := range []int{16, 4096} {
			if got := encodeBody([]byte(tc.in), size); got != tc.want {
				t.Errorf("writeBody(%q) with a %d-byte buffer = %q, want %q", tc.in, size, got, tc.want)
			}
		}
	}
}

// decodeBody undoes the transparency procedure as a receiver does (RFC 5321
// §4.5.2), checking that the output is well formed on the way.
func decodeBody(t *testing.T, wire string) string {
	t.Helper()
	if !strings.HasSuffix(wire, ".\r\n") || (len(wire) > 3 && !strings.HasSuffix(wire, "\r\n.\r\n")) {
		t.Fatalf("no end of data in %q", wire)
	}
	lines := strings.Split(strings.TrimSuffix(wire, ".\r\n"), "\r\n")
	lines = lines[:len(lines)-1] // after the last CRLF
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			t.Fatalf("bare CR or LF in line %q of %q", l, wire)
		}
		if l == "." {
			t.Fatalf("premature end of data at line %d of %q", i, wire)
		}
		lines[i] = strings.TrimPrefix(l, ".")
	}
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}

// normalise is what the body should become: every CR, LF or CRLF a CRLF,
// and a final CRLF.
func normalise(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	if s != "" && !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return s
}

func FuzzWriteBody(f *testing.F) {
	for _, s := range []string{"", "a\r\n.b\r\n", "x\n.\r\n", "\r.\r", "..\n\r\r\n.", strings.Repeat("line .\r\n.", 50)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		wire := encodeBody(body, 64)
		if got, want := decodeBody(t, wire), normalise(string(body)); got != want {
			t.Fatalf("round trip of %q = %q, want %q", body, got, want)
		}
	})
}

// A large body goes out in pieces of the caller's slice, not as a copy.
func TestWriteBodyLarge(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	for i := range 5000 {
		if i%7 == 0 {
			b.WriteString(".")
		}
		b.WriteString("some text of a line of a large message\r\n")
	}
	body := b.Bytes()
	if got, want := decodeBody(t, encodeBody(body, 16<<10)), string(body); got != want {
		t.Fatal("large body did not round-trip")
	}
}
