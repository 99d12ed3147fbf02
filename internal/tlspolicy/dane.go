package tlspolicy

// DANE for SMTP (RFC 7672, with RFC 7671's updates to RFC 6698): finding
// an MX host's TLSA records through a DNSSEC-validating resolver, and
// checking a TLS handshake against them in tls.Config.VerifyConnection,
// so one handshake both encrypts and authenticates.
//
// What is trusted: the resolvers of dns.servers validate DNSSEC and say so
// with the AD bit (RFC 4035 §3.2.3, asked for with AD=1 and DO=1 per
// RFC 6840 §5.7–5.8). mtad does not validate signatures itself, so those
// resolvers must be on a path nobody can tamper with (loopback, as
// RFC 7672 §8.1 and RFC 4033 §4.9.3 advise); an AD bit from a remote
// resolver is worth what that path is worth.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mtad/mtad/internal/mx"
)

// TLSA is one TLSA record (RFC 6698 §2.1): certificate usage, selector,
// matching type and the association data.
type TLSA struct {
	Usage, Selector, MatchingType uint8
	Data                          []byte

	// base is the TLSA base domain the record was found at (RFC 7672
	// §2.2.3: the MX host, or the end of its secure CNAME chain), without
	// the trailing dot. VerifyConnection accepts it as a reference
	// identifier for DANE-TA, next to the host it is given.
	base string
}

// The TLSA fields' values mtad knows (RFC 6698 §7.2–7.4, RFC 7218 names).
const (
	usagePKIXTA = 0 // unusable for SMTP (RFC 7672 §3.1.3)
	usagePKIXEE = 1 // unusable for SMTP (RFC 7672 §3.1.3)
	usageDANETA = 2
	usageDANEEE = 3

	selectorCert = 0
	selectorSPKI = 1

	matchFull   = 0
	matchSHA256 = 1
	matchSHA512 = 2
)

// usable reports whether mtad can authenticate a server with r: DANE-TA or
// DANE-EE, a known selector and matching type, and a digest of the right
// length (a truncated digest can match nothing; RFC 7671 §4.1 makes such
// records unusable rather than fatal).
func (r TLSA) usable() bool {
	if r.Usage != usageDANETA && r.Usage != usageDANEEE {
		return false
	}
	if r.Selector != selectorCert && r.Selector != selectorSPKI {
		return false
	}
	switch r.MatchingType {
	case matchFull:
		return len(r.Data) > 0
	case matchSHA256:
		return len(r.Data) == sha256.Size
	case matchSHA512:
		return len(r.Data) == sha512.Size
	}
	return false
}

// DANE looks up TLSA records. It is safe for concurrent use and holds no
// goroutine, so it needs no Close.
type DANE struct {
	x    *mx.Exchanger
	port int
}

// maxCNAME bounds the CNAME hops followed, inside one answer and across
// re-queries, as internal/mx does.
const maxCNAME = 8

// NewDANE returns a DANE asking servers ("host:port" of DNSSEC-validating
// resolvers, config dns.servers) in order, each query bounded by timeout
// (5s when 0), for the TLSA records of _port._tcp.<MX host> (port 25 when
// 0). With no servers, Lookup fails: DANE without a validating resolver
// cannot tell a protected host from an attacked one.
func NewDANE(servers []string, timeout time.Duration, port int) *DANE {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return NewDANEExchanger(mx.NewExchanger(slices.Clone(servers), timeout), port)
}

// NewDANEExchanger is NewDANE asking through x, whose servers must be
// DNSSEC-validating resolvers. The daemon passes the resolver's
// (mx.Resolver.Exchanger), so that one table of DNS servers' health
// serves MX, MTA-STS and DANE: a server found dead by one is not waited
// on by the others.
func NewDANEExchanger(x *mx.Exchanger, port int) *DANE {
	if port <= 0 || port > 65535 {
		port = 25
	}
	return &DANE{x: x, port: port}
}

