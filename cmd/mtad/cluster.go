package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/cluster"
	"github.com/mtad/mtad/internal/config"
)

// openCluster connects to the cluster of cfg.Cluster (nil, nil without
// cluster.redis). queued reports the node's queued messages for its
// membership record. It does not fail when Redis is down: the node starts
// in fallback and says so.
func openCluster(cfg *config.Config, queued func() int, reg prometheus.Registerer, log *zap.Logger) (*cluster.Cluster, error) {
	cc := cfg.Cluster
	if len(cc.Redis) == 0 {
		return nil, nil
	}
	fb, err := cluster.ParseFallback(cc.Fallback)
	if err != nil {
		return nil, fmt.Errorf("cluster.fallback: %w", err)
	}
	cluster.RouteRedisLog(log.Named("redis"))
	var pw string
	if cc.PasswordFile != "" {
		b, err := os.ReadFile(cc.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.password_file: %w", err)
		}
		pw, _, _ = strings.Cut(string(b), "\n")
		pw = strings.TrimRight(pw, "\r")
	}
	var tc *tls.Config
	if cc.TLS.Enabled {
		tc = &tls.Config{ServerName: cc.TLS.ServerName, InsecureSkipVerify: cc.TLS.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
		if cc.TLS.CAFile != "" {
			pem, err := os.ReadFile(cc.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("cluster.tls.ca_file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster.tls.ca_file: %s holds no PEM certificate", cc.TLS.CAFile)
			}
		}
	}
	c, err := cluster.New(cluster.Config{Addrs: cc.Redis, Password: pw, TLS: tc, Node: cc.NodeName(), Version: version,
		Fallback: fb, LeaseTTL: cc.LeaseTTL, Timeout: cc.Timeout, Queued: queued, Log: log.Named("cluster"),
		StateFile: filepath.Join(cfg.Spool.Dir, "cluster-nodes")})
	if err != nil {
		return nil, err
	}
	if reg != nil {
		if err := c.Register(reg); err != nil {
			c.Close()
			return nil, err
		}
	}
	down, _ := c.Fallback()
	log.Info("cluster joined", zap.String("node", c.Node()), zap.Strings("redis", cc.Redis),
		zap.String("mode", cc.Mode), zap.String("fallback", cc.Fallback), zap.Bool("redis_down", down))
	return c, nil
}

// clusterAdmin is admin.Cluster over a *cluster.Cluster.
type clusterAdmin struct{ c *cluster.Cluster }

func (a clusterAdmin) Nodes(ctx context.Context) (any, bool) { return a.c.Nodes(ctx) }
func (a clusterAdmin) Status() error                         { return a.c.Status() }
func (a clusterAdmin) Stopped() bool                         { return a.c.Stopped() }

// pendingOf is the queued count for the membership record: the scheduler
// is made after the cluster, so it is read through a pointer set later.
type pendingOf struct{ p atomic.Pointer[func() int] }

func (q *pendingOf) get() int {
	if f := q.p.Load(); f != nil {
		return (*f)()
	}
	return 0
}
