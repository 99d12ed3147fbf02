package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad: whatever a config file holds, Load returns a config or an
// error that starts with "config:" (naming the file or the key), and
// never panics. A config it returns passes Validate again: validation
// does not depend on the order things were read in.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"hostname: mta.example\n",
		"spool:\n  dir: /tmp/x\n  min_free: 100MiB\n",
		"inject:\n  smtp:\n    listen: [\"127.0.0.1:2525\"]\n",
		"shaping:\n  domains:\n    - match: gmail.com\n      max_message_rate: 10/s\n",
		"delivery:\n  timeouts:\n    transaction: -1s\n",
		"dns:\n  cache_size: 0\n",
		"domains: []\n",
		"bindings:\n  - name: a\n    address: 127.0.0.2\n",
		"cluster:\n  redis: [\"127.0.0.1:6379\"]\n  fallback: share\n",
		"[not yaml",
		"response_rules:\n  - match: '(['\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "mtad.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config:") {
				t.Fatalf("error %q does not start with config:", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a config Validate refuses: %v", err)
		}
	})
}
