package outcome

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestError(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err       *Error
		text      string
		temporary bool
		code      int
	}{
		{FromReply(PhaseRcpt, &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}),
			"rcpt: 450 4.2.1 mailbox busy", true, 450},
		{FromReply(PhaseDot, &smtp.SMTPError{Code: 554, Message: "no"}), "dot: 554 no", false, 554},
		{Temp(PhaseConnect, smtp.EnhancedCode{4, 4, 1}, context.DeadlineExceeded),
			"connect: context deadline exceeded", true, 451},
		{Perm(PhaseDNS, smtp.EnhancedCode{5, 1, 10}, "null MX"), "dns: null MX", false, 554},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.text {
			t.Errorf("Error() = %q, want %q", got, c.text)
		}
		wrapped := fmt.Errorf("delivering: %w", c.err)
		if IsTemporary(wrapped) != c.temporary {
			t.Errorf("%q: IsTemporary = %v", c.text, !c.temporary)
		}
		if As(wrapped) != c.err {
			t.Errorf("%q: As lost the error", c.text)
		}
		if got := c.err.SMTPError().Code; got != c.code {
			t.Errorf("%q: SMTPError().Code = %d, want %d", c.text, got, c.code)
		}
	}
	if !errors.Is(Temp(PhaseConnect, smtp.EnhancedCode{}, context.Canceled), context.Canceled) {
		t.Error("Temp does not unwrap to its cause")
	}
	if !IsTemporary(errors.New("broken pipe")) || IsTemporary(nil) {
		t.Error("foreign errors must count as temporary, nil as not")
	}
	if EnhancedString(smtp.NoEnhancedCode) != "" || EnhancedString(smtp.EnhancedCode{5, 7, 1}) != "5.7.1" {
		t.Error("EnhancedString")
	}
}
