// Package tlspolicy owns the TLS policy of outbound connections: for a
// destination domain and each of its MX hosts it decides whether STARTTLS
// is tried, required or verified, whether a failed handshake may fall
// back to clear text, and which MX hosts may be used at all, from the
// pair's configured policy (delivery.tls, a shaping scope's tls:), the
// domain's MTA-STS policy (RFC 8461, sts.go and stsfetch.go) and DANE
// (RFC 7672, dane.go, plugged in as Options.DANE). It also names what
// applied for the delivery log (Info) and counts it in metrics.
//
// The strictest source wins: DANE records (when dane is on and the MX host
// has usable ones) over an MTA-STS policy in enforce mode over the
// configured policy. Every policy asks for TLS 1.2 at least.
//
// It must never dial an MX host or speak SMTP (connpool and smtpclient
// do), never fetch an MTA-STS policy from an address mx.Refusal refuses,
// and never allow clear text after a failed handshake except under
// opportunistic: that one exception is Host.Fallback.
package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/outcome"
)

// Mode is a configured TLS policy (config.TLSModes).
type Mode string

// The configured policies.
const (
	Opportunistic           Mode = "opportunistic"
	OpportunisticNoFallback Mode = "opportunistic_no_fallback"
	Required                Mode = "required"
	Verified                Mode = "verified"
	Disabled                Mode = "disabled"
)

// Labels of what applied, besides the modes: Info.Policy and the metrics'
// policy label.
const (
	LabelMTASTS = "mta-sts"
	LabelDANE   = "dane"
)

// Settings are a domain/binding pair's TLS settings, from its shaping.
// The zero Mode is Opportunistic.
type Settings struct {
	Mode   Mode
	MTASTS bool // honour the domain's MTA-STS policy
	DANE   bool // check TLSA records (needs Options.DANE)
}

// DANEFunc looks up an MX host's TLSA records and returns the check that
// the handshake must pass (for tls.Config.VerifyConnection), or nil verify
// when the host is not DANE-protected (no records, or an insecure answer).
// An error means the lookup failed or was bogus: the host is not used.
// DANEChecker makes one from dane.go's DANE.
type DANEFunc func(ctx context.Context, mxHost string) (verify func(tls.ConnectionState) error, err error)

// Options configure an Engine. All fields are optional.
type Options struct {
	// Roots verify certificates under verified and MTA-STS: the system's
	// plus tls.ca_file's (config.Config.Roots). nil is the system's.
	Roots *x509.CertPool
	// STS finds domains' MTA-STS policies; nil = none anywhere.
	STS *STS
	// DANE is the TLSA check; nil = no DANE anywhere.
	DANE DANEFunc
	// Logger gets the tls_policy warnings (MTA-STS testing mode).
	Logger *zap.Logger
	// Metrics registers mtad_tls_deliveries_total and
	// mtad_tls_failures_total; nil registers nothing.
	Metrics prometheus.Registerer
}

// Engine makes the TLS plans of connections. It is safe for concurrent
// use, holds no goroutine, and needs no Close (the STS it was given has
// its own).
type Engine struct {
	opts       Options
	deliveries *prometheus.CounterVec
	failures   *prometheus.CounterVec
}

// New builds an Engine and registers its metrics.
func New(opts Options) (*Engine, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	e := &Engine{opts: opts,
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mtad_tls_deliveries_total",
			Help: "Messages delivered, by the TLS policy that applied and whether the certificate verified."},
			[]string{"policy", "verified"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mtad_tls_failures_total",
			Help: "Connections a TLS policy refused, by policy and reason."},
			[]string{"policy", "reason"}),
	}
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{e.deliveries, e.failures} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("tlspolicy: metrics: %w", err)
			}
		}
	}
	return e, nil
}

// Plan is the TLS plan of one connection attempt to a domain: made once
// before its MX hosts are tried.
type Plan struct {
	e      *Engine
	domain string
	set    Settings
	sts    *STSPolicy // nil when MTA-STS is off or the domain has no policy
}

// Plan looks up what applies to domain under s: its MTA-STS policy when s
// says so (waiting at most the STS's FetchTimeout, and nothing when one is
// cached).
func (e *Engine) Plan(ctx context.Context, domain string, s Settings) *Plan {
	if s.Mode == "" {
		s.Mode = Opportunistic
	}
	p := &Plan{e: e, domain: domain, set: s}
	if s.MTASTS && e != nil && e.opts.STS != nil {
		if sp := e.opts.STS.Lookup(ctx, domain); sp != nil && sp.Mode != STSNone {
			p.sts = sp
		}
	}
	return p
}

// Prefetch makes sure domain's MTA-STS policy is known, waiting for its
// TXT lookup and HTTPS fetch (at most the STS's FetchTimeout) when none
// is cached, so that a session's Plan finds it at once. The scheduler
// calls it on its resolver workers before the domain is granted a slot:
// a fetch that takes seconds then holds no connection slot. Without an
// STS it does nothing.
func (e *Engine) Prefetch(ctx context.Context, domain string) {
	if e != nil && e.opts.STS != nil {
		e.opts.STS.Lookup(ctx, domain)
	}
}

