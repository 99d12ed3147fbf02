package dkim

import (
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/config"
)

// BenchmarkSign signs a 5 KB message (the W1 size of BENCHMARKS.md) with
// no key, RSA-2048, Ed25519 and both. Results go in BENCHMARKS.md, not
// here.
func BenchmarkSign(b *testing.B) {
	msg := testMsg + strings.Repeat(bodyLine, 5000/len(bodyLine))
	for _, bc := range []struct {
		name    string
		entries func() []config.DKIMKey
	}{
		{"none", func() []config.DKIMKey { return nil }},
		{"rsa2048", func() []config.DKIMKey { return []config.DKIMKey{rsaEntry(b, "example.com", "s1")} }},
		{"ed25519", func() []config.DKIMKey { return []config.DKIMKey{edEntry(b, "example.com", "e1")} }},
		{"rsa2048+ed25519", func() []config.DKIMKey {
			return []config.DKIMKey{rsaEntry(b, "example.com", "s1"), edEntry(b, "example.com", "e1")}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewSigner(mustLoad(b, bc.entries()...))
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Sign(strings.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
