package spool

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// The helpers below reach under the spool's API to damage or inspect its
// records, the way a disk error or a bug would.

func rawValue(t *testing.T, s *Spool, key []byte) []byte {
	t.Helper()
	var v []byte
	err := s.withDB(func(db *pebble.DB) error {
		var found bool
		var err error
		v, found, err = getCopy(db, key)
		if err == nil && !found {
			err = ErrNotFound
		}
		return err
	})
	if err != nil {
		t.Fatalf("raw get %q: %v", key, err)
	}
	return v
}

func rawSet(t *testing.T, s *Spool, key, val []byte) {
	t.Helper()
	if err := s.withDB(func(db *pebble.DB) error { return db.Set(key, val, pebble.Sync) }); err != nil {
		t.Fatalf("raw set %q: %v", key, err)
	}
}

func rawDelete(t *testing.T, s *Spool, key []byte) {
	t.Helper()
	if err := s.withDB(func(db *pebble.DB) error { return db.Delete(key, pebble.Sync) }); err != nil {
		t.Fatalf("raw delete %q: %v", key, err)
	}
}

// flipBit flips one bit in the middle of the value under key.
func flipBit(t *testing.T, s *Spool, key []byte) {
	t.Helper()
	v := rawValue(t, s, key)
	v[len(v)/2] ^= 0x10
	rawSet(t, s, key, v)
}

// countKeys counts the meta, body and recipient keys of id.
func countKeys(t *testing.T, s *Spool, id string) int {
	t.Helper()
	n := 0
	err := s.withDB(func(db *pebble.DB) error {
		for _, p := range [][]byte{metaKey(id), bodyKey(id), rcptPrefix(id)} {
			it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
			if err != nil {
				return err
			}
			for ok := it.First(); ok; ok = it.Next() {
				if bytes.Equal(it.Key(), p) || bytes.HasPrefix(p, []byte(prefixRcpt)) {
					n++
				}
			}
			if err := it.Close(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// crashCopy copies the store's files as they are now, with the store still
// open, into a new spool directory: what a restart after kill -9 would find.
func crashCopy(t *testing.T, s *Spool) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dst, "db"), 0o750); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(s.dbDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		copyFile(t, filepath.Join(s.dbDir, e.Name()), filepath.Join(dst, "db", e.Name()))
	}
	return dst
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