// Lookup returns the TLSA records of _port._tcp.<mxHost> (RFC 7672 §2.2)
// when they are DNSSEC-secure; secure is then true and recs is not empty.
// Records of every usage are returned, the unusable ones included: a
// secure TLSA RRset whose records are all unusable still means the server
// does TLS, so the caller must not fall back to clear text (RFC 7672 §2.2,
// "mandatory unauthenticated TLS"); VerifyConnection ignores them.
//
// What is checked, in order:
//
//  1. The MX host's address records (A, or AAAA when it has no A) must be
//     secure (AD bit): RFC 7672 §2.2.2 looks for TLSA records only then,
//     since an attacker who can forge the address can send the client to
//     a host the TLSA records do not describe. An insecure answer, or a
//     secure NXDOMAIN/NODATA for both, means not DANE-protected:
//     (nil, false, nil).
//  2. If the address lookup followed CNAMEs and the whole chain was
//     secure, the TLSA base domain is the chain's end (RFC 7672 §2.2.3):
//     _port._tcp.<target> is asked first, and when it has no secure
//     records, _port._tcp.<mxHost> is asked next (RFC 7671 §7 calls this
//     the fallback to the "initial name").
//  3. The TLSA answer itself must be secure; it may be reached through
//     CNAMEs (RFC 7671 §7), which are followed. An insecure answer or no
//     records: (nil, false, nil).
//
// A lookup the resolver cannot answer (SERVFAIL, which a validating
// resolver also returns for bogus data, REFUSED, a timeout, a CNAME loop)
// is an error: the caller defers, since an attacker who can make TLSA
// lookups fail must not win clear text by it (RFC 7672 §2.1.1).
func (d *DANE) Lookup(ctx context.Context, mxHost string) (recs []TLSA, secure bool, err error) {
	host := dns.CanonicalName(mxHost)
	if _, ok := dns.IsDomainName(host); !ok || host == "." {
		return nil, false, fmt.Errorf("dane: %q is not a host name", mxHost)
	}
	final, ok, err := d.secureAddress(ctx, host)
	if err != nil || !ok {
		return nil, false, err
	}
	bases := []string{host}
	if final != host {
		bases = []string{final, host}
	}
	for _, base := range bases {
		recs, secure, err := d.tlsa(ctx, base)
		if err != nil {
			return nil, false, err
		}
		if secure && len(recs) > 0 {
			return recs, true, nil
		}
	}
	return nil, false, nil
}

// secureAddress asks for host's A records, then AAAA when there are none,
// and reports whether a secure answer with addresses was found and the
// name its CNAME chain ends at.
func (d *DANE) secureAddress(ctx context.Context, host string) (final string, secure bool, err error) {
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, end, ok, err := d.query(ctx, host, qtype)
		if err != nil {
			return "", false, err
		}
		if !ok {
			return "", false, nil
		}
		if len(rrs) > 0 {
			return end, true, nil
		}
	}
	return "", false, nil
}

// tlsa asks for the TLSA records of _port._tcp.<base>.
func (d *DANE) tlsa(ctx context.Context, base string) ([]TLSA, bool, error) {
	name := "_" + strconv.Itoa(d.port) + "._tcp." + base
	rrs, _, secure, err := d.query(ctx, name, dns.TypeTLSA)
	if err != nil || !secure {
		return nil, false, err
	}
	var out []TLSA
	for _, rr := range rrs {
		t := rr.(*dns.TLSA)
		data, err := hex.DecodeString(t.Certificate)
		if err != nil {
			continue // miekg/dns wrote it as hex; unreachable, kept for safety
		}
		out = append(out, TLSA{
			Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType,
			Data: data, base: strings.TrimSuffix(base, "."),
		})
	}
	return out, true, nil
}

// query resolves name/qtype following CNAMEs, asking again for the chain's
// end when the resolver did not follow it. It returns the records of
// qtype, the name the chain ended at, and whether every answer on the way
// carried the AD bit. NXDOMAIN and NODATA are answers (no records).
func (d *DANE) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, string, bool, error) {
	qname := dns.CanonicalName(name)
	secure := true
	seen := map[string]bool{}
	for range maxCNAME {
		if seen[qname] {
			break
		}
		seen[qname] = true
		msg, err := d.exchange(ctx, qname, qtype)
		if err != nil {
			return nil, "", false, err
		}
		secure = secure && msg.AuthenticatedData
		rrs, end, loop := chase(msg, qname, qtype)
		if loop {
			break
		}
		if len(rrs) > 0 || msg.Rcode == dns.RcodeNameError || end == qname {
			return rrs, end, secure, nil
		}
		qname = end
	}
	return nil, "", false, fmt.Errorf("dane: query %s %s: CNAME chain loops or is longer than %d", name, dns.TypeToString[qtype], maxCNAME)
}

// chase follows the CNAMEs in msg's answer from qname and returns the
// records of qtype at the end and the end's name; loop reports a chain
// that comes back to a name it passed or is longer than maxCNAME.
func chase(msg *dns.Msg, qname string, qtype uint16) (rrs []dns.RR, end string, loop bool) {
	cur := qname
	seen := map[string]bool{cur: true}
	for i := 0; ; i++ {
		next := ""
		for _, rr := range msg.Answer {
			if c, ok := rr.(*dns.CNAME); ok && rr.Header().Class == dns.ClassINET &&
				dns.CanonicalName(rr.Header().Name) == cur {
				next = dns.CanonicalName(c.Target)
				break
			}
		}
		if next == "" {
			break
		}
		if seen[next] || i == maxCNAME {
			return nil, "", true
		}
		seen[next] = true
		cur = next
	}
	for _, rr := range msg.Answer {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && dns.CanonicalName(h.Name) == cur {
			rrs = append(rrs, rr)
		}
	}
	return rrs, cur, false
}

