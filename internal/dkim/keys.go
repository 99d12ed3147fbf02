// Package dkim owns DKIM signing at injection (RFC 6376, RFC 8463 for
// Ed25519): it reads the private keys named by the config's dkim: list once,
// picks the keys whose domain matches a message's From-header domain, and
// produces the DKIM-Signature fields for a message streamed through it,
// through emersion/go-msgauth's signer. SignBody puts those fields in
// front of a body written to the spool, reading the body back in chunks:
// a message is never held whole in memory.
//
// A Keys set is immutable once loaded; a Signer holds the current set in
// an atomic pointer, so a reload (SIGHUP) swaps in a new set while
// injection sessions sign with the old one.
//
// The package must never look at the network while signing (the DNS check
// is a start-up and reload step), never sign with a key it could not fully
// check, and never import inject or the scheduler: it is on floor 1.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"golang.org/x/net/idna"

	"github.com/mtad/mtad/internal/config"
)

// RSA key sizes accepted: RFC 8301 3.2 forbids signing with less than
// 1024 bits, and a key over 4096 bits does not fit a TXT record that
// common DNS providers and verifiers handle (nor does RFC 8301 ask
// verifiers to accept it).
const (
	minRSABits = 1024
	maxRSABits = 4096
)

// maxKeyFile bounds what is read of a key file: a 4096-bit PKCS#8 RSA PEM
// is about 3.3 KB.
const maxKeyFile = 64 << 10

// DefaultHeaders is the h= list when a key names none: the fields a
// recipient sees or that decide how the message is shown, listed in
// RFC 6376 5.4.1, plus those bulk senders are judged by (List-Unsubscribe
// and -Post, RFC 8058, which Gmail and Yahoo require signed, and
// Feedback-ID). From is listed twice: the second, matching no field,
// "oversigns" it, so a From added on the way breaks the signature.
// A field absent from the message is left out of h=, except From's
// second entry.
var DefaultHeaders = []string{
	"From", "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID",
	"In-Reply-To", "References",
}

// Key is one loaded signing key with its settings.
type Key struct {
	Index    int    // position in the config's dkim: list
	Domain   string // d=, an A-label
	Wildcard bool   // from "*.Domain": signs for the names below Domain
	Selector string
	File     string
	Algo     string // a= ("rsa-sha256" or "ed25519-sha256")
	Bits     int    // RSA modulus size; 256 for Ed25519
	DNSCheck bool

	signer     crypto.Signer
	headers    []string // the configured h= list; nil = DefaultHeaders
	headerCan  dkim.Canonicalization
	bodyCan    dkim.Canonicalization
	expiry     time.Duration
	publicDER  []byte // the public half as a TXT p= carries it
	configName string // "dkim[i]"
}

// Public returns the key's public half.
func (k *Key) Public() crypto.PublicKey { return k.signer.Public() }

// String names the key as the received record does.
func (k *Key) String() string {
	return "d=" + k.Domain + " s=" + k.Selector + " a=" + k.Algo
}

// Keys is an immutable set of loaded keys, indexed by signing domain.
type Keys struct {
	exact map[string][]*Key // by Domain, in config order
	wild  map[string][]*Key // by Domain of "*.Domain" entries
	all   []*Key
}

// Len is the number of keys.
func (ks *Keys) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.all)
}

// All returns the keys in config order.
func (ks *Keys) All() []*Key {
	if ks == nil {
		return nil
	}
	return ks.all
}

// Match returns the keys that sign for a From domain (an A-label, lower
// case): the entries for exactly that domain if any, else those of the
// closest "*.parent" entry. Several entries for one domain give several
// signatures.
func (ks *Keys) Match(domain string) []*Key {
	if ks == nil {
		return nil
	}
	if k := ks.exact[domain]; len(k) > 0 {
		return k
	}
	// Walk up one label at a time: a.b.example.com tries b.example.com,
	// then example.com, then com. A domain has at most 127 labels.
	for d := domain; ; {
		_, parent, ok := strings.Cut(d, ".")
		if !ok {
			return nil
		}
		if k := ks.wild[parent]; len(k) > 0 {
			return k
		}
		d = parent
	}
}

