// go-template renders templates with Go's own text/template, as VSecM does, for
// Aegis's differential test (crates/aegis/tests/system/go_templates.rs).
//
// Each line of standard input is a JSON object {"value": "...", "template": "..."};
// each line of standard output answers it with {"modes": [{"out": ..., "err": ...}, ...]}:
// the template run over the value decoded the two ways Aegis follows Go:
//
//   - "int": JSON integers as int64 and other numbers as float64, Aegis's data model,
//     with the choices Aegis documents: printf's float verbs (%e %f %g) take an integer
//     as a float64, as VSecM does; numbers compare by value whatever their kind; and
//     "and" and "or" evaluate all their arguments (Go stops at the one that decides);
//   - "float": every number as a float64, exactly as VSecM decodes it.
//
// The template and the value are trimmed first, as VSecM trims them. A failed parse
// or run sets "err" (VSecM then delivers the value unchanged). Output in which a
// field was missing is cut as Aegis cuts it (segments between commas whose text after
// the first colon is exactly "<no value>" are dropped). Aegis does not tell an
// integer written in the template (an int to Go) from one in the data (an int64), so
// Go's "int=" in a printf error text reads "int64=".
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"text/template"
)

type request struct {
	Value    string `json:"value"`
	Template string `json:"template"`
}

type result struct {
	Out *string `json:"out"`
	Err *string `json:"err"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: go-template < requests (one JSON object per line)")
		os.Exit(2)
	}
	in := bufio.NewReader(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	for {
		line, err := in.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var req request
			if jerr := json.Unmarshal(line, &req); jerr != nil {
				fmt.Fprintf(os.Stderr, "go-template: bad request line: %v\n", jerr)
				os.Exit(1)
			}
			modes := []result{run(req, true), run(req, false)}
			b, _ := json.Marshal(map[string]any{"modes": modes})
			out.Write(b)
			out.WriteByte('\n')
			out.Flush()
		}
		if err != nil {
			return
		}
	}
}

func run(req request, ints bool) result {
	fail := func(err error) result {
		s := err.Error()
		return result{Err: &s}
	}
	var data map[string]any
	dec := json.NewDecoder(strings.NewReader(strings.TrimSpace(req.Value)))
	dec.UseNumber()
	if err := dec.Decode(&data); err != nil {
		return fail(err)
	}
	converted := numbers(data, ints).(map[string]any)
	t := template.New("secret")
	if ints {
		t = t.Funcs(aegisFuncs())
	}
	t, err := t.Parse(strings.TrimSpace(req.Template))
	if err != nil {
		return fail(err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, converted); err != nil {
		return fail(err)
	}
	s := dropMissing(literalInts.ReplaceAllString(buf.String(), "${1}int64="))
	return result{Out: &s}
}

var literalInts = regexp.MustCompile(`([(, ])int=`)

// numbers replaces json.Number: int64 for integers when ints is set, else float64.
func numbers(v any, ints bool) any {
	switch x := v.(type) {
	case json.Number:
		if ints {
			if i, err := x.Int64(); err == nil {
				return i
			}
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e, ints)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = numbers(e, ints)
		}
		return x
	}
	return v
}

func dropMissing(s string) string {
	if !strings.Contains(s, "<no value>") {
		return s
	}
	var kept []string
	for _, seg := range strings.Split(s, ",") {
		if _, after, ok := strings.Cut(seg, ":"); ok && after == "<no value>" {
			continue
		}
		kept = append(kept, seg)
	}
	return strings.Join(kept, ",")
}

// floatVerbsTakeInts is v with every int64 in it (also inside arrays and maps, copied)
// an aegisInt.
func floatVerbsTakeInts(v any) any {
	switch x := v.(type) {
	case int64:
		return aegisInt(x)
	case int:
		return aegisInt(x)
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = floatVerbsTakeInts(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = floatVerbsTakeInts(e)
		}
		return a
	}
	return v
}

// aegisInt is an int64 that printf's float verbs format as a float64.
type aegisInt int64

func (i aegisInt) Format(f fmt.State, verb rune) {
	switch verb {
	case 'e', 'E', 'f', 'F', 'g', 'G':
		fmt.Fprintf(f, fmt.FormatString(f, verb), float64(i))
	default:
		fmt.Fprintf(f, fmt.FormatString(f, verb), int64(i))
	}
}

func aegisFuncs() template.FuncMap {
	compare := func(name string) func(args ...reflect.Value) (bool, error) {
		return func(args ...reflect.Value) (bool, error) { return builtin(name, args) }
	}
	return template.FuncMap{
		"printf": func(format string, args ...any) string {
			for i, a := range args {
				args[i] = floatVerbsTakeInts(a)
			}
			return strings.ReplaceAll(fmt.Sprintf(format, args...), "main.aegisInt=", "int64=")
		},
		"eq": compare("eq"), "ne": compare("ne"), "lt": compare("lt"),
		"le": compare("le"), "gt": compare("gt"), "ge": compare("ge"),
		"and": func(first reflect.Value, rest ...reflect.Value) reflect.Value {
			for _, v := range rest {
				if !truth(first) {
					return first
				}
				first = v
			}
			return first
		},
		"or": func(first reflect.Value, rest ...reflect.Value) reflect.Value {
			for _, v := range rest {
				if truth(first) {
					return first
				}
				first = v
			}
			return first
		},
	}
}

func truth(v reflect.Value) bool {
	for v.IsValid() && v.Kind() == reflect.Interface {
		v = v.Elem()
	}
	if !v.IsValid() {
		return false
	}
	t, _ := template.IsTrue(v.Interface())
	return t
}

// builtin runs Go's own comparison with an int64 compared to a float64 turned into
// a float64 (Go refuses to compare them; Aegis compares them by value).
func builtin(name string, args []reflect.Value) (bool, error) {
	vals := make([]any, len(args))
	hasFloat := false
	for i, a := range args {
		for a.IsValid() && a.Kind() == reflect.Interface {
			a = a.Elem()
		}
		if a.IsValid() {
			vals[i] = a.Interface()
			hasFloat = hasFloat || a.Kind() == reflect.Float64
		}
	}
	if hasFloat {
		for i, v := range vals {
			switch n := v.(type) {
			case int64:
				vals[i] = float64(n)
			case int:
				vals[i] = float64(n)
			}
		}
	}
	refs := make([]string, len(vals))
	for i := range vals {
		refs[i] = fmt.Sprintf("(index . %d)", i)
	}
	t := template.Must(template.New(name).Parse("{{" + name + " " + strings.Join(refs, " ") + "}}"))
	var buf bytes.Buffer
	if err := t.Execute(&buf, vals); err != nil {
		return false, err
	}
	return buf.String() == "true", nil
}