// Mode returns the configured policy the plan started from.
func (p *Plan) Mode() Mode { return p.set.Mode }

// STS returns the domain's MTA-STS policy in force (enforce or testing),
// nil when none.
func (p *Plan) STS() *STSPolicy { return p.sts }

// Permits reports whether MX host may be used: under an MTA-STS policy in
// enforce mode only the hosts it lists. In testing mode an unlisted host
// is used, and a tls_policy warning logged.
func (p *Plan) Permits(host string) bool {
	if p.sts == nil || p.sts.Matches(host) {
		return true
	}
	if p.sts.Mode == STSEnforce {
		return false
	}
	p.warn(host, "MX host not listed in the MTA-STS policy")
	return true
}

// NoPermittedMX is the deferral when an MTA-STS policy in enforce mode
// permits none of the domain's MX hosts.
func (p *Plan) NoPermittedMX(hosts []string) *outcome.Error {
	p.e.fail(LabelMTASTS, "mx_mismatch")
	return &outcome.Error{Phase: outcome.PhaseTLS, Enhanced: smtp.EnhancedCode{4, 7, 5}, Temporary: true,
		Message: fmt.Sprintf("MTA-STS policy of %s (enforce) permits none of its MX hosts (%s; policy mx: %s)",
			p.domain, strings.Join(hosts, ", "), strings.Join(p.sts.MX, ", "))}
}

func (p *Plan) warn(host, reason string) {
	logging.TLSPolicy{Domain: p.domain, MX: host, Policy: LabelMTASTS, Mode: p.sts.Mode, Reason: reason}.Log(p.e.opts.Logger)
}

// Host is the TLS plan for one MX host.
type Host struct {
	// Policy names what applies: a Mode's name, LabelMTASTS or LabelDANE.
	Policy string
	// TryTLS says STARTTLS when offered; Require refuses to go on when
	// it is not offered; Fallback redials in clear text after a failed
	// handshake (opportunistic only); Verify means the handshake itself
	// checks the certificate (a failure is a failed handshake).
	TryTLS, Require, Fallback, Verify bool
	// Config is the client's TLS config; nil when !TryTLS.
	Config *tls.Config

	host    string
	stsTest bool // MTA-STS testing: log a certificate that would fail
	plan    *Plan
}

// Host returns the plan for MX host. The error (a temporary
// *outcome.Error, 4.7.5) means the host must not be used: its DANE lookup
// failed.
func (p *Plan) Host(ctx context.Context, host string) (Host, error) {
	e := p.e
	h := Host{host: host, plan: p}
	if p.set.DANE && e.opts.DANE != nil {
		verify, err := e.opts.DANE(ctx, host)
		if err != nil {
			e.fail(LabelDANE, "tlsa_lookup")
			return h, &outcome.Error{Phase: outcome.PhaseTLS, Enhanced: smtp.EnhancedCode{4, 7, 5}, Temporary: true,
				Message: "DANE: TLSA lookup for " + host + " failed", Err: err}
		}
		if verify != nil {
			h.Policy, h.TryTLS, h.Require, h.Verify = LabelDANE, true, true, true
			// The chain is DANE's to judge (DANE-EE needs no CA at all):
			// Go's own check is off, VerifyConnection does it.
			h.Config = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12,
				InsecureSkipVerify: true, //nolint:gosec // verified by DANE
				VerifyConnection: func(cs tls.ConnectionState) error {
					if err := verify(cs); err != nil {
						return &daneMismatch{err}
					}
					return nil
				}}
			return h, nil
		}
	}
	if p.sts != nil && p.sts.Mode == STSEnforce {
		h.Policy, h.TryTLS, h.Require, h.Verify = LabelMTASTS, true, true, true
		h.Config = e.verifying(host)
		return h, nil
	}
	h.stsTest = p.sts != nil
	h.Policy = string(p.set.Mode)
	switch p.set.Mode {
	case Disabled:
		if h.stsTest {
			p.warn(host, "TLS disabled by configuration for a domain with an MTA-STS policy")
		}
		return h, nil
	case Verified:
		h.TryTLS, h.Require, h.Verify = true, true, true
		h.Config = e.verifying(host)
	case Required:
		h.TryTLS, h.Require = true, true
		h.Config = opportunisticConfig(host)
	case OpportunisticNoFallback:
		h.TryTLS = true
		h.Config = opportunisticConfig(host)
	default:
		h.Policy = string(Opportunistic)
		h.TryTLS, h.Fallback = true, true
		h.Config = opportunisticConfig(host)
	}
	return h, nil
}

func (e *Engine) verifying(host string) *tls.Config {
	return &tls.Config{ServerName: host, RootCAs: e.opts.Roots, MinVersion: tls.VersionTLS12}
}

// opportunisticConfig encrypts without checking the certificate (RFC
// 7435: most MX certificates don't verify, and an unverified session
// still beats clear text); whether it would have verified is found after
// the handshake, for the log (Info.Verified).
func opportunisticConfig(host string) *tls.Config {
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // see above
}