// exchange asks the servers in turn until one answers NOERROR or NXDOMAIN
// (mx.Exchanger). SERVFAIL, a validating resolver's answer to bogus data,
// moves on to the next server like REFUSED or a timeout; when none is
// left the error says what each did.
func (d *DANE) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if len(d.x.Servers()) == 0 {
		return nil, fmt.Errorf("dane: query %s %s: no DNSSEC-validating resolver configured (dns.servers)",
			name, dns.TypeToString[qtype])
	}
	resp, err := d.x.Exchange(ctx, name, qtype, func(m *dns.Msg) {
		// AD=1 asks a validating resolver to report validation in the AD
		// bit (RFC 6840 §5.7); DO=1 is what resolvers that predate it need
		// (RFC 4035 §3.2.3). CD stays 0: the resolver must validate.
		m.AuthenticatedData = true
		m.SetEdns0(1232, true)
	})
	if err != nil {
		return nil, fmt.Errorf("dane: %w", err)
	}
	return resp, nil
}

// DANEChecker is the DANEFunc of d (Options.DANE): the host's TLSA
// records when they are DNSSEC-secure, checked by VerifyConnection with
// roots (tls.ca_file's, for DANE-TA anchors a server leaves out of its
// chain); no check at all when the host has no secure records, and the
// lookup's error when it failed. The daemon and the tests use this one
// adapter, so a test of it is a test of what the daemon does.
func DANEChecker(d *DANE, roots *x509.CertPool) DANEFunc {
	return func(ctx context.Context, host string) (func(tls.ConnectionState) error, error) {
		recs, secure, err := d.Lookup(ctx, host)
		if err != nil || !secure || len(recs) == 0 {
			return nil, err
		}
		return VerifyConnection(recs, host, roots), nil
	}
}

// VerifyConnection returns a tls.Config.VerifyConnection function that
// authenticates the server by recs, for a handshake made with
// InsecureSkipVerify (Go's own checks off, these on), in the one handshake
// STARTTLS makes. host is the MX host name; the caller should also send it
// (or the TLSA base domain) as the SNI name (RFC 7672 §8.1).
//
// The rules (RFC 7672 §3.1, RFC 7671 §5):
//   - DANE-EE(3): the leaf's certificate (selector 0) or its
//     SubjectPublicKeyInfo (selector 1) matches the data, in full (0), by
//     SHA-256 (1) or SHA-512 (2). Neither name nor validity dates are
//     checked (RFC 7672 §3.1.1): the key is the identity.
//   - DANE-TA(2): a certificate of the presented chain, a full certificate
//     in a "2 0 0" record (RFC 7671 §5.2.2), or a certificate of a chain
//     built to roots (tls.ca_file, when the server does not send its trust
//     anchor), matches; the leaf must chain to it with valid dates and
//     carry a reference identifier (RFC 7672 §3.2.2): host, or the TLSA
//     base domain the records came from when it differs.
//   - PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672 §3.1.3),
//     as are unknown selectors, matching types and digests of the wrong
//     length: they are ignored.
//   - Digest agility (RFC 7671 §9): when records of one usage and selector
//     come with SHA-512, the SHA-256 ones of that usage and selector are
//     ignored, so a weaker digest cannot stand in for a stronger one.
//   - When no record is usable, any certificate is accepted: RFC 7672 §2.2
//     says the server is still to be reached over TLS, unauthenticated
//     ("mandatory unauthenticated TLS"); the caller must not fall back to
//     clear text.
//
// A failure's error starts "dane:" and names the host and the records.
func VerifyConnection(recs []TLSA, host string, roots *x509.CertPool) func(tls.ConnectionState) error {
	usable := usableRecords(recs)
	host = strings.TrimSuffix(host, ".")
	refIDs := []string{host}
	for _, r := range usable {
		if r.base != "" && !slices.ContainsFunc(refIDs, func(s string) bool { return strings.EqualFold(s, r.base) }) {
			refIDs = append(refIDs, r.base)
		}
	}
	return func(cs tls.ConnectionState) error {
		if len(usable) == 0 {
			return nil
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("dane: %s presented no certificate", host)
		}
		leaf := cs.PeerCertificates[0]
		for _, r := range usable {
			if r.Usage == usageDANEEE && r.matches(leaf) {
				return nil
			}
		}
		why := verifyTA(usable, cs.PeerCertificates, refIDs, roots)
		if why == "" {
			return nil
		}
		return fmt.Errorf("dane: %s: no usable TLSA record (%s) matches the certificate chain (leaf %q): %s",
			host, describe(usable), leaf.Subject.String(), why)
	}
}

