package policy

import (
	"fmt"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// parseRules reads a rules file:
//
//	rules:
//	  - name: gmail-no-such-user
//	    code: 550            # each of code, enhanced, text is optional
//	    enhanced: "5.1.1"
//	    text: 'does not exist'
//	    class: 10
//
// It walks the YAML nodes rather than decoding into structs so that every
// error can name the line and key, and an unknown key (a typo that would
// silently widen a rule) is an error.
func parseRules(src string, data []byte) ([]locatedRule, error) {
	seq, err := rulesList(src, data)
	if err != nil {
		return nil, err
	}
	out := make([]locatedRule, 0, len(seq))
	for i, n := range seq {
		r := locatedRule{line: n.Line}
		r.keys, err = eachKey(src, i, n, "name, code, enhanced, text, class", func(k, v *yaml.Node, at string) error {
			if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
				return fmt.Errorf("%s: must be a single value", at)
			}
			switch k.Value {
			case "name":
				r.Name = v.Value
			case "code":
				r.Code = v.Value
			case "enhanced":
				r.Enhanced = v.Value
			case "text":
				r.Text = v.Value
			case "class":
				c, err := strconv.Atoi(v.Value)
				if err != nil {
					return fmt.Errorf("%s: %q is not a number", at, v.Value)
				}
				r.Class = BounceClass(c)
			default:
				return fmt.Errorf("%s: unknown key (a rule has name, code, enhanced, text, class)", at)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if _, ok := r.keys["class"]; !ok {
			return nil, fmt.Errorf("%s: line %d: rule %d: class: missing", src, n.Line, i+1)
		}
		out = append(out, r)
	}
	return out, nil
}

// rulesList returns the entries of a rules file's only key, "rules"; nil
// for an empty file or list. Both the bounce classes file and the response
// rules file have this shape.
func rulesList(src string, data []byte) ([]*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil // an empty file: no rules of its own
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: line %d: the file must be a mapping with a \"rules\" key", src, top.Line)
	}
	var seq *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if k.Value != "rules" {
			return nil, fmt.Errorf("%s: line %d: %s: unknown key (the file has only \"rules\")", src, k.Line, k.Value)
		}
		seq = v
	}
	if seq == nil || (seq.Kind == yaml.ScalarNode && seq.Tag == "!!null") {
		return nil, nil
	}
	if seq.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s: line %d: rules: must be a list of rules", src, seq.Line)
	}
	return seq.Content, nil
}

// eachKey calls fn for every key of rule i (node n, which must be a
// mapping of the keys listed in what), with at naming the file, line, rule
// and key for fn's errors. A key given twice is an error. It returns each
// key's line.
func eachKey(src string, i int, n *yaml.Node, what string, fn func(k, v *yaml.Node, at string) error) (map[string]int, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: line %d: rule %d: must be a mapping of %s", src, n.Line, i+1, what)
	}
	keys := map[string]int{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j], n.Content[j+1]
		at := fmt.Sprintf("%s: line %d: rule %d: %s", src, v.Line, i+1, k.Value)
		if _, dup := keys[k.Value]; dup {
			return nil, fmt.Errorf("%s: given twice", at)
		}
		keys[k.Value] = v.Line
		if err := fn(k, v, at); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
