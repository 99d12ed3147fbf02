package dkim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mtad/mtad/internal/config"
)

// TestLoadRefuses: every bad key fails Load with an error naming the entry,
// the file and the fault.
func TestLoadRefuses(t *testing.T) {
	t.Parallel()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nope.pem")
	tests := []struct {
		name string
		file string
		want string
	}{
		{"missing", missing, "no such file"},
		{"world readable", keyFile(t, pemPKCS1(rsa2048()), 0o644), "mode 0644 lets group or others read a private key"},
		{"group readable", keyFile(t, pemPKCS1(rsa2048()), 0o640), "mode 0640"},
		{"unreadable", keyFile(t, pemPKCS1(rsa2048()), 0o000), ""}, // root reads it anyway: see below
		{"directory", t.TempDir(), "not a regular file"},
		{"not PEM", keyFile(t, []byte("hello, I am not a key\n"), 0o600), "no PEM block"},
		{"certificate", keyFile(t, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600), `PEM block "CERTIFICATE"`},
		{"garbage DER", keyFile(t, []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"), 0o600), "PKCS#1 RSA key"},
		{"ECDSA", keyFile(t, pemPKCS8(t, ec), 0o600), "a *ecdsa.PrivateKey key: DKIM signs with RSA or Ed25519 only"},
		{"RSA 512", testdataKey(t, "rsa512.pem"), "RSA key of 512 bits: allowed are 1024 to 4096"},
		{"RSA 8192", testdataKey(t, "rsa8192.pem"), "RSA key of 8192 bits: allowed are 1024 to 4096"},
	}
	for _, tc := range tests {
		_, err := Load([]config.DKIMKey{rsaEntry(t, "ok.example", "s1"), entry("example.com", "s1", tc.file)})
		if tc.want == "" {
			// A 0000 file is unreadable except to root (the CI runs as
			// root): either way Load must not sign with a key it could
			// not read, and a read key at mode 0000 is a fine key.
			if err != nil && !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: Load accepted %s", tc.name, tc.file)
			continue
		}
		prefix := `dkim[1].key_file "` + tc.file + `": `
		if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want %q ... %q", tc.name, err, prefix, tc.want)
		}
	}
}

// TestLoadAccepts: RSA in PKCS#1 and PKCS#8 from 1024 to 4096 bits, and
// Ed25519 in PKCS#8.
func TestLoadAccepts(t *testing.T) {
	t.Parallel()
	ks := mustLoad(t,
		entry("a.example", "p1", keyFile(t, pemPKCS1(rsa2048()), 0o600)),
		entry("a.example", "p8", keyFile(t, pemPKCS8(t, rsa2048()), 0o400)),
		entry("a.example", "small", keyFile(t, pemPKCS1(rsa1024()), 0o600)),
		entry("a.example", "ed", keyFile(t, pemPKCS8(t, edKey()), 0o600)),
	)
	var got []string
	for _, k := range ks.All() {
		got = append(got, k.String()+" "+strconv.Itoa(k.Bits))
	}
	want := "d=a.example s=p1 a=rsa-sha256 2048|d=a.example s=p8 a=rsa-sha256 2048|d=a.example s=small a=rsa-sha256 1024|d=a.example s=ed a=ed25519-sha256 256"
	if strings.Join(got, "|") != want {
		t.Errorf("loaded %q\nwant   %q", strings.Join(got, "|"), want)
	}
}

// TestMatch: exact entries beat wildcards, a wildcard matches the names
// below its domain but not the domain itself, the closest wildcard wins.
func TestMatch(t *testing.T) {
	t.Parallel()
	ks := mustLoad(t,
		rsaEntry(t, "example.com", "exact"),
		edEntry(t, "example.com", "exact-ed"),
		rsaEntry(t, "*.example.com", "wild"),
		rsaEntry(t, "*.deep.example.com", "deeper"),
		rsaEntry(t, "*.example.net", "net"),
	)
	tests := []struct{ domain, want string }{
		{"example.com", "exact,exact-ed"},
		{"news.example.com", "wild"},
		{"a.b.example.com", "wild"},
		{"x.deep.example.com", "deeper"},
		{"deep.example.com", "wild"},
		{"example.net", ""},
		{"mail.example.net", "net"},
		{"example.org", ""},
		{"com", ""},
	}
	for _, tc := range tests {
		var sel []string
		for _, k := range ks.Match(tc.domain) {
			sel = append(sel, k.Selector)
		}
		if got := strings.Join(sel, ","); got != tc.want {
			t.Errorf("Match(%q) = %q, want %q", tc.domain, got, tc.want)
		}
	}
	// A wildcard signs with its base domain as d=.
	if k := ks.Match("news.example.com")[0]; k.Domain != "example.com" || !k.Wildcard {
		t.Errorf("wildcard key: d=%s wildcard=%v", k.Domain, k.Wildcard)
	}
}