// Load reads and checks every key of the config's dkim: list. An error
// names the entry and the file: a missing or unreadable file, a file
// readable by group or others, a PEM that does not parse, a key that is
// neither RSA nor Ed25519, an RSA key outside 1024–4096 bits.
func Load(entries []config.DKIMKey) (*Keys, error) {
	ks := &Keys{exact: map[string][]*Key{}, wild: map[string][]*Key{}}
	var errs []error
	for i, e := range entries {
		k, err := loadKey(i, e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ks.all = append(ks.all, k)
		if k.Wildcard {
			ks.wild[k.Domain] = append(ks.wild[k.Domain], k)
		} else {
			ks.exact[k.Domain] = append(ks.exact[k.Domain], k)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ks, nil
}

func loadKey(i int, e config.DKIMKey) (*Key, error) {
	name := fmt.Sprintf("dkim[%d]", i)
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%s.key_file %q: %s", name, e.KeyFile, fmt.Sprintf(format, args...))
	}
	domain, wild := strings.CutPrefix(strings.ToLower(strings.TrimSuffix(e.Domain, ".")), "*.")
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil || ascii == "" {
		return nil, fmt.Errorf("%s.domain %q: not a domain name: %v", name, e.Domain, err)
	}
	hc, bc, ok := parseCanon(e.Canonicalization)
	if !ok {
		return nil, fmt.Errorf("%s.canonicalization %q: want header/body, each simple or relaxed", name, e.Canonicalization)
	}
	signer, bits, err := readKey(e.KeyFile)
	if err != nil {
		return nil, fail("%v", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fail("encoding the public key: %v", err)
	}
	k := &Key{
		Index: i, Domain: ascii, Wildcard: wild, Selector: e.Selector, File: e.KeyFile,
		Bits: bits, DNSCheck: e.DNSCheck, signer: signer, headerCan: hc, bodyCan: bc,
		expiry: e.Expiry, configName: name,
	}
	switch pk := signer.Public().(type) {
	case *rsa.PublicKey:
		k.Algo, k.publicDER = "rsa-sha256", pub
	case ed25519.PublicKey:
		// RFC 8463 3: the p= of an Ed25519 key is the bare 32 bytes.
		k.Algo, k.publicDER = "ed25519-sha256", []byte(pk)
	}
	if len(e.Headers) > 0 {
		k.headers = append([]string(nil), e.Headers...)
	}
	return k, nil
}

func parseCanon(s string) (h, b dkim.Canonicalization, ok bool) {
	if s == "" {
		s = config.DefaultDKIMCanonicalization
	}
	hs, bs, found := strings.Cut(s, "/")
	if !found {
		return "", "", false
	}
	canon := func(v string) (dkim.Canonicalization, bool) {
		switch v {
		case "simple":
			return dkim.CanonicalizationSimple, true
		case "relaxed":
			return dkim.CanonicalizationRelaxed, true
		}
		return "", false
	}
	h, ok1 := canon(hs)
	b, ok2 := canon(bs)
	return h, b, ok1 && ok2
}

// readKey opens a key file, refuses it when group or others may read it,
// and parses its first PEM block.
func readKey(path string) (crypto.Signer, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	// Checked on the open file, so the file read is the file checked.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, 0, fmt.Errorf("mode %#o lets group or others read a private key; chmod 600 it", perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, 0, err
	}
	if len(data) > maxKeyFile {
		return nil, 0, fmt.Errorf("over %d bytes: not a PEM key", maxKeyFile)
	}
	return parseKey(data)
}

// parseKey parses a PEM private key: PKCS#1 RSA, or PKCS#8 RSA or Ed25519.
func parseKey(data []byte) (crypto.Signer, int, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, 0, errors.New("no PEM block")
	}
	if _, encrypted := block.Headers["Proc-Type"]; encrypted {
		return nil, 0, errors.New("the PEM block is encrypted; mtad needs the key in clear")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		// The size is checked before x509 parses the key, so a refused key
		// is named by its size, not by a library's message.
		if bits, err := rsaBits(block.Bytes); err != nil {
			return nil, 0, fmt.Errorf("PKCS#1 RSA key: %v", err)
		} else if err := checkBits(bits); err != nil {
			return nil, 0, err
		}
		key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("PKCS#1 RSA key: %v", err)
		}
		return key, key.N.BitLen(), nil
	case "PRIVATE KEY":
		if der, ok := pkcs8RSA(block.Bytes); ok {
			if bits, err := rsaBits(der); err != nil {
				return nil, 0, fmt.Errorf("PKCS#8 RSA key: %v", err)
			} else if err := checkBits(bits); err != nil {
				return nil, 0, err
			}
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("PKCS#8 key: %v", err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			if err := checkBits(k.N.BitLen()); err != nil {
				return nil, 0, err
			}
			return k, k.N.BitLen(), nil
		case ed25519.PrivateKey:
			return k, 256, nil
		default:
			return nil, 0, fmt.Errorf("a %T key: DKIM signs with RSA or Ed25519 only", key)
		}
	default:
		return nil, 0, fmt.Errorf("PEM block %q: want \"RSA PRIVATE KEY\" (PKCS#1) or \"PRIVATE KEY\" (PKCS#8)", block.Type)
	}
}

func checkBits(bits int) error {
	if bits < minRSABits || bits > maxRSABits {
		return fmt.Errorf("RSA key of %d bits: allowed are %d to %d", bits, minRSABits, maxRSABits)
	}
	return nil
}

// rsaBits reads the modulus size of a PKCS#1 RSAPrivateKey (SEQUENCE {
// version, modulus, ... }) without checking the rest.
func rsaBits(der []byte) (int, error) {
	var seq asn1.RawValue
	if _, err := asn1.Unmarshal(der, &seq); err != nil {
		return 0, err
	}
	var version int
	rest, err := asn1.Unmarshal(seq.Bytes, &version)
	if err != nil {
		return 0, err
	}
	n := new(big.Int)
	if _, err := asn1.Unmarshal(rest, &n); err != nil {
		return 0, err
	}
	if n.Sign() <= 0 {
		return 0, errors.New("no modulus")
	}
	return n.BitLen(), nil
}

var oidRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}

// pkcs8RSA returns the PKCS#1 key inside a PKCS#8 RSA key.
func pkcs8RSA(der []byte) ([]byte, bool) {
	var p struct {
		Version    int
		Algo       pkix.AlgorithmIdentifier
		PrivateKey []byte
	}
	if _, err := asn1.Unmarshal(der, &p); err != nil || !p.Algo.Algorithm.Equal(oidRSA) {
		return nil, false
	}
	return p.PrivateKey, true
}
