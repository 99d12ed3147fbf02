// Package outcome is mtad's one vocabulary for the result of talking to a
// remote side: the SMTP reply code, the enhanced status code, whether the
// failure is temporary or permanent, the phase of the exchange it happened in,
// and the underlying error (an errno, a timeout) when there was no reply.
//
// Every package that produces a delivery result (mx, smtpclient, connpool,
// scheduler) returns or wraps an *Error, so the scheduler decides retry or
// bounce from one type and the delivery log records the same fields for all.
// It must never import another mtad package.
package outcome

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"
)

// Phase names the step of a delivery attempt at which a result was produced.
type Phase string

// The phases of a delivery attempt, in the order they happen.
const (
	PhaseDNS      Phase = "dns"
	PhaseConnect  Phase = "connect"
	PhaseGreeting Phase = "greeting"
	PhaseEHLO     Phase = "ehlo"
	PhaseTLS      Phase = "tls"
	PhaseMail     Phase = "mail"
	PhaseRcpt     Phase = "rcpt"
	PhaseData     Phase = "data"
	PhaseDot      Phase = "dot"
	PhaseQuit     Phase = "quit"
	PhaseQueue    Phase = "queue" // decided locally: expiry, cancellation, shutdown
)

// Error is a delivery result that is not a success. Code is 0 when the remote
// side never replied (a refused connection, a timeout); Err then says why.
type Error struct {
	Phase     Phase
	Code      int
	Enhanced  smtp.EnhancedCode
	Message   string
	Temporary bool
	Err       error
	// Local marks a failure mtad decided itself although it carries a
	// reply code (the client's own 553 for a receiver without SMTPUTF8):
	// response rules and bounce classes, written for what receivers say,
	// treat it as mtad's.
	Local bool
}

func (e *Error) Error() string {
	var s string
	switch {
	case e.Code != 0 && e.Enhanced != (smtp.EnhancedCode{}) && e.Enhanced != smtp.NoEnhancedCode:
		s = fmt.Sprintf("%s: %d %s %s", e.Phase, e.Code, EnhancedString(e.Enhanced), e.Message)
	case e.Code != 0:
		s = fmt.Sprintf("%s: %d %s", e.Phase, e.Code, e.Message)
	default:
		s = fmt.Sprintf("%s: %s", e.Phase, e.Message)
	}
	// Temp copies the cause into Message; don't print it twice.
	if e.Err != nil && e.Err.Error() != e.Message {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// SMTPError returns the result as go-smtp's reply type, for passing a remote
// reply on to an injecting client or into a DSN.
func (e *Error) SMTPError() *smtp.SMTPError {
	code := e.Code
	if code == 0 {
		code = 451
		if !e.Temporary {
			code = 554
		}
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: e.Enhanced, Message: e.Message}
}

// FromReply builds an Error from a remote reply in the given phase; 4xx
// replies are temporary, everything else is permanent.
func FromReply(phase Phase, r *smtp.SMTPError) *Error {
	return &Error{
		Phase:     phase,
		Code:      r.Code,
		Enhanced:  r.EnhancedCode,
		Message:   r.Message,
		Temporary: r.Code/100 == 4,
	}
}

// Temp builds a temporary local error (no remote reply) for the phase.
func Temp(phase Phase, enh smtp.EnhancedCode, err error) *Error {
	return &Error{Phase: phase, Enhanced: enh, Message: errMsg(err), Temporary: true, Err: err}
}

// Perm builds a permanent local error (no remote reply) for the phase.
func Perm(phase Phase, enh smtp.EnhancedCode, msg string) *Error {
	return &Error{Phase: phase, Enhanced: enh, Message: msg}
}

// As returns the *Error in err's chain, or nil.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// IsTemporary reports whether err should be retried. Errors that are not an
// *Error (a broken pipe, a context deadline) are taken as temporary: mtad
// never bounces mail because of its own or the network's trouble.
func IsTemporary(err error) bool {
	if e := As(err); e != nil {
		return e.Temporary
	}
	return err != nil
}

// EnhancedString formats an enhanced status code as "x.y.z", or "" when unset.
func EnhancedString(c smtp.EnhancedCode) string {
	if c == (smtp.EnhancedCode{}) || c == smtp.NoEnhancedCode {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

func errMsg(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
