package main

// The human rendering of the API's nested documents (status, message
// show, quarantine show): aligned "key  value" lines, each list of
// objects (a message's recipients) as a table under its name, and
// multi-line text (a header block) last, indented. --json prints the
// API's JSON instead. The renderer knows no field names, so a field the
// API adds shows up without a change here.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// object is a JSON object with its keys in the order the API wrote them:
// the API's order is the reading order (queue id first, headers last).
type object struct {
	keys []string
	vals map[string]any
}

// decodeOrdered decodes one JSON value, objects as *object, numbers as
// json.Number (a size prints as 1048576, not 1.048576e+06).
func decodeOrdered(d *json.Decoder) (any, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		o := &object{vals: map[string]any{}}
		for d.More() {
			k, err := d.Token()
			if err != nil {
				return nil, err
			}
			v, err := decodeOrdered(d)
			if err != nil {
				return nil, err
			}
			key, _ := k.(string)
			if _, dup := o.vals[key]; !dup {
				o.keys = append(o.keys, key)
			}
			o.vals[key] = v
		}
		_, err := d.Token() // '}'
		return o, err
	case json.Delim('['):
		var l []any
		for d.More() {
			v, err := decodeOrdered(d)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		_, err := d.Token() // ']'
		return l, err
	}
	return tok, nil
}

// printDoc renders the API's JSON object b for people.
func printDoc(out io.Writer, what string, b []byte) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	v, err := decodeOrdered(d)
	o, ok := v.(*object)
	if err != nil || !ok {
		return fmt.Errorf("%s: the answer is not a JSON object: %q", what, cut(string(b), 200))
	}
	type table struct {
		name string
		rows []*object
	}
	var lines [][2]string
	var tables []table
	var texts [][2]string
	var walk func(prefix string, o *object)
	walk = func(prefix string, o *object) {
		for _, k := range o.keys {
			name := prefix + k
			switch v := o.vals[k].(type) {
			case *object:
				if len(v.keys) == 0 {
					lines = append(lines, [2]string{name, "-"})
				}
				walk(name+".", v)
			case []any:
				if objs, ok := objectList(v); ok && len(objs) > 0 {
					tables = append(tables, table{name, objs})
					continue
				}
				cells := make([]string, len(v))
				for i, x := range v {
					cells[i] = scalar(x)
				}
				lines = append(lines, [2]string{name, orDash(strings.Join(cells, ", "))})
			case string:
				if strings.Contains(strings.TrimRight(v, "\r\n"), "\n") {
					texts = append(texts, [2]string{name, v})
					continue
				}
				lines = append(lines, [2]string{name, orDash(v)})
			default:
				lines = append(lines, [2]string{name, orDash(scalar(v))})
			}
		}
	}
	walk("", o)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, l := range lines {
		fmt.Fprintf(tw, "%s:\t%s\n", l[0], oneLine(l[1]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, t := range tables {
		fmt.Fprintf(out, "\n%s:\n", t.name)
		var head []string
		seen := map[string]bool{}
		for _, r := range t.rows {
			for _, k := range r.keys {
				if !seen[k] {
					seen[k] = true
					head = append(head, k)
				}
			}
		}
		rows := make([][]string, len(t.rows))
		for i, r := range t.rows {
			for _, k := range head {
				rows[i] = append(rows[i], oneLine(scalar(r.vals[k])))
			}
		}
		upper := make([]string, len(head))
		for i, h := range head {
			upper[i] = strings.ToUpper(strings.ReplaceAll(h, "_", " "))
		}
		if err := writeTable(out, upper, rows); err != nil {
			return err
		}
	}
	for _, t := range texts {
		fmt.Fprintf(out, "\n%s:\n", t[0])
		for _, l := range strings.Split(strings.TrimRight(strings.ReplaceAll(t[1], "\r\n", "\n"), "\n"), "\n") {
			if _, err := fmt.Fprintf(out, "  %s\n", l); err != nil {
				return err
			}
		}
	}
	return nil
}

// objectList is l as objects, when every element is one.
func objectList(l []any) ([]*object, bool) {
	objs := make([]*object, len(l))
	for i, x := range l {
		o, ok := x.(*object)
		if !ok {
			return nil, false
		}
		objs[i] = o
	}
	return objs, true
}

// scalar prints a JSON value in a cell: null as "", a nested value as
// its JSON.
func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		if x {
			return "yes"
		}
		return "no"
	case *object:
		parts := make([]string, 0, len(x.keys))
		for _, k := range x.keys {
			parts = append(parts, k+"="+scalar(x.vals[k]))
		}
		return strings.Join(parts, " ")
	case []any:
		cells := make([]string, len(x))
		for i, y := range x {
			cells[i] = scalar(y)
		}
		return strings.Join(cells, ", ")
	}
	return fmt.Sprint(v)
}

// oneLine keeps a value on its line: a reply text with a line break must
// not break the alignment.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
