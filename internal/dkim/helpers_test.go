package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/config"
)

// go-msgauth's Signer runs a goroutine per signature until it is closed:
// goleak shows a signature left open.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Keys are generated once per test binary: RSA-2048 generation takes
// tens of milliseconds to seconds on a shared machine.
var (
	rsa2048 = sync.OnceValue(func() *rsa.PrivateKey { return genRSA(2048) })
	rsa1024 = sync.OnceValue(func() *rsa.PrivateKey { return genRSA(1024) })
	edKey   = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func genRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

// pemPKCS1 and pemPKCS8 encode a private key as the two PEM forms.
func pemPKCS1(k *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

func pemPKCS8(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// keyFile writes data to a fresh file with mode perm and returns its path.
func keyFile(t testing.TB, data []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod after the write: the umask must not decide the mode tested.
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// testdataKey copies a key shipped in testdata (git keeps no modes) to a
// 0600 file.
func testdataKey(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return keyFile(t, data, 0o600)
}

// entry is a dkim: list entry for a key file, as config.Load normalises it.
func entry(domain, selector, file string) config.DKIMKey {
	return config.DKIMKey{Domain: domain, Selector: selector, KeyFile: file, Canonicalization: config.DefaultDKIMCanonicalization}
}

// mustLoad loads entries or fails the test.
func mustLoad(t testing.TB, entries ...config.DKIMKey) *Keys {
	t.Helper()
	ks, err := Load(entries)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return ks
}

// rsaEntry and edEntry are entries for the shared test keys.
func rsaEntry(t testing.TB, domain, selector string) config.DKIMKey {
	return entry(domain, selector, keyFile(t, pemPKCS1(rsa2048()), 0o600))
}

func edEntry(t testing.TB, domain, selector string) config.DKIMKey {
	return entry(domain, selector, keyFile(t, pemPKCS8(t, edKey()), 0o600))
}

// lookup serves the TXT records publishing keys, as go-msgauth's
// verifier asks for them.
func lookup(keys *Keys) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		for _, k := range keys.All() {
			if name == k.Selector+"._domainkey."+k.Domain {
				return []string{k.TXTRecord()}, nil
			}
		}
		return nil, fmt.Errorf("no TXT record for %s", name)
	}
}

// zoneTXT is the zone-file line of k's TXT record, split in strings of at
// most 255 octets as DNS requires.
func zoneTXT(k *Key) string {
	rec := k.TXTRecord()
	var parts []string
	for len(rec) > 255 {
		parts = append(parts, `"`+rec[:255]+`"`)
		rec = rec[255:]
	}
	parts = append(parts, `"`+rec+`"`)
	return k.Selector + "._domainkey." + k.Domain + ". 300 IN TXT " + strings.Join(parts, " ")
}
