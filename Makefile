# mtad — build, run, test, benchmark.
#   make run    start the daemon on configs/mtad.yaml with the capture sink
#               (loopback, no root, spool in ./var, .test mail in ./var/sink)
#   make test   every test, with the race detector

SHELL   := /bin/bash
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin
PREFIX  ?= /usr/local
CONFIG  ?= configs/mtad.yaml

.PHONY: all build run test test-short test-crash bench bench-quick bench-scale bench-overload bench-cluster soak lint install clean deps

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mtad ./cmd/mtad
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mtactl ./cmd/mtactl

# mtad and mtasink, the capture sink the shipped config routes the
# reserved .test domains to (messages land in ./var/sink); Ctrl-C stops both.
run: build
	$(GO) build -trimpath -o $(BIN)/mtasink ./cmd/mtasink
	@bash scripts/run.sh $(CONFIG)

# Tests fetch their own Go modules; the end-to-end tests build the binaries
# themselves; deps installs the rest (Postfix, python3, chromium) with apt when missing.
# Nothing else needs installing by hand.
test: deps
	$(GO) mod download
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 14m ./...

# What the interop tests (test/e2e) run besides Go: Postfix and python3,
# installed with apt only when missing (root needed then); a no-op otherwise.
deps:
	@bash test/e2e/deps.sh

test-short:
	$(GO) test -race -count=1 -short ./...

# The full crash harness (test/crash, issue 12): 20,000 messages from 50
# clients, SIGKILLs during injection, delivery, owed DSNs and start-up
# recovery, each followed by a restart; `make test` runs its short round.
# MTAD_CRASH_SEED=N replays a run. Figures go to RELIABILITY.md.
test-crash:
	MTAD_CRASH=full $(GO) test -race -count=1 -v -timeout 30m -run TestCrashHarness ./test/crash/

# The end-to-end benchmark (installs Postfix's smtp-source/smtp-sink with apt
# when missing), then the Go micro-benchmarks.
bench: build
	bash bench/run.sh full
	$(GO) test -run '^$$' -bench 'Put5KB|Inject5KB|Inject100KB|DataScan100KB|Scan100KB|Rewrite|Send|EndToEnd' -timeout 30m ./internal/spool ./internal/inject ./internal/conform ./internal/smtpclient ./internal/scheduler

bench-quick: build
	bash bench/run.sh quick

# W1's shape through one node without a cluster, one with, and three
# sharing a real redis-server; msgs/s and Redis commands per message
# (test/e2e/cluster_bench_test.go; BENCH_CLUSTER_N sets the message count).
bench-cluster:
	bash test/e2e/deps.sh
	MTAD_BENCH_CLUSTER=1 $(GO) test -count=1 -run '^TestBenchClusterW1$$' -v -timeout 30m ./test/e2e

bench-scale:
	$(GO) test -run '^$$' -bench 'Scale|HeapPerDelivery|ReadyScan|Recover' -benchtime 1x -timeout 30m ./internal/...

# 500,000 queued ~1 KB messages (spool + scheduler, deliveries held):
# heap per message and peak RSS, the figures in RELIABILITY.md.
bench-overload:
	$(GO) test -run '^$$' -bench 'Overload' -benchtime 1x -timeout 30m ./internal/scheduler
# The soak (issue 12): the built mtad under steady mixed load into sinks and
# a DNS server that misbehave on a schedule, for SOAK_DURATION (default 30m;
# SOAK_DURATION=3m for a quick look); RSS, goroutines and open fds are
# sampled every 10 s and must stay flat (exit 1 if not). SOAK_RATE sets
# messages/s (default 100). As root the spool is on a 2 GiB tmpfs filled
# (disk full) for one phase in four; SOAK_DISKFULL=0 turns that off.
# Not part of `make test`.
soak: build
	$(GO) run ./test/soak --mtad $(BIN)/mtad

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

# Binaries to $(PREFIX)/bin, the unit to $(UNITDIR), the config to
# /etc/mtad (an existing one is kept), the logrotate file, /var/spool/mtad,
# and the mtad system user (only as root without DESTDIR); see deploy/install.sh.
UNITDIR ?= /lib/systemd/system
install: build
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BIN='$(BIN)' UNITDIR='$(UNITDIR)' bash deploy/install.sh

clean:
	rm -rf $(BIN)
