package inject

import (
	"bytes"
	"strings"
	"testing"
)

// collect is a bodySink that keeps everything.
type collect struct{ b []byte }

func (c *collect) emit(p []byte) { c.b = append(c.b, p...) }

// modelData is the byte-at-a-time model of the DATA reader: the body up to
// CRLF.CRLF (CRLF "." CRLF at the very start too), dot removed after a
// real CRLF, bare CR/LF made CRLF, and the flags. ok is false when the
// input has no terminator.
func modelData(in []byte, dots bool) (out []byte, consumed int, ok, nul, long bool) {
	bol := true // after a real CRLF
	lineLen := 0
	for i := 0; i < len(in); i++ {
		c := in[i]
		if dots && bol && c == '.' {
			if i+2 < len(in) && in[i+1] == '\r' && in[i+2] == '\n' {
				return out, i + 3, true, nul, long
			}
			bol = false
			continue // a stuffed dot
		}
		bol = false
		switch {
		case c == '\r' && i+1 < len(in) && in[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
			bol = true
			lineLen = 0
		case c == '\r' && i+1 == len(in):
			// Its LF may still come: DATA holds it back; BDAT's finish()
			// completes it.
			if !dots {
				out = append(out, '\r', '\n')
			}
			lineLen = 0
		case c == '\r' || c == '\n':
			out = append(out, '\r', '\n')
			lineLen = 0
		default:
			out = append(out, c)
			lineLen++
			if lineLen > maxLineOctets {
				long = true
			}
			if c == 0 {
				nul = true
			}
		}
	}
	if !dots && lineLen > 0 {
		out = append(out, '\r', '\n')
	}
	return out, len(in), !dots, nul, long
}

// runScanner feeds in to a scanner in blocks of step bytes, as the
// connection would, and returns what the model returns.
func runScanner(in []byte, step int, dots bool) (out []byte, consumed int, ok, nul, long bool) {
	sc := newDataScanner(dots)
	var col collect
	for consumed < len(in) {
		end := min(len(in), consumed+step)
		n, done := sc.scan(in[consumed:end], &col)
		consumed += n
		if done {
			return col.b, consumed, true, sc.nul, sc.long
		}
		if n != end-(consumed-n) {
			panic("scanner left bytes of a block unconsumed without finishing")
		}
	}
	if !dots {
		sc.finish(&col)
		return col.b, consumed, true, sc.nul, sc.long
	}
	return col.b, consumed, false, sc.nul, sc.long
}

var scannerSeeds = []string{
	"a\r\nb\r\n.\r\n",
	"line1\n.\nmore\r\n..dotted\r\nbare\rcr\r\n.\r\nQUIT\r\n",
	".\r\n",
	"\r\n.\r\n",
	"x\r\n.\r.\r\n.\r\n",
	"\n.\n\r.\r\r\n.x\r\n.\r\n",
	"nul\x00here\r\n.\r\n",
	strings.Repeat("y", 999) + "\r\n.\r\n",
	strings.Repeat("y", 998) + "\r\n.\r\n",
	"no end",
	"a\r",
	"\r\r\n\n",
}

// FuzzDataReader checks the DATA scanner against modelData, whatever the
// block boundaries.
func FuzzDataReader(f *testing.F) {
	for _, s := range scannerSeeds {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		checkScanner(t, in, int(step), true)
	})
}

// FuzzBDATReader is FuzzDataReader for BDAT: no dots, no terminator, a
// final line end added.
func FuzzBDATReader(f *testing.F) {
	for _, s := range scannerSeeds {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		checkScanner(t, in, int(step), false)
	})
}

func checkScanner(t *testing.T, in []byte, step int, dots bool) {
	if step == 0 {
		step = len(in) + 1
	}
	wOut, wN, wOK, wNUL, wLong := modelData(in, dots)
	gOut, gN, gOK, gNUL, gLong := runScanner(in, step, dots)
	if !bytes.Equal(gOut, wOut) || gN != wN || gOK != wOK || gNUL != wNUL || gLong != wLong {
		t.Fatalf("scan(%q, step %d, dots %v)\n got %q n=%d ok=%v nul=%v long=%v\nwant %q n=%d ok=%v nul=%v long=%v",
			in, step, dots, gOut, gN, gOK, gNUL, gLong, wOut, wN, wOK, wNUL, wLong)
	}
}

func TestDataScannerCases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		long     bool
	}{
		{"a\r\nb\r\n.\r\n", "a\r\nb\r\n", false},
		{".\r\n", "", false},
		{"..x\r\n.\r\n", ".x\r\n", false},
		// Smuggling: only CRLF.CRLF ends the data.
		{"a\n.\nb\r\n.\r\n", "a\r\n.\r\nb\r\n", false},
		{"a\r.\rb\r\n.\r\n", "a\r\n.\r\nb\r\n", false},
		{"a\r\n.\nb\r\n.\r\n", "a\r\n\r\nb\r\n", false},
		{strings.Repeat("z", 999) + "\r\n.\r\n", strings.Repeat("z", 999) + "\r\n", true},
		{"." + strings.Repeat("z", 998) + "\r\n.\r\n", strings.Repeat("z", 998) + "\r\n", false},
	}
	for _, tt := range tests {
		for _, step := range []int{1, 2, 7, 1 << 20} {
			out, _, ok, _, long := runScanner([]byte(tt.in), step, true)
			if !ok || string(out) != tt.want || long != tt.long {
				t.Errorf("scan(%q, step %d) = %q ok=%v long=%v; want %q long=%v", tt.in, step, out, ok, long, tt.want, tt.long)
			}
		}
	}
}