// Failure turns a failed TLS step under h into the deferral it causes (a
// temporary *outcome.Error in phase tls naming the policy: 4.7.4 when
// STARTTLS was not offered or refused, 4.7.5 for a handshake or
// certificate that failed), counts it, and returns it; err is what the
// client said.
func (h Host) Failure(err error, notOffered bool) *outcome.Error {
	reason, enh := "handshake", smtp.EnhancedCode{4, 7, 5}
	what := "TLS handshake with " + h.host + " failed"
	switch {
	case notOffered:
		reason, enh = "starttls_not_offered", smtp.EnhancedCode{4, 7, 4}
		what = h.host + " does not offer STARTTLS"
	case isCertError(err):
		reason = "certificate"
		what = "the certificate of " + h.host + " did not verify"
	}
	h.plan.e.fail(h.Policy, reason)
	by := "TLS policy " + h.Policy + " requires it"
	switch h.Policy {
	case LabelMTASTS:
		by = "the MTA-STS policy of " + h.plan.domain + " (enforce) requires it"
	case LabelDANE:
		by = "the DANE (TLSA) records of " + h.host + " require it"
	}
	return &outcome.Error{Phase: outcome.PhaseTLS, Enhanced: enh, Temporary: true,
		Message: what + ", and " + by, Err: err}
}

// IsPolicyFailure reports whether err (a connection's failure, wrapped or
// not) is a deferral a TLS policy made: a temporary error in phase tls
// with no SMTP reply code and 4.7.4 or 4.7.5, as Host.Failure, Plan.Host
// and Plan.NoPermittedMX make them. Such a failure will not go away on the
// next try within seconds (the receiver's TLS or DNS must change), so the
// scheduler delays the mail at once rather than retrying it every tick.
func IsPolicyFailure(err error) bool {
	e := outcome.As(err)
	return e != nil && e.Temporary && e.Phase == outcome.PhaseTLS && e.Code == 0 &&
		(e.Enhanced == smtp.EnhancedCode{4, 7, 4} || e.Enhanced == smtp.EnhancedCode{4, 7, 5})
}

// daneMismatch marks a failure of the DANE check, so that it is told
// from a handshake that failed for other reasons.
type daneMismatch struct{ err error }

func (d *daneMismatch) Error() string { return "DANE: " + d.err.Error() }
func (d *daneMismatch) Unwrap() error { return d.err }

func isCertError(err error) bool {
	var dm *daneMismatch
	if errors.As(err, &dm) {
		return true
	}
	var ce *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	return errors.As(err, &ce) || errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ie)
}

func (e *Engine) fail(policy, reason string) {
	if e != nil {
		e.failures.WithLabelValues(policy, reason).Inc()
	}
}

// Info is what TLS a delivery had, for the delivered and deferred records.
type Info struct {
	Version  string // "TLSv1.3"; "" in clear text
	Cipher   string // "TLS_AES_128_GCM_SHA256"
	Verified bool   // the certificate verifies for the MX name (checked or not)
	Policy   string // what applied: a Mode's name, "mta-sts" or "dane"
}

// String is the record's tls field: "TLSv1.3 TLS_AES_128_GCM_SHA256
// verified policy=mta-sts", "TLSv1.2 ... unverified policy=opportunistic",
// "none policy=opportunistic"; "" for the zero Info (nothing attempted).
func (i Info) String() string {
	if i.Policy == "" && i.Version == "" {
		return ""
	}
	if i.Version == "" {
		return "none policy=" + i.Policy
	}
	v := "unverified"
	if i.Verified {
		v = "verified"
	}
	return i.Version + " " + i.Cipher + " " + v + " policy=" + i.Policy
}

// Info describes a session to h's host: state is its TLS state, nil in
// clear text. When the handshake did not check the certificate, it is
// checked here against the roots for the log (and, under an MTA-STS
// policy in testing mode, a failure is logged as a tls_policy warning).
func (h Host) Info(state *tls.ConnectionState) Info {
	in := Info{Policy: h.Policy}
	if state == nil {
		if h.stsTest {
			h.plan.warn(h.host, "delivered without TLS")
		}
		return in
	}
	in.Version = tls.VersionName(state.Version)
	in.Cipher = tls.CipherSuiteName(state.CipherSuite)
	in.Verified = h.Verify || h.plan.e.chainVerifies(state, h.host)
	if h.stsTest && !in.Verified {
		h.plan.warn(h.host, "certificate does not verify")
	}
	return in
}

func (e *Engine) chainVerifies(state *tls.ConnectionState, host string) bool {
	if len(state.PeerCertificates) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range state.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := state.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: host, Roots: e.opts.Roots, Intermediates: inter})
	return err == nil
}

// Delivered counts a message delivered under in.
func (e *Engine) Delivered(in Info) {
	if e == nil || in.Policy == "" {
		return
	}
	v := "false"
	if in.Verified {
		v = "true"
	}
	e.deliveries.WithLabelValues(in.Policy, v).Inc()
}
