package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/mtad/mtad/internal/outcome"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func reply(phase outcome.Phase, code int, enh string, text string) *outcome.Error {
	e := &outcome.Error{Phase: phase, Code: code, Message: text, Temporary: code/100 == 4}
	if enh != "" {
		if _, err := fmt.Sscanf(enh, "%d.%d.%d", &e.Enhanced[0], &e.Enhanced[1], &e.Enhanced[2]); err != nil {
			panic(err)
		}
	} else {
		e.Enhanced = smtp.NoEnhancedCode
	}
	return e
}

// TestDefaultRules: every built-in rule is hit by a real receiver's reply
// (texts as Gmail, Microsoft, Yahoo, Postfix and Exchange send them), and
// the rule list has no rule that no reply here reaches.
func TestDefaultRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rule string // the built-in rule expected to decide
		e    *outcome.Error
		want BounceClass
	}{
		{"transient-block", reply(outcome.PhaseMail, 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"), ClassTransientFailure},
		{"transient-block", reply(outcome.PhaseData, 421, "4.7.28", "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address."), ClassTransientFailure},
		{"transient-block", reply(outcome.PhaseRcpt, 450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time."), ClassTransientFailure},
		{"transient-block", reply(outcome.PhaseMail, 451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation."), ClassTransientFailure},
		{"greylisting", reply(outcome.PhaseRcpt, 450, "4.7.1", "<bob@example.net>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.net.html"), ClassSoftBounce},
		{"mailbox-full", reply(outcome.PhaseRcpt, 552, "5.2.2", "The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp"), ClassMailboxFull},
		{"mailbox-full", reply(outcome.PhaseRcpt, 452, "4.2.2", "The email account that you tried to reach is over quota."), ClassMailboxFull},
		{"mailbox-full-text", reply(outcome.PhaseData, 552, "", "Requested mail action aborted: exceeded storage allocation"), ClassMailboxFull},
		{"too-large", reply(outcome.PhaseData, 552, "5.3.4", "Your message exceeded Google's message size limits. Please visit https://support.google.com/mail/?p=MaxSizeError"), ClassTooLarge},
		{"too-large-length", reply(outcome.PhaseData, 552, "5.2.3", "Message length exceeds administrative limit"), ClassTooLarge},
		{"too-large-text", reply(outcome.PhaseData, 552, "", "Message size exceeds fixed maximum message size"), ClassTooLarge},
		{"timeout", reply(outcome.PhaseData, 554, "5.4.7", "Delivery expired (message too old)"), ClassTimeout},
		{"timeout-text", reply(outcome.PhaseData, 421, "4.4.2", "mx.example.net Error: timeout exceeded"), ClassTimeout},
		{"bad-sender", reply(outcome.PhaseMail, 553, "5.1.7", "The sender address <a@b> is not a valid RFC-5321 address."), ClassMailBlock},
		{"bad-sender-system", reply(outcome.PhaseMail, 553, "5.1.8", "<alice@nowhere.example>: Sender address rejected: Domain not found"), ClassMailBlock},
		{"sender-rejected", reply(outcome.PhaseMail, 550, "", "Sender verify failed"), ClassMailBlock},
		{"dns-bad-system", reply(outcome.PhaseRcpt, 550, "5.1.2", "Host unknown: bad destination system address"), ClassDNSFailure},
		{"dns-directory", reply(outcome.PhaseRcpt, 451, "4.4.3", "Directory server failure"), ClassDNSFailure},
		{"dns-text", reply(outcome.PhaseRcpt, 554, "", "Host or domain name not found. Name service error for name=example.invalid type=MX"), ClassDNSFailure},
		{"relay-denied", reply(outcome.PhaseRcpt, 554, "5.7.1", "<bob@example.org>: Relay access denied"), ClassRelayDenied},
		{"relay-denied", reply(outcome.PhaseRcpt, 550, "5.7.54", "SMTP; Unable to relay recipient in non-accepted domain"), ClassRelayDenied},
		{"account-disabled", reply(outcome.PhaseRcpt, 550, "5.2.1", "The email account that you tried to reach is disabled."), ClassInvalidRecipient},
		{"invalid-recipient", reply(outcome.PhaseRcpt, 550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces."), ClassInvalidRecipient},
		{"invalid-recipient", reply(outcome.PhaseRcpt, 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"), ClassInvalidRecipient},
		{"invalid-recipient-text", reply(outcome.PhaseRcpt, 550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281)"), ClassInvalidRecipient},
		{"invalid-recipient-text", reply(outcome.PhaseRcpt, 550, "", "<bob@example.net>: User unknown in virtual mailbox table"), ClassInvalidRecipient},
		{"prohibited-attachment", reply(outcome.PhaseData, 552, "5.7.0", "This message was blocked because its content presents a potential security issue."), ClassProhibitedAttachment},
		{"spam-content", reply(outcome.PhaseData, 550, "5.7.1", "[192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked."), ClassSpamContent},
		{"spam-block", reply(outcome.PhaseMail, 550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."), ClassSpamBlock},
		{"spam-block", reply(outcome.PhaseMail, 550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]."), ClassSpamBlock},
		{"spam-block", reply(outcome.PhaseGreeting, 553, "5.7.1", "[BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list"), ClassSpamBlock},
		{"spam-block", reply(outcome.PhaseMail, 553, "5.7.2", "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed."), ClassSpamBlock},
		{"spam-block", reply(outcome.PhaseData, 550, "5.7.1", "This message is likely suspicious due to the very low reputation of the sending IP address."), ClassSpamBlock},
		{"policy-block", reply(outcome.PhaseData, 550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM."), ClassMailBlock},
		{"policy-block", reply(outcome.PhaseData, 554, "5.7.9", "Message not accepted for policy reasons."), ClassMailBlock},
		{"policy-block-text", reply(outcome.PhaseGreeting, 554, "", "mx.example.net: connection refused by policy"), ClassMailBlock},
		{"soft-mailbox", reply(outcome.PhaseRcpt, 450, "4.2.1", "Mailbox temporarily disabled"), ClassSoftBounce},
		{"", reply(outcome.PhaseRcpt, 451, "4.3.0", "Temporary local problem"), ClassTransientFailure},
		{"", reply(outcome.PhaseData, 554, "5.6.0", "Malformed message"), ClassGeneric},
	}
	c := DefaultClassifier()
	hit := map[string]bool{}
	for _, tt := range tests {
		if got := c.Classify(tt.e); got != tt.want {
			t.Errorf("%s: Classify(%d %s %q) = %d (%v), want %d (%v)", tt.rule, tt.e.Code,
				outcome.EnhancedString(tt.e.Enhanced), tt.e.Message, got, got, tt.want, tt.want)
		}
		// The rule that decides is the first built-in one matching alone.
		first := ""
		if r := c.first(tt.e); r != nil {
			first = r.name
		}
		if first != tt.rule {
			t.Errorf("%q decided by rule %q, want %q", tt.e.Message, first, tt.rule)
		}
		hit[first] = true
	}
	rs, err := parseRules("built-in", defaultsYAML)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if !hit[r.Name] {
			t.Errorf("built-in rule %q is hit by no reply in this test", r.Name)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

// TestLocal: mtad's own failures are classified by phase and enhanced
// code; a text that a remote rule would match changes nothing.
func TestLocal(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}
	tests := []struct {
		name string
		e    *outcome.Error
		want BounceClass
	}{
		{"nxdomain", outcome.Perm(outcome.PhaseDNS, smtp.EnhancedCode{5, 1, 2}, "no such domain: spamhaus blocked relay denied"), ClassDNSFailure},
		{"servfail", outcome.Temp(outcome.PhaseDNS, smtp.EnhancedCode{4, 4, 3}, errors.New("SERVFAIL")), ClassDNSFailure},
		{"no address", outcome.Temp(outcome.PhaseDNS, smtp.EnhancedCode{4, 4, 4}, errors.New("no address")), ClassDNSFailure},
		{"null mx", outcome.Perm(outcome.PhaseDNS, smtp.EnhancedCode{5, 1, 10}, "null MX"), ClassInvalidRecipient},
		{"connect timeout", outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, dial), ClassTimeout},
		{"connect deadline", outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, context.DeadlineExceeded), ClassTimeout},
		{"refused", outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, errors.New("connection refused: mailbox full")), ClassTransientFailure},
		{"expired", outcome.Perm(outcome.PhaseQueue, smtp.EnhancedCode{4, 4, 7}, "message expired in the queue"), ClassTimeout},
		{"bad domain", outcome.Perm(outcome.PhaseQueue, smtp.EnhancedCode{5, 1, 2}, "bad destination domain"), ClassInvalidRecipient},
		{"no domain", outcome.Perm(outcome.PhaseQueue, smtp.EnhancedCode{5, 1, 3}, "recipient address has no domain"), ClassInvalidRecipient},
		{"body unreadable", outcome.Temp(outcome.PhaseQueue, smtp.EnhancedCode{4, 3, 0}, errors.New("spam content")), ClassTransientFailure},
		{"policy", outcome.Perm(outcome.PhaseQueue, smtp.EnhancedCode{5, 7, 1}, "refused by a hook"), ClassAdminFailure},
		{"read timeout", outcome.Temp(outcome.PhaseData, smtp.EnhancedCode{4, 4, 2}, os.ErrDeadlineExceeded), ClassTimeout},
		{"broken", outcome.Temp(outcome.PhaseEHLO, smtp.EnhancedCode{4, 4, 2}, errors.New("EOF")), ClassTransientFailure},
		{"too big for SIZE", outcome.Perm(outcome.PhaseMail, smtp.EnhancedCode{5, 3, 4}, "message too big"), ClassTooLarge},
		{"bad rcpt syntax", outcome.Perm(outcome.PhaseRcpt, smtp.EnhancedCode{5, 1, 3}, "invalid recipient address"), ClassInvalidRecipient},
		{"bad sender", outcome.Perm(outcome.PhaseMail, smtp.EnhancedCode{5, 1, 7}, "invalid sender address"), ClassAdminFailure},
		{"recovered, nothing known", &outcome.Error{Message: "something", Temporary: true}, ClassUndetermined},
		{"recovered nxdomain", &outcome.Error{Enhanced: smtp.EnhancedCode{5, 1, 2}, Message: "no such domain"}, ClassDNSFailure},
	}
	c := DefaultClassifier()
	for _, tt := range tests {
		if got := c.Classify(tt.e); got != tt.want {
			t.Errorf("%s: Classify(%v) = %d (%v), want %d (%v)", tt.name, tt.e, got, got, tt.want, tt.want)
		}
	}
	if got := c.Classify(nil); got != 0 {
		t.Errorf("Classify(nil) = %d, want 0", got)
	}
}

// TestLocalIgnoresFileRules: an operator's catch-all text rule does not
// reach mtad's own failures.
func TestLocalIgnoresFileRules(t *testing.T) {
	t.Parallel()
	c, err := NewClassifier([]BounceRule{{Name: "all", Text: ".", Class: ClassSpamBlock}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Classify(outcome.Perm(outcome.PhaseDNS, smtp.EnhancedCode{5, 1, 2}, "no such domain")); got != ClassDNSFailure {
		t.Errorf("nxdomain = %d, want %d", got, ClassDNSFailure)
	}
	if got := c.Classify(reply(outcome.PhaseRcpt, 550, "5.1.1", "no such user")); got != ClassSpamBlock {
		t.Errorf("remote reply = %d, want the file's %d", got, ClassSpamBlock)
	}
}

func TestClassifyExpired(t *testing.T) {
	t.Parallel()
	c := DefaultClassifier()
	tests := []struct {
		last *outcome.Error
		want BounceClass
	}{
		{nil, ClassTimeout},
		{reply(outcome.PhaseRcpt, 421, "4.7.0", "[TSS04] temporarily deferred"), ClassTimeout},
		{reply(outcome.PhaseRcpt, 451, "", "try later"), ClassTimeout},
		{reply(outcome.PhaseRcpt, 452, "4.2.2", "mailbox full"), ClassMailboxFull},
		{outcome.Temp(outcome.PhaseDNS, smtp.EnhancedCode{4, 4, 3}, errors.New("SERVFAIL")), ClassDNSFailure},
		{outcome.Temp(outcome.PhaseConnect, smtp.EnhancedCode{4, 4, 1}, errors.New("refused")), ClassTimeout},
	}
	for _, tt := range tests {
		if got := c.ClassifyExpired(tt.last); got != tt.want {
			t.Errorf("ClassifyExpired(%v) = %d, want %d", tt.last, got, tt.want)
		}
	}
}

// TestFilePrecedence: a file's rules come before the built-in ones, in
// their order, and the built-in ones still decide what they do not match.
func TestFilePrecedence(t *testing.T) {
	t.Parallel()
	path := writeFile(t, `
rules:
  - name: mimecast-block
    code: 550
    text: 'Envelope blocked'
    class: 51
  - name: gmail-nouser-as-block
    enhanced: "5.1.1"
    text: 'does not exist'
    class: 50
  - name: later-never-wins
    enhanced: "5.1.1"
    class: 22
`)
	c, err := LoadClassifier(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		e    *outcome.Error
		want BounceClass
	}{
		{reply(outcome.PhaseRcpt, 550, "", "Envelope blocked - User Entry - https://community.mimecast.com/docs/DOC-1369#550"), ClassSpamBlock},
		{reply(outcome.PhaseRcpt, 550, "5.1.1", "The email account that you tried to reach does not exist."), ClassMailBlock},
		{reply(outcome.PhaseRcpt, 550, "5.1.1", "user unknown"), ClassMailboxFull},
		{reply(outcome.PhaseRcpt, 550, "5.7.1", "Relay access denied"), ClassRelayDenied},
	}
	for _, tt := range tests {
		if got := c.Classify(tt.e); got != tt.want {
			t.Errorf("Classify(%q) = %d, want %d", tt.e.Message, got, tt.want)
		}
	}
	if d, err := LoadClassifier(""); err != nil || d.Classify(tests[1].e) != ClassInvalidRecipient {
		t.Errorf(`LoadClassifier("") = %v, %v: want the built-in rules`, d, err)
	}
}

// TestShippedFile: configs/bounce-classes.yaml loads.
func TestShippedFile(t *testing.T) {
	t.Parallel()
	if _, err := LoadClassifier(filepath.Join("..", "..", "configs", "bounce-classes.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestBadFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"malformed", "rules:\n  - code: 550\n    class: 10\n  - code: \"550\n", "yaml: line 4"},
		{"not a mapping", "- code: 550\n", "line 1: the file must be a mapping"},
		{"unknown top", "rule:\n  - code: 550\n", `line 1: rule: unknown key`},
		{"rules not a list", "rules: 5\n", "line 1: rules: must be a list"},
		{"rule not a mapping", "rules:\n  - 550\n", "line 2: rule 1: must be a mapping"},
		{"unknown key", "rules:\n  - code: 550\n    clas: 10\n", `line 3: rule 1: clas: unknown key`},
		{"missing class", "rules:\n  - name: x\n    code: 550\n", `line 2: rule 1: class: missing`},
		{"class not a number", "rules:\n  - code: 550\n    class: spam\n", `line 3: rule 1: class: "spam" is not a number`},
		{"class unknown", "rules:\n  - code: 550\n    class: 55\n", `line 3: rule 1: class: 55 is not a bounce class`},
		{"bad code", "rules:\n  - code: 5500\n    class: 10\n", `line 2: rule 1: code: "5500" is not a reply code pattern`},
		{"bad code letter", "rules:\n  - code: 5y0\n    class: 10\n", `line 2: rule 1: code: "5y0"`},
		{"bad enhanced", "rules:\n  - enhanced: 5.1\n    class: 10\n", `line 2: rule 1: enhanced: "5.1" is not an enhanced code pattern`},
		{"bad enhanced class", "rules:\n  - enhanced: 3.1.1\n    class: 10\n", `line 2: rule 1: enhanced: "3.1.1"`},
		{"bad regex", "rules:\n  - name: n\n    text: 'a(b'\n    class: 10\n", `line 3: rule 1 ("n"): text: error parsing regexp`},
		{"empty rule", "rules:\n  - name: n\n    class: 10\n", `line 2: rule 1 ("n"): needs at least one of code, enhanced, text`},
		{"twice", "rules:\n  - code: 550\n    code: 551\n    class: 10\n", `line 3: rule 1: code: given twice`},
		{"list value", "rules:\n  - code: [550]\n    class: 10\n", `line 2: rule 1: code: must be a single value`},
		{"second rule", "rules:\n  - code: 550\n    class: 10\n  - code: 551\n    class: 0\n", `line 5: rule 2: class: 0 is not a bounce class`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, tt.yaml)
			_, err := LoadClassifier(path)
			if err == nil {
				t.Fatalf("Load accepted %q", tt.yaml)
			}
			if want := "bounce classes file " + path + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
	if _, err := LoadClassifier(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "bounce classes file") {
		t.Errorf("missing file: %v", err)
	}
	if c, err := LoadClassifier(writeFile(t, "")); err != nil || c == nil {
		t.Errorf("empty file: %v", err)
	}
}

// TestNewErrors: rules given in Go are checked the same way.
func TestNewErrors(t *testing.T) {
	t.Parallel()
	_, err := NewClassifier([]BounceRule{{Name: "ok", Code: "550", Class: 10}, {Name: "bad", Text: "(", Class: 10}})
	if err == nil || !strings.Contains(err.Error(), `rule 2 ("bad"): text:`) {
		t.Errorf("New = %v", err)
	}
}

func TestClassNames(t *testing.T) {
	t.Parallel()
	if len(BounceClasses()) != 20 {
		t.Errorf("%d classes, want Momentum's 20", len(BounceClasses()))
	}
	for _, c := range BounceClasses() {
		if !c.Valid() || strings.HasPrefix(c.String(), "class ") {
			t.Errorf("class %d has no name", int(c))
		}
	}
	if ClassSpamBlock.String() != "Spam Block" || BounceClass(7).Valid() || BounceClass(7).String() != "class 7" {
		t.Errorf("names: %v %v %v", ClassSpamBlock, BounceClass(7).Valid(), BounceClass(7))
	}
}

func writeFile(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "classes.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// BenchmarkClassify: the cost per failed recipient of a reply that walks
// most of the built-in rules (a spam block), and of a local failure.
func BenchmarkClassify(b *testing.B) {
	c := DefaultClassifier()
	remote := reply(outcome.PhaseMail, 550, "5.7.606", "Access denied, banned sending IP [192.0.2.1].")
	dns := outcome.Perm(outcome.PhaseDNS, smtp.EnhancedCode{5, 1, 2}, "no such domain")
	b.Run("remote", func(b *testing.B) {
		for b.Loop() {
			if c.Classify(remote) != ClassSpamBlock {
				b.Fatal("misclassified")
			}
		}
	})
	b.Run("local", func(b *testing.B) {
		for b.Loop() {
			if c.Classify(dns) != ClassDNSFailure {
				b.Fatal("misclassified")
			}
		}
	})
}
