package mx

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// Kind classifies why a lookup found nowhere to deliver. The connection pool
// maps it to a CONN_ERR code; the scheduler needs only the wrapped
// *outcome.Error (temporary or not, enhanced code).
type Kind int

// The kinds of lookup failure. The zero Kind is what KindOf returns for an
// error that did not come from this package.
const (
	// KindTemp: the DNS could not answer now (SERVFAIL, REFUSED, timeout,
	// network error, cancelled context). Temporary, 4.4.3.
	KindTemp Kind = iota + 1
	// KindNXDomain: the domain does not exist, or exists with neither MX
	// nor A/AAAA records (nothing to deliver to). Permanent, 5.1.2.
	KindNXDomain
	// KindNullMX: the domain publishes a null MX (RFC 7505): it accepts no
	// mail. Permanent, 5.1.10.
	KindNullMX
	// KindNoAddress: the domain has MX records but none of their hosts has
	// an address (or a static route's host name has none). Temporary, 4.4.4:
	// a domain whose MX host is being renumbered deserves a retry.
	KindNoAddress
	// KindProhibitedIP: every address of every MX host is one mtad never
	// connects to (loopback, private, shared, link-local, multicast,
	// documentation, reserved: see prohibited.go) and none is in the
	// allowed networks.
	// Permanent, 5.4.4: a domain pointing its MX at 127.0.0.1 is saying
	// "no mail here" (the convention before RFC 7505), and retrying it for
	// days only delays the bounce.
	KindProhibitedIP
	// KindBadDomain: the domain is neither a valid host name (after
	// conversion of a U-label name to its A-label) nor a valid address
	// literal. Permanent, 5.1.2.
	KindBadDomain
)

var kindNames = [...]string{
	0:                "none",
	KindTemp:         "temporary",
	KindNXDomain:     "nxdomain",
	KindNullMX:       "null-mx",
	KindNoAddress:    "no-address",
	KindProhibitedIP: "prohibited-ip",
	KindBadDomain:    "bad-domain",
}

// String returns a short stable name for the kind, fit for logs and metrics.
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Temporary reports whether a failure of this kind should be retried.
func (k Kind) Temporary() bool {
	switch k {
	case KindTemp, KindNoAddress:
		return true
	}
	return false
}

func (k Kind) enhanced() smtp.EnhancedCode {
	switch k {
	case KindNXDomain, KindBadDomain:
		return smtp.EnhancedCode{5, 1, 2}
	case KindNullMX:
		return smtp.EnhancedCode{5, 1, 10}
	case KindNoAddress:
		return smtp.EnhancedCode{4, 4, 4}
	case KindProhibitedIP:
		return smtp.EnhancedCode{5, 4, 4}
	}
	return smtp.EnhancedCode{4, 4, 3}
}

// Error is every error Lookup returns. It wraps an *outcome.Error with
// Phase outcome.PhaseDNS (so outcome.As and outcome.IsTemporary work on it)
// whose Err, when set, is the underlying cause (a timeout, a context error).
type Error struct {
	Kind    Kind
	Domain  string // the domain looked up, normalised
	Outcome *outcome.Error
}

func newError(kind Kind, domain, msg string, cause error) *Error {
	return &Error{
		Kind:   kind,
		Domain: domain,
		Outcome: &outcome.Error{
			Phase:     outcome.PhaseDNS,
			Enhanced:  kind.enhanced(),
			Message:   msg,
			Temporary: kind.Temporary(),
			Err:       cause,
		},
	}
}

func (e *Error) Error() string {
	return fmt.Sprintf("mx lookup %s: %s", e.Domain, e.Outcome.Error())
}

// Unwrap returns the *outcome.Error.
func (e *Error) Unwrap() error { return e.Outcome }

// clone returns a copy a caller may change without touching the cache.
func (e *Error) clone() *Error {
	c := *e
	o := *e.Outcome
	c.Outcome = &o
	return &c
}

// KindOf returns the Kind of the *Error in err's chain, or 0 ("none") when
// there is none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
