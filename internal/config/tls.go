package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TLS configures how outbound TLS is checked beyond delivery.tls (the
// default policy of every destination; a shaping scope's `tls:` overrides
// it): the extra roots, MTA-STS (RFC 8461) and DANE (RFC 7672).
type TLS struct {
	// CAFile is a PEM file of roots added to the system's, for the
	// `verified` policy, MTA-STS (the policy fetch and the MX certificate)
	// and DANE-TA. "" = the system roots alone.
	CAFile string `mapstructure:"ca_file"`
	// MTASTS honours the MTA-STS policies domains publish (default true);
	// a shaping scope may set mta_sts: false.
	MTASTS bool `mapstructure:"mta_sts"`
	// MTASTSCacheDir holds the fetched policies, one file per domain, so
	// that a restart does not lose them. "" = <spool.dir>/mta-sts.
	MTASTSCacheDir string `mapstructure:"mta_sts_cache_dir"`
	// DANE checks MX certificates against TLSA records (default false); a
	// shaping scope may set dane: true. It needs a DNSSEC-validating
	// resolver in dns.servers.
	DANE bool `mapstructure:"dane"`
}

// TLSModes are the values of delivery.tls and of a shaping scope's tls:
//
//   - opportunistic: STARTTLS when offered, clear text when not, and after
//     a failed handshake a clear-text retry (remembered for
//     delivery.tls_failure_ttl);
//   - opportunistic_no_fallback: STARTTLS when offered, clear text when
//     not, but a failed handshake defers;
//   - required: no STARTTLS offered or a failed handshake defers;
//   - verified: required, and the certificate must verify for the MX name;
//   - disabled: never STARTTLS.
var TLSModes = []string{"opportunistic", "opportunistic_no_fallback", "required", "verified", "disabled"}

// MTASTSDir returns tls.mta_sts_cache_dir, or its default under spool.dir.
func (c *Config) MTASTSDir() string {
	if c.TLS.MTASTSCacheDir != "" {
		return c.TLS.MTASTSCacheDir
	}
	return filepath.Join(c.Spool.Dir, "mta-sts")
}

// Roots returns the system roots plus tls.ca_file's. The error names the
// key; Validate has already read the file once, this reads it again for
// use. The daemon builds its TLS engine with them at start: a changed file
// takes a restart (a SIGHUP says so).
func (c *Config) Roots() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		// No system roots (a bare container): tls.ca_file's alone.
		pool = x509.NewCertPool()
	}
	if c.TLS.CAFile == "" {
		return pool, nil
	}
	if err := addPEMRoots(pool, c.TLS.CAFile); err != nil {
		return nil, &FieldError{Key: "tls.ca_file", Msg: err.Error()}
	}
	return pool, nil
}

// addPEMRoots adds every certificate of the PEM file at path to pool, and
// fails when the file cannot be read or holds none.
func addPEMRoots(pool *x509.CertPool, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%q: %w", path, err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("%q holds no PEM certificate", path)
	}
	return nil
}

func (c *Config) validateTLS(v *validator) {
	if c.TLS.CAFile != "" {
		if err := addPEMRoots(x509.NewCertPool(), c.TLS.CAFile); err != nil {
			v.bad("tls.ca_file", "%v", err)
		}
	}
	if d := c.TLS.MTASTSCacheDir; d != "" && !filepath.IsAbs(d) && filepath.Clean(d) == "." {
		v.bad("tls.mta_sts_cache_dir", "%q is the working directory: give a directory of its own", d)
	}
}

// validTLSMode reports whether m is one of TLSModes.
func validTLSMode(m string) error {
	for _, x := range TLSModes {
		if m == x {
			return nil
		}
	}
	return errors.New("is not one of opportunistic|opportunistic_no_fallback|required|verified|disabled")
}
