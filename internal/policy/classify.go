package policy

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"github.com/mtad/mtad/internal/outcome"
)

// BounceRule maps remote replies to a class. Each of Code, Enhanced and Text is
// optional, at least one is given, and all that are given must match.
type BounceRule struct {
	// Name labels the rule in errors; optional.
	Name string
	// Code is the reply code, three characters each a digit or "x":
	// "550", "55x", "5xx".
	Code string
	// Enhanced is the enhanced status code, three parts each a number or
	// "*": "5.1.1", "5.7.*", "*.2.2". A reply without one never matches.
	Enhanced string
	// Text is a regular expression (RE2 syntax) searched for in the reply
	// text, case-insensitively.
	Text  string
	Class BounceClass
}

// rule is a BounceRule compiled.
type rule struct {
	name  string
	code  [3]int // -1 = any digit
	enh   [3]int // -1 = any number
	re    *regexp.Regexp
	class BounceClass

	hasCode, hasEnh bool
}

// Classifier classifies delivery results. It is immutable and safe for
// concurrent use; a reload builds a new one.
type Classifier struct {
	rules []rule
}

//go:embed defaults.yaml
var defaultsYAML []byte

// builtin is the built-in rules compiled once per process; a test proves
// they compile, so the error is never seen in a build that passed them.
var builtin = sync.OnceValues(func() ([]rule, error) {
	rs, err := parseRules("built-in rules", defaultsYAML)
	if err != nil {
		return nil, err
	}
	return compileAll("built-in rules", rs)
})

// Default returns the classifier with the built-in rules only.
func DefaultClassifier() *Classifier {
	c, err := NewClassifier(nil)
	if err != nil {
		panic(err) // the embedded rules are tested: unreachable
	}
	return c
}

// New compiles rules, which come before the built-in ones.
func NewClassifier(rules []BounceRule) (*Classifier, error) {
	return newClassifier("rules", located(rules))
}

func newClassifier(src string, rules []locatedRule) (*Classifier, error) {
	b, err := builtin()
	if err != nil {
		return nil, err
	}
	own, err := compileAll(src, rules)
	if err != nil {
		return nil, err
	}
	all := make([]rule, 0, len(own)+len(b))
	return &Classifier{rules: append(append(all, own...), b...)}, nil
}

// Load reads a rules file (see configs/bounce-classes.yaml) and returns a
// classifier with its rules before the built-in ones; path "" is the
// built-in rules alone. Every error names the file, and for a bad rule its
// line, its index and the key at fault.
func LoadClassifier(path string) (*Classifier, error) {
	if path == "" {
		return NewClassifier(nil)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bounce classes file: %w", err)
	}
	src := "bounce classes file " + path
	rs, err := parseRules(src, data)
	if err != nil {
		return nil, err
	}
	return newClassifier(src, rs)
}

// Classify returns the class of a failed result; nil (a success) is 0.
// mtad's own failures — phase dns, connect or queue, or no reply code —
// are classified by phase and enhanced code, never by the rules; a reply
// by the first rule that matches, else 70 for a 4xx, 40 for a 5xx and 1
// for anything else.
func (c *Classifier) Classify(e *outcome.Error) BounceClass {
	if e == nil {
		return 0
	}
	if local(e) {
		return classifyLocal(e)
	}
	if r := c.first(e); r != nil {
		return r.class
	}
	switch e.Code / 100 {
	case 4:
		return ClassTransientFailure
	case 5:
		return ClassGeneric
	}
	return ClassUndetermined
}

// ClassifyExpired returns the class of a recipient that expired after last
// kept it waiting (nil when nothing is known of it): 24 (Timeout), unless
// last says more than "try again later" (a mailbox full, a DNS failure, a
// block), which is then the class.
func (c *Classifier) ClassifyExpired(last *outcome.Error) BounceClass {
	switch k := c.Classify(last); k {
	case 0, ClassUndetermined, ClassTransientFailure, ClassSoftBounce:
		return ClassTimeout
	default:
		return k
	}
}

// first returns the first rule matching the reply e, or nil.
func (c *Classifier) first(e *outcome.Error) *rule {
	code := [3]int{e.Code / 100 % 10, e.Code / 10 % 10, e.Code % 10}
	enh, hasEnh := e.Enhanced, e.Enhanced != (smtp.EnhancedCode{}) && e.Enhanced != smtp.NoEnhancedCode
	for i := range c.rules {
		r := &c.rules[i]
		if r.hasCode && !match3(r.code, code) {
			continue
		}
		if r.hasEnh && (!hasEnh || !match3(r.enh, [3]int(enh))) {
			continue
		}
		if r.re != nil && !r.re.MatchString(e.Message) {
			continue
		}
		return r
	}
	return nil
}

func match3(pat, v [3]int) bool {
	for i, p := range pat {
		if p >= 0 && p != v[i] {
			return false
		}
	}
	return true
}

// local reports whether e was decided by mtad rather than said by a
// receiver.
func local(e *outcome.Error) bool {
	if e.Local {
		return true
	}
	switch e.Phase {
	case outcome.PhaseDNS, outcome.PhaseConnect, outcome.PhaseQueue:
		return true
	}
	return e.Code == 0
}

var (
	enhNullMX  = smtp.EnhancedCode{5, 1, 10}
	enhBadDom  = smtp.EnhancedCode{5, 1, 2}
	enhBadAddr = smtp.EnhancedCode{5, 1, 3}
	enhSender  = smtp.EnhancedCode{5, 1, 7}
	enhTooBig  = smtp.EnhancedCode{5, 3, 4}
)

