// Command benchport prints N distinct free TCP ports of 127.0.0.1, one per
// line, for the benchmark to hand to daemons that want a fixed port in their
// config. It holds all N listeners open together before closing them, so the
// ports are distinct; another process may still take one before the caller
// binds it, which the benchmark then reports as a failed start.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
)

func main() {
	n := flag.Int("n", 1, "how many ports")
	flag.Parse()
	ports, err := freePorts(*n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchport:", err)
		os.Exit(1)
	}
	for _, p := range ports {
		fmt.Println(p)
	}
}

func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
