package tlspolicy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// TestIsPolicyFailure: the deferrals the engine makes are policy failures,
// wrapped or not; a remote reply in phase tls, a connection failure and a
// permanent error are not.
func TestIsPolicyFailure(t *testing.T) {
	t.Parallel()
	e, err := New(Options{DANE: func(context.Context, string) (func(tls.ConnectionState) error, error) {
		return nil, errors.New("SERVFAIL")
	}})
	if err != nil {
		t.Fatal(err)
	}
	p := e.Plan(context.Background(), "example.test", Settings{Mode: Required, DANE: true})
	_, daneErr := p.Host(context.Background(), "mx.example.test")
	h := Host{Policy: string(Required), host: "mx.example.test", plan: p}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"not offered", h.Failure(errors.New("no STARTTLS"), true), true},
		{"handshake", h.Failure(errors.New("handshake"), false), true},
		{"wrapped", fmt.Errorf("every MX failed, last: %w", h.Failure(errors.New("x"), false)), true},
		{"dane lookup", daneErr, true},
		{"454 reply", &outcome.Error{Phase: outcome.PhaseTLS, Code: 454, Enhanced: smtp.EnhancedCode{4, 7, 0}, Temporary: true}, false},
		{"refused", outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, errors.New("refused")), false},
		{"permanent", &outcome.Error{Phase: outcome.PhaseTLS, Enhanced: smtp.EnhancedCode{5, 7, 5}}, false},
		{"plain", errors.New("x"), false},
		{"nil", nil, false},
	} {
		if got := IsPolicyFailure(tc.err); got != tc.want {
			t.Errorf("%s: IsPolicyFailure(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
