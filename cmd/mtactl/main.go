// Command mtactl is the operator's command line for a running mtad. It talks
// to the daemon's admin HTTP API and prints what it answers.
//
//	mtactl [--admin URL] status    queue and connection state, as JSON
//	mtactl [--admin URL] health    exits 0 when the daemon answers healthy
//	mtactl [--admin URL] metrics   the Prometheus metrics text
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mtactl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", envOr("MTAD_ADMIN", "http://127.0.0.1:8025"), "admin API base URL (env MTAD_ADMIN)")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mtactl [--admin URL] status|health|metrics")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mtactl", version)
		return 0
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	client := &http.Client{Timeout: *timeout}
	var path string
	switch fs.Arg(0) {
	case "status":
		path = "/api/v1/status"
	case "health":
		path = "/healthz"
	case "metrics":
		path = "/metrics"
	default:
		fmt.Fprintf(stderr, "mtactl: unknown command %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	body, err := get(client, *admin+path)
	if err != nil {
		fmt.Fprintln(stderr, "mtactl:", err)
		return 1
	}
	_, _ = stdout.Write(body)
	return 0
}

// get fetches url and returns its body; a non-2xx answer becomes an error
// carrying the API's JSON error text.
func get(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, e.Error)
		}
		return nil, errors.New(url + ": " + resp.Status)
	}
	return body, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
