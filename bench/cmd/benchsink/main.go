// Command benchsink is the benchmark's receiving side: a fast SMTP sink that
// accepts every message, supports PIPELINING, counts messages and records for
// each one the time its final "." arrived and the queue id named in its
// topmost Received header (the delivering MTA's own id).
//
// It listens on one port on every test domain's loopback address (see
// bench/internal/topo) and on any -also addresses, prints the port on stdout,
// rewrites -stats (JSON, atomically) while messages arrive, and on SIGINT or
// SIGTERM closes everything, writes -stats and -records for the last time and
// exits. It can also write a Postfix transport map sending each test domain to
// its address. It must never listen outside 127.0.0.0/8.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mtad/mtad/bench/internal/topo"
)

func main() {
	ndomains := flag.Int("domains", 100, "listen on the addresses of this many dN.bench domains (plus hot.bench)")
	also := flag.String("also", "127.0.0.1", "comma-separated extra loopback addresses to listen on")
	port := flag.Int("port", 0, "port to listen on (0: pick a free one)")
	statsPath := flag.String("stats", "", "file to keep the running stats in (JSON)")
	recordsPath := flag.String("records", "", "file to write one line per message to on exit: arrival_unix_ns<TAB>queue_id")
	transport := flag.String("postfix-transport", "", "write a Postfix transport map (texthash) routing each test domain to the sink")
	chunking := flag.Bool("chunking", true, "offer CHUNKING (BDAT, RFC 3030) in the EHLO reply")
	flag.Parse()

	doms, err := topo.Domains(*ndomains)
	if err != nil {
		fatal(err)
	}
	var addrs []string
	for _, a := range strings.Split(*also, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	for _, d := range doms {
		addrs = append(addrs, d.Addr.String())
	}
	s, err := listenSink(addrs, *port)
	if err != nil {
		fatal(err)
	}
	s.noChunking.Store(!*chunking)
	if *transport != "" {
		var b strings.Builder
		for _, d := range doms {
			fmt.Fprintf(&b, "%s smtp:[%s]:%d\n", d.Name, d.Addr, s.port)
		}
		if err := writeAtomic(*transport, []byte(b.String())); err != nil {
			fatal(err)
		}
	}
	fmt.Println(s.port)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var written stats
	for running := true; running; {
		select {
		case <-sig:
			running = false
		case <-tick.C:
			if st := s.snapshot(); st != written && *statsPath != "" {
				if err := writeStats(*statsPath, st); err != nil {
					fatal(err)
				}
				written = st
			}
		}
	}
	s.close()
	if *statsPath != "" {
		if err := writeStats(*statsPath, s.snapshot()); err != nil {
			fatal(err)
		}
	}
	if *recordsPath != "" {
		if err := writeRecords(*recordsPath, s.records()); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchsink:", err)
	os.Exit(1)
}

func writeStats(path string, st stats) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding stats: %w", err)
	}
	return writeAtomic(path, append(b, '\n'))
}

func writeRecords(path string, recs []record) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating records file: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, r := range recs {
		w.WriteString(strconv.FormatInt(r.arrival, 10))
		w.WriteByte('\t')
		w.WriteString(r.id)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing records file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing records file: %w", err)
	}
	return nil
}

// writeAtomic replaces path with data so that a reader never sees half a file.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("renaming into %s: %w", path, err)
	}
	return nil
}
