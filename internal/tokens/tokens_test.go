package tokens

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	tokA = strings.Repeat("a", 31) + "A"                   // 32 characters
	tokB = "b-._~+/0123456789abcdefghijklmnopqrstuvwxyz==" // every allowed kind
	tokC = strings.Repeat("c", 40)
)

func TestParse(t *testing.T) {
	t.Parallel()
	toks, err := Parse(strings.NewReader("# ops team\n\nalice:" + tokA + "\n  " + tokB + "  \nci-bot@x.y:" + tokC + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if toks.Len() != 3 {
		t.Fatalf("Len = %d, want 3", toks.Len())
	}
	for tok, want := range map[string]string{tokA: "alice", tokB: "line 4", tokC: "ci-bot@x.y"} {
		if name, ok := toks.Lookup(tok); !ok || name != want {
			t.Errorf("Lookup(%.8s…) = %q, %v; want %q", tok, name, ok, want)
		}
	}
	for _, bad := range []string{"", tokA[:31], tokA + "x", tokA[1:] + "a", "A" + tokA, "alice:" + tokA, strings.ToUpper(tokA)} {
		if name, ok := toks.Lookup(bad); ok {
			t.Errorf("Lookup(%q) = %q, true; want refused", bad, name)
		}
	}

	for _, c := range []struct{ name, in, want string }{
		{"empty", "# nothing\n\n", "no tokens"},
		{"short", "ops:" + tokA[:31], "line 1: token: 31 characters, fewer than 32"},
		{"space inside", "x " + tokA, "line 1: token: character 2 is not one of"},
		{"bad char", "ops:" + tokA + "!", "line 1: token: character 33"},
		{"equals inside", "ops:" + tokA[:16] + "=" + tokA[16:], "line 1: token: character 17"},
		{"only equals", strings.Repeat("=", 40), "line 1: token: only '='"},
		{"empty name", ":" + tokA, "line 1: name: must be 1 to 64"},
		{"long name", strings.Repeat("n", 65) + ":" + tokA, "line 1: name: must be 1 to 64"},
		{"bad name", "a b:" + tokA, `line 1: name: "a b": only letters`},
		{"dup name", "a:" + tokA + "\na:" + tokC, `line 2: name "a" is used twice`},
		{"dup token", "a:" + tokA + "\n# x\nb:" + tokA, "line 3: the same token is on an earlier line"},
		{"long line", strings.Repeat("x", 2000), "a line is longer than 1024 bytes"},
	} {
		_, err := Parse(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
			continue
		}
		// An error must never echo a token back into a log.
		for _, tok := range []string{tokA, tokA[:31], tokC} {
			if strings.Contains(err.Error(), tok) {
				t.Errorf("%s: error %q contains a token", c.name, err)
			}
		}
	}
}

// TestLookupIsConstantTime reads tokens.go: Lookup must compare with
// subtle.ConstantTimeCompare, and its loop over the entries must neither
// return nor break early, so that the time taken does not say which entry
// matched or how many bytes of a guess were right. (Timing it would be a
// flaky test; the code's shape is what guarantees it.)
func TestLookupIsConstantTime(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "tokens.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lookup *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "Lookup" && fd.Recv != nil {
			lookup = fd
		}
	}
	if lookup == nil {
		t.Fatal("no (*Tokens).Lookup in tokens.go")
	}
	var compares, loops int
	ast.Inspect(lookup.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if x, ok := n.X.(*ast.Ident); ok && x.Name == "subtle" && n.Sel.Name == "ConstantTimeCompare" {
				compares++
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				if _, isLit := n.Y.(*ast.BasicLit); !isLit {
					t.Errorf("Lookup compares with %s between non-constants: use subtle.ConstantTimeCompare", n.Op)
				}
			}
		case *ast.RangeStmt, *ast.ForStmt:
			loops++
			ast.Inspect(n, func(m ast.Node) bool {
				switch m := m.(type) {
				case *ast.ReturnStmt:
					t.Error("Lookup returns from inside its loop: the comparison stops early")
				case *ast.BranchStmt:
					if m.Tok == token.BREAK || m.Tok == token.GOTO {
						t.Error("Lookup breaks out of its loop: the comparison stops early")
					}
				}
				return true
			})
		}
		return true
	})
	if compares == 0 || loops != 1 {
		t.Errorf("Lookup: %d calls of subtle.ConstantTimeCompare and %d loops; want ≥1 and 1", compares, loops)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("alice:" + tokA + "\n# c\n\n" + tokB + "\n")
	f.Add("x:y\n")
	f.Add(":" + tokA)
	f.Fuzz(func(t *testing.T, in string) {
		toks, err := Parse(strings.NewReader(in))
		if err != nil {
			if toks != nil {
				t.Fatal("tokens with an error")
			}
			return
		}
		if toks.Len() == 0 {
			t.Fatal("no error and no tokens")
		}
		// Every token line parsed is found again under its name.
		for i, line := range strings.Split(in, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' {
				continue
			}
			name, tok, named := strings.Cut(line, ":")
			if !named {
				tok = line
			}
			got, ok := toks.Lookup(tok)
			if !ok || (named && got != name) {
				t.Fatalf("line %d %q: Lookup = %q, %v", i+1, line, got, ok)
			}
		}
	})
}

// TestLoad: the error of a bad file names the file and the line, and a
// missing file is the open error; never the token.
func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "tokens")
	// The format README once showed for inject.http.tokens_file alone: a
	// short token after a name, read before as the whole line.
	if err := os.WriteFile(p, []byte("# app\nsvc:tokenB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p+": line 2: token: 6 characters, fewer than 32") {
		t.Errorf("Load(short) = %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "tokenB") {
		t.Errorf("error %q shows the token", err)
	}
	if err := os.WriteFile(p, []byte("svc:"+tokC+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := toks.Lookup(tokC); !ok || name != "svc" {
		t.Errorf("Lookup = %q, %v; want svc", name, ok)
	}
	if _, err := Load(filepath.Join(dir, "none")); !os.IsNotExist(err) {
		t.Errorf("Load(missing) = %v, want not-exist", err)
	}
}
