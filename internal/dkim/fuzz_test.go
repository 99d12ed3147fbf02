package dkim

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"strings"
	"testing"
)

// FuzzParseKey: no key file content panics the parser, and a key it
// accepts is RSA of an allowed size or Ed25519.
func FuzzParseKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, bits, err := parseKey(data)
		if err != nil {
			return
		}
		switch pk := k.(type) {
		case *rsa.PrivateKey:
			if bits != pk.N.BitLen() || bits < minRSABits || bits > maxRSABits {
				t.Fatalf("accepted an RSA key of %d bits (said %d)", pk.N.BitLen(), bits)
			}
		case ed25519.PrivateKey:
		default:
			t.Fatalf("accepted a %T", k)
		}
	})
}

// FuzzHeader: the header section of an injected message is the client's;
// reading it and finding the From domain never panics, and a domain found
// is lower-case ASCII.
func FuzzHeader(f *testing.F) {
	f.Add([]byte(testMsg))
	f.Add([]byte("From: a@b.example, c@d.example\r\n\r\n"))
	f.Add([]byte("From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>\r\n\r\n"))
	f.Add([]byte("From:\r\n\t<x@y>\r\nFrom: z@w\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var hdr bytes.Buffer
		from, present, why, err := readHeader(bufio.NewReaderSize(bytes.NewReader(data), 16<<10), &hdr)
		if err != nil || why != "" {
			return
		}
		if !bytes.HasPrefix(data, hdr.Bytes()) || (len(present) == 0 && len(from) > 0) {
			t.Fatalf("header %q of %q, present %v", hdr.Bytes(), data, present)
		}
		d, why := fromDomain(from)
		if why == "" && (d == "" || d != strings.ToLower(d) || strings.ContainsFunc(d, func(r rune) bool { return r >= 0x80 })) {
			t.Fatalf("From domain %q from %q", d, from)
		}
	})
}
