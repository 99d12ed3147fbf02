package inject

import (
	"errors"
	"fmt"
	"html"
	"strings"
)

// The substitution language of HTTP injection: logic-less, mustache's
// two variable forms and nothing else, so a template cannot loop, branch
// or call anything, and rendering is linear in the output.
//
//	{{name}}   the value, HTML-escaped in an HTML part, as is elsewhere
//	{{{name}}} the value as is everywhere
//
// A name is letters, digits, '_', '-' and '.'; a name with no value
// renders as nothing (as mustache does). Anything else between braces is a
// template error, so a typo is refused rather than sent.

// maxVarName bounds a variable name.
const maxVarName = 64

// tmplSeg is a literal (name == "") or a variable.
type tmplSeg struct {
	lit  string
	name string
	raw  bool // {{{name}}}: never escaped
}

// template is a parsed template.
type template []tmplSeg

// hasVars says whether rendering can depend on substitutions.
func (t template) hasVars() bool {
	for _, s := range t {
		if s.name != "" {
			return true
		}
	}
	return false
}

// parseTemplate splits src into literals and variables.
func parseTemplate(src string) (template, error) {
	var t template
	for len(src) > 0 {
		i := strings.Index(src, "{{")
		if i < 0 {
			t = append(t, tmplSeg{lit: src})
			break
		}
		if i > 0 {
			t = append(t, tmplSeg{lit: src[:i]})
		}
		src = src[i:]
		raw := strings.HasPrefix(src, "{{{")
		open, closing := "{{", "}}"
		if raw {
			open, closing = "{{{", "}}}"
		}
		end := strings.Index(src[len(open):], closing)
		if end < 0 {
			return nil, fmt.Errorf("unclosed %q", open)
		}
		name := strings.TrimSpace(src[len(open) : len(open)+end])
		if err := checkVarName(name); err != nil {
			return nil, err
		}
		t = append(t, tmplSeg{name: name, raw: raw})
		src = src[len(open)+end+len(closing):]
	}
	return t, nil
}

// checkVarName refuses a name outside the variable alphabet.
func checkVarName(name string) error {
	if name == "" {
		return errors.New("empty variable name")
	}
	if len(name) > maxVarName {
		return fmt.Errorf("variable name longer than %d octets", maxVarName)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("variable name %q: only letters, digits, '_', '-' and '.' (no logic)", name)
		}
	}
	return nil
}

// render writes t with the values of vars (recipient's first, then the
// message's); escape HTML-escapes the {{name}} form.
func (t template) render(vars func(string) string, escape bool) string {
	if len(t) == 1 && t[0].name == "" {
		return t[0].lit
	}
	var b strings.Builder
	for _, s := range t {
		if s.name == "" {
			b.WriteString(s.lit)
			continue
		}
		v := vars(s.name)
		if escape && !s.raw {
			v = html.EscapeString(v)
		}
		b.WriteString(v)
	}
	return b.String()
}
