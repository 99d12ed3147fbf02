package logging

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// readRecords decodes the JSON lines of the file at path.
func readRecords(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decodeLines(t, string(data))
}

// What logrotate does: rename the file, then signal; the lines logged
// after Reopen are in a new file at the path, those before it in the
// renamed one, and none is lost.
func TestReopenAfterRename(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "mtad.log")
	l, out, err := Open(Options{File: path})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if out.Path() != path {
		t.Errorf("Path() = %q, want %q", out.Path(), path)
	}
	l.Info("before", zap.Int("n", 1))
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	l.Info("between", zap.Int("n", 2)) // still to the renamed file: its descriptor is open
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file is at %s before the reopen: %v", path, err)
	}
	if err := out.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Info("after", zap.Int("n", 3))
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}

	msgs := func(recs []map[string]any) []any {
		var m []any
		for _, r := range recs {
			m = append(m, r["msg"])
		}
		return m
	}
	if got := msgs(readRecords(t, rotated)); len(got) != 2 || got[0] != "before" || got[1] != "between" {
		t.Errorf("rotated file holds %v, want [before between]", got)
	}
	if got := msgs(readRecords(t, path)); len(got) != 1 || got[0] != "after" {
		t.Errorf("new file holds %v, want [after]", got)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		t.Errorf("reopened log file mode %v is world-accessible", perm)
	}
	if err := out.Reopen(); err == nil {
		t.Error("Reopen after Close succeeded")
	}
	// Writes after Close fail rather than go nowhere; zap reports them to
	// its error output, so here they are written directly.
	if _, err := out.Write([]byte("x\n")); err == nil {
		t.Error("Write after Close succeeded")
	}
}

// Lines logged by many goroutines while the file is rotated under them all
// land whole, each in exactly one of the two files (run with -race).
func TestReopenUnderConcurrentWrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "mtad.log")
	l, out, err := Open(Options{File: path})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range each {
				l.Info("line", zap.Int("w", w), zap.Int("i", i))
			}
		}()
	}
	close(start)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := out.Reopen(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	seen := map[[2]float64]int{}
	for _, p := range []string{path + ".1", path} {
		for _, r := range readRecords(t, p) { // fails on a split line
			seen[[2]float64{r["w"].(float64), r["i"].(float64)}]++
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct lines across both files, want %d", len(seen), writers*each)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("line %v written %d times", k, n)
		}
	}
}

// When the path cannot be opened again (its directory moved away), Reopen
// says so and the logger keeps writing to the file it has.
func TestReopenFailureKeepsTheOldFile(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	dir := filepath.Join(base, "log")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, out, err := Open(Options{File: filepath.Join(dir, "mtad.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	moved := filepath.Join(base, "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := out.Reopen(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Reopen with its directory gone = %v, want a not-exist error", err)
	}
	l.Info("still here")
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, filepath.Join(moved, "mtad.log"))
	if len(recs) != 1 || recs[0]["msg"] != "still here" {
		t.Errorf("old file holds %v after a failed reopen", recs)
	}
}

// Standard output has nothing to reopen or close.
func TestStdoutOutput(t *testing.T) {
	t.Parallel()
	_, out, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Path() != "" || out.Reopen() != nil || out.Close() != nil {
		t.Errorf("stdout Output: path %q, Reopen %v, Close %v", out.Path(), out.Reopen(), out.Close())
	}
}

func TestSetLevel(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mtad.log")
	log, out, err := Open(Options{Level: "info", File: path})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	log.Debug("before")
	if err := out.SetLevel("debug"); err != nil {
		t.Fatal(err)
	}
	log.Named("child").Debug("after")
	if err := out.SetLevel("loud"); err == nil || !strings.Contains(err.Error(), `level "loud"`) {
		t.Errorf("SetLevel(loud) = %v", err)
	}
	if out.Level() != "debug" {
		t.Errorf("Level after a refused SetLevel = %q, want debug", out.Level())
	}
	if err := out.SetLevel("warn"); err != nil {
		t.Fatal(err)
	}
	log.Info("muted")
	_ = log.Sync()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if strings.Contains(got, "before") || !strings.Contains(got, `"msg":"after"`) || strings.Contains(got, "muted") {
		t.Errorf("log = %s; want only the debug record written after SetLevel(debug)", got)
	}
}