// usableRecords drops the unusable records, and the SHA-256 ones of a
// usage and selector that also has SHA-512 ones.
func usableRecords(recs []TLSA) []TLSA {
	type us struct{ u, s uint8 }
	has512 := map[us]bool{}
	for _, r := range recs {
		if r.usable() && r.MatchingType == matchSHA512 {
			has512[us{r.Usage, r.Selector}] = true
		}
	}
	var out []TLSA
	for _, r := range recs {
		if r.usable() && !(r.MatchingType == matchSHA256 && has512[us{r.Usage, r.Selector}]) {
			out = append(out, r)
		}
	}
	return out
}

// matches reports whether c is the certificate or key r names.
func (r TLSA) matches(c *x509.Certificate) bool {
	var content []byte
	switch r.Selector {
	case selectorCert:
		content = c.Raw
	case selectorSPKI:
		content = c.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.MatchingType {
	case matchFull:
		return bytes.Equal(content, r.Data)
	case matchSHA256:
		h := sha256.Sum256(content)
		return bytes.Equal(h[:], r.Data)
	case matchSHA512:
		h := sha512.Sum512(content)
		return bytes.Equal(h[:], r.Data)
	}
	return false
}

// verifyTA checks the DANE-TA records: it returns "" when the leaf chains
// to a matching trust anchor and carries one of refIDs, else why not.
func verifyTA(usable []TLSA, chain []*x509.Certificate, refIDs []string, roots *x509.CertPool) string {
	var ta []TLSA
	for _, r := range usable {
		if r.Usage == usageDANETA {
			ta = append(ta, r)
		}
	}
	if len(ta) == 0 {
		return "the DANE-EE records match neither the leaf's certificate nor its key"
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	matchesTA := func(c *x509.Certificate) bool {
		return slices.ContainsFunc(ta, func(r TLSA) bool { return r.matches(c) })
	}
	// Candidate anchors: the presented certificates, and full certificates
	// published in the records themselves.
	var anchors []*x509.Certificate
	for _, c := range chain {
		if matchesTA(c) {
			anchors = append(anchors, c)
		}
	}
	for _, r := range ta {
		if r.Selector == selectorCert && r.MatchingType == matchFull {
			if c, err := x509.ParseCertificate(r.Data); err == nil {
				anchors = append(anchors, c)
			}
		}
	}
	var lastErr error
	for _, a := range anchors {
		pool := x509.NewCertPool()
		pool.AddCert(a)
		opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
		if _, err := leaf.Verify(opts); err != nil {
			lastErr = err
			continue
		}
		if err := nameMatches(leaf, refIDs); err != nil {
			lastErr = err
			continue
		}
		return ""
	}
	// The server may leave its trust anchor out of the chain (RFC 7671
	// §5.2.2 asks it not to, but it happens): a chain built to the
	// configured roots whose anchor or intermediate matches will do.
	if roots != nil {
		opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
		chains, err := leaf.Verify(opts)
		if err != nil && lastErr == nil {
			lastErr = err
		}
		for _, ch := range chains {
			if !slices.ContainsFunc(ch[1:], matchesTA) {
				continue
			}
			if err := nameMatches(leaf, refIDs); err != nil {
				lastErr = err
				continue
			}
			return ""
		}
	}
	if len(anchors) == 0 && (roots == nil || lastErr != nil) {
		return "no DANE-TA record matches a certificate of the chain"
	}
	if lastErr == nil {
		return "no DANE-TA record matches a certificate of the chain or of a chain to the configured roots"
	}
	return "DANE-TA: " + lastErr.Error()
}

// nameMatches checks the leaf against the reference identifiers.
func nameMatches(leaf *x509.Certificate, refIDs []string) error {
	for _, id := range refIDs {
		if leaf.VerifyHostname(id) == nil {
			return nil
		}
	}
	return fmt.Errorf("certificate is not valid for %s", strings.Join(refIDs, " or "))
}

// describe lists records briefly for errors: usage, selector, matching
// type and the first bytes of the data.
func describe(recs []TLSA) string {
	var b strings.Builder
	for i, r := range recs {
		if i > 0 {
			b.WriteString(", ")
		}
		data := hex.EncodeToString(r.Data)
		if len(data) > 16 {
			data = data[:16] + "…"
		}
		fmt.Fprintf(&b, "%d %d %d %s", r.Usage, r.Selector, r.MatchingType, data)
	}
	return b.String()
}
