package config

import (
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"
)

// Cluster shares rate budgets, connection counts and suspensions between
// several mtad nodes through Redis (internal/cluster). Without Redis set,
// nothing is shared and nothing connects: one node, in-process limits.
type Cluster struct {
	// Redis is one address (host:port), or a list for Redis Cluster
	// (written as a YAML list or "a:6379, b:6379"). Empty: no cluster.
	Redis []string `mapstructure:"redis"`
	// PasswordFile holds the Redis password (AUTH); "" = none. Its first
	// line is the password; a file keeps it out of the config and `ps`.
	PasswordFile string     `mapstructure:"password_file"`
	TLS          ClusterTLS `mapstructure:"tls"`
	// Node is this node's name in the cluster, unique among the nodes;
	// "" (the default) is the host name (NodeName).
	Node string `mapstructure:"node"`
	// Mode is shared (limits shared through Redis) or local (connected
	// for membership, suspensions and overrides, limits kept per node).
	Mode string `mapstructure:"mode"`
	// Fallback is what a node does while Redis is unreachable: share
	// (each shared limit divided by the nodes last seen), local (full
	// limits on each node) or stop (nothing under a shared limit is sent).
	Fallback string `mapstructure:"fallback"`
	// LeaseTTL is how long a connection lease lives unrenewed: a node
	// that dies gives its connections back within it.
	LeaseTTL time.Duration `mapstructure:"lease_ttl"`
	// Timeout bounds every Redis call (200 ms: at 100 ms nodes fell into
	// fallback under the cluster benchmark's load); past it the call is
	// answered locally, and two failed heartbeats in a row declare
	// fallback.
	Timeout time.Duration `mapstructure:"timeout"`
}

// ClusterTLS is TLS to Redis.
type ClusterTLS struct {
	Enabled bool `mapstructure:"enabled"`
	// CAFile is the PEM bundle that verifies the server ("" = system roots).
	CAFile     string `mapstructure:"ca_file"`
	ServerName string `mapstructure:"server_name"`
	// InsecureSkipVerify turns verification off (tests, never production).
	InsecureSkipVerify bool `mapstructure:"insecure_skip_verify"`
}

// NodeName is Node, or the host name when Node is empty.
func (cl Cluster) NodeName() string {
	if cl.Node != "" {
		return cl.Node
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

func defaultCluster() Cluster {
	return Cluster{Redis: []string{}, Mode: "shared", Fallback: "share",
		LeaseTTL: 30 * time.Second, Timeout: 200 * time.Millisecond}
}

func (c *Config) validateCluster(v *validator) {
	cl := &c.Cluster
	v.oneOf("cluster.mode", cl.Mode, "shared", "local")
	v.oneOf("cluster.fallback", cl.Fallback, "share", "local", "stop")
	if len(cl.Redis) == 0 {
		return
	}
	for i, a := range cl.Redis {
		v.hostPort(fmt.Sprintf("cluster.redis[%d]", i), a, false)
	}
	if strings.ContainsAny(cl.Node, " \t\r\n:") {
		v.bad("cluster.node", "%q: no blanks or colons in a node name", cl.Node)
	}
	// Below 10 ms a loaded Redis on the same rack times out; above 1 s a
	// dead one holds deliveries for long.
	if cl.Timeout < 10*time.Millisecond || cl.Timeout > time.Second {
		v.bad("cluster.timeout", "%v is not in 10ms-1s", cl.Timeout)
	}
	// Renewed every TTL/3: under 3 s the renewals crowd out the rest.
	if cl.LeaseTTL < 3*time.Second || cl.LeaseTTL > 10*time.Minute {
		v.bad("cluster.lease_ttl", "%v is not in 3s-10m", cl.LeaseTTL)
	}
	if cl.PasswordFile != "" {
		if _, err := os.ReadFile(cl.PasswordFile); err != nil {
			v.bad("cluster.password_file", "%v", err)
		}
	}
	if !cl.TLS.Enabled && (cl.TLS.CAFile != "" || cl.TLS.ServerName != "" || cl.TLS.InsecureSkipVerify) {
		v.bad("cluster.tls.enabled", "false, but other cluster.tls keys are set")
	}
	if cl.TLS.CAFile != "" {
		pem, err := os.ReadFile(cl.TLS.CAFile)
		if err != nil {
			v.bad("cluster.tls.ca_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			v.bad("cluster.tls.ca_file", "%s holds no PEM certificate", cl.TLS.CAFile)
		}
	}
}
