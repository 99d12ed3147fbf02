package cluster

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// RouteRedisLog sends go-redis's own log lines (its connection pool's
// "failed to dial after N attempts", written to stderr by default, on
// every call during an outage) to log, at most one each 10 s with the
// count of those dropped since. go-redis has one logger per process:
// the daemon calls this once at start.
func RouteRedisLog(log *zap.Logger) {
	redis.SetLogger(newRedisLog(log, 10*time.Second))
}

// redisLog is go-redis's Logging on zap, rate-limited.
type redisLog struct {
	log     *zap.Logger
	lim     *rate.Limiter
	dropped atomic.Int64
}

func newRedisLog(log *zap.Logger, every time.Duration) *redisLog {
	return &redisLog{log: log, lim: rate.NewLimiter(rate.Every(every), 1)}
}

func (l *redisLog) Printf(_ context.Context, format string, v ...any) {
	if !l.lim.Allow() {
		l.dropped.Add(1)
		return
	}
	l.log.Warn("redis client", zap.String("msg", fmt.Sprintf(format, v...)),
		zap.Int64("dropped_since_last", l.dropped.Swap(0)))
}