// classifyLocal classifies mtad's own failures by phase, enhanced code
// and whether the cause was a timeout.
func classifyLocal(e *outcome.Error) BounceClass {
	enh := e.Enhanced
	if enh == smtp.NoEnhancedCode {
		enh = smtp.EnhancedCode{}
	}
	switch e.Phase {
	case outcome.PhaseDNS:
		if enh == enhNullMX {
			return ClassInvalidRecipient // RFC 7505: the domain accepts no mail, ever
		}
		return ClassDNSFailure
	case outcome.PhaseQueue:
		switch {
		case enh[1] == 4 && enh[2] == 7:
			return ClassTimeout // expired in the queue
		case enh == enhBadDom || enh == enhBadAddr:
			return ClassInvalidRecipient // an address that can never be routed
		case enh[0] == 5:
			return ClassAdminFailure
		}
		return ClassTransientFailure
	}
	if timedOut(e.Err) || (enh[1] == 4 && enh[2] == 7) {
		return ClassTimeout
	}
	switch {
	case enh == enhSender:
		return ClassAdminFailure // our sender, refused by our own checks
	case enh == enhTooBig:
		return ClassTooLarge // over the SIZE the receiver announced
	case e.Phase == "" && enh == enhBadDom:
		return ClassDNSFailure // recovered from the spool, phase lost: most often an NXDOMAIN
	case enh[0] == 5 && enh[1] == 1:
		return ClassInvalidRecipient
	case enh[0] == 5:
		return ClassAdminFailure
	case enh[0] == 4:
		return ClassTransientFailure
	case e.Phase == "":
		return ClassUndetermined // recovered from the spool with nothing to go by
	case e.Temporary:
		return ClassTransientFailure
	}
	return ClassAdminFailure
}

// timedOut reports whether err is a timeout (a dial or read deadline, a
// context deadline).
func timedOut(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// locatedRule is a rule with where it was written, for errors.
type locatedRule struct {
	BounceRule
	line int // 0 = not from a file
	keys map[string]int
}

func located(rs []BounceRule) []locatedRule {
	out := make([]locatedRule, len(rs))
	for i, r := range rs {
		out[i] = locatedRule{BounceRule: r}
	}
	return out
}

func compileAll(src string, rs []locatedRule) ([]rule, error) {
	out := make([]rule, 0, len(rs))
	for i, r := range rs {
		cr, key, err := compile(r.BounceRule)
		if err != nil {
			where := src + ": "
			if line := r.keys[key]; line > 0 {
				where += "line " + strconv.Itoa(line) + ": "
			} else if r.line > 0 {
				where += "line " + strconv.Itoa(r.line) + ": "
			}
			where += "rule " + strconv.Itoa(i+1)
			if r.Name != "" {
				where += " (" + strconv.Quote(r.Name) + ")"
			}
			if key != "" {
				where += ": " + key
			}
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		out = append(out, cr)
	}
	return out, nil
}

// compile checks and compiles one rule; key names the field at fault.
func compile(r BounceRule) (_ rule, key string, _ error) {
	if !r.Class.Valid() && (r.Code != "" || r.Enhanced != "" || r.Text != "") {
		return rule{}, "class", fmt.Errorf("%d is not a bounce class (1, 10, 20-25, 30, 40, 50-54, 60, 70, 80, 90, 100)", int(r.Class))
	}
	return compileMatch(r)
}

// compileMatch compiles the reply pattern of r (code, enhanced, text),
// which response rules share with bounce rules.
func compileMatch(r BounceRule) (_ rule, key string, _ error) {
	cr := rule{name: r.Name, class: r.Class}
	if r.Code == "" && r.Enhanced == "" && r.Text == "" {
		return cr, "", errors.New("needs at least one of code, enhanced, text")
	}
	if r.Code != "" {
		if len(r.Code) != 3 || r.Code[0] < '2' || r.Code[0] > '5' {
			return cr, "code", fmt.Errorf("%q is not a reply code pattern such as 550, 55x or 5xx", r.Code)
		}
		for i := range 3 {
			switch ch := r.Code[i]; {
			case ch == 'x' || ch == 'X':
				cr.code[i] = -1
			case ch >= '0' && ch <= '9':
				cr.code[i] = int(ch - '0')
			default:
				return cr, "code", fmt.Errorf("%q is not a reply code pattern such as 550, 55x or 5xx", r.Code)
			}
		}
		cr.hasCode = true
	}
	if r.Enhanced != "" {
		parts := strings.Split(r.Enhanced, ".")
		bad := fmt.Errorf("%q is not an enhanced code pattern such as 5.1.1, 5.7.* or *.2.2", r.Enhanced)
		if len(parts) != 3 {
			return cr, "enhanced", bad
		}
		for i, p := range parts {
			if p == "*" {
				cr.enh[i] = -1
				continue
			}
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 999 || (i == 0 && n != 2 && n != 4 && n != 5) {
				return cr, "enhanced", bad
			}
			cr.enh[i] = n
		}
		cr.hasEnh = true
	}
	if r.Text != "" {
		// Checked as written, so that the error quotes the operator's text.
		if _, err := regexp.Compile(r.Text); err != nil {
			return cr, "text", err
		}
		cr.re = regexp.MustCompile("(?i)" + r.Text)
	}
	return cr, "", nil
}
