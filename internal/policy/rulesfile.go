package policy

import (
	"fmt"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mtad/mtad/internal/config"
)

// fileRule is a response rule read from a file, with the line of each key
// for errors ("throttle.max_connections" has its own).
type fileRule struct {
	config.ResponseRule
	line int
	keys map[string]int
}

const responseRuleKeys = "name, code, enhanced, text, match_provider, match_domain, scope, all_bindings, " +
	"trigger, action, duration, throttle, ramp, rebind"

// parseResponseRules reads a response rules file: "rules:" with entries of
// the same shape as the config's response_rules (configs/response-rules.yaml).
// Like the bounce classes file, it walks the YAML nodes so that each error
// names the line, rule and key, and an unknown key is an error. It checks
// the syntax of values; config.ResponseRule.Check judges the rule.
func parseResponseRules(src string, data []byte) ([]fileRule, error) {
	seq, err := rulesList(src, data)
	if err != nil {
		return nil, err
	}
	out := make([]fileRule, 0, len(seq))
	for i, n := range seq {
		r := fileRule{line: n.Line}
		var nested map[string]int
		r.keys, err = eachKey(src, i, n, responseRuleKeys, func(k, v *yaml.Node, at string) error {
			var err error
			switch k.Value {
			case "name":
				r.Name, err = scalar(v, at)
			case "code":
				r.Code, err = intValue(v, at)
			case "enhanced":
				r.Enhanced, err = scalar(v, at)
			case "text":
				r.Text, err = scalar(v, at)
			case "scope":
				r.Scope, err = scalar(v, at)
			case "trigger":
				r.Trigger, err = scalar(v, at)
			case "action":
				r.Action, err = scalar(v, at)
			case "rebind":
				r.Rebind, err = scalar(v, at)
			case "all_bindings":
				var s string
				if s, err = scalar(v, at); err == nil {
					if r.AllBindings, err = strconv.ParseBool(s); err != nil {
						err = fmt.Errorf("%s: %q is not true or false", at, s)
					}
				}
			case "duration":
				r.Duration, err = duration(v, at)
			case "ramp":
				r.Ramp, err = duration(v, at)
			case "match_provider":
				r.MatchProvider, err = list(v, at)
			case "match_domain":
				r.MatchDomain, err = list(v, at)
			case "throttle":
				r.Throttle, nested, err = throttleValue(v, at)
			default:
				err = fmt.Errorf("%s: unknown key (a rule has %s)", at, responseRuleKeys)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		for k, line := range nested {
			r.keys["throttle."+k] = line
		}
		out = append(out, r)
	}
	return out, nil
}

func scalar(v *yaml.Node, at string) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return "", fmt.Errorf("%s: must be a single value", at)
	}
	return v.Value, nil
}

func intValue(v *yaml.Node, at string) (int, error) {
	s, err := scalar(v, at)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a whole number", at, s)
	}
	return n, nil
}

func duration(v *yaml.Node, at string) (time.Duration, error) {
	s, err := scalar(v, at)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (write e.g. \"30m\", \"2h\")", at, s)
	}
	return d, nil
}

func list(v *yaml.Node, at string) ([]string, error) {
	if v.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s: must be a list such as [a, b]", at)
	}
	out := make([]string, 0, len(v.Content))
	for j, e := range v.Content {
		s, err := scalar(e, fmt.Sprintf("%s[%d]", at, j))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func throttleValue(v *yaml.Node, at string) (*config.RuleThrottle, map[string]int, error) {
	if v.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s: must be a mapping of max_message_rate, max_connections", at)
	}
	t := &config.RuleThrottle{}
	lines := map[string]int{}
	for j := 0; j+1 < len(v.Content); j += 2 {
		k, e := v.Content[j], v.Content[j+1]
		kat := at + "." + k.Value
		if _, dup := lines[k.Value]; dup {
			return nil, nil, fmt.Errorf("%s: given twice", kat)
		}
		lines[k.Value] = e.Line
		switch k.Value {
		case "max_message_rate":
			s, err := scalar(e, kat)
			if err != nil {
				return nil, nil, err
			}
			t.MaxMessageRate = s
		case "max_connections":
			n, err := intValue(e, kat)
			if err != nil {
				return nil, nil, err
			}
			t.MaxConnections = &n
		default:
			return nil, nil, fmt.Errorf("%s: unknown key (a throttle has max_message_rate, max_connections)", kat)
		}
	}
	return t, lines, nil
}
