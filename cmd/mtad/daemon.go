package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/connpool"
	"github.com/mtad/mtad/internal/dkim"
	"github.com/mtad/mtad/internal/hooks"
	_ "github.com/mtad/mtad/internal/hooks/accounting" // registers the "accounting" plugin
	_ "github.com/mtad/mtad/internal/hooks/adaptive"   // registers the "adaptive" plugin
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
	"github.com/mtad/mtad/internal/queue"
	"github.com/mtad/mtad/internal/scheduler"
	"github.com/mtad/mtad/internal/smtpclient"
	"github.com/mtad/mtad/internal/spool"
	"github.com/mtad/mtad/internal/tlspolicy"
	"github.com/mtad/mtad/internal/tokens"
)

// statics is what is built from a config without touching the spool or the
// network: the parts --check-config verifies.
type statics struct {
	bindings  *binding.Set
	tls       *tls.Config
	users     map[string][]byte
	relay     []netip.Prefix
	hooks     *hooks.Registry
	resolver  *mx.Resolver
	metrics   *prometheus.Registry
	pluginCfg map[string]map[string]any
	bounce    *policy.Classifier
	shaper    *policy.Shaper
	rules     *policy.Rules
	dkim      *dkim.Keys
	roots     *x509.CertPool // system + tls.ca_file
	allowed   []netip.Prefix // delivery.allowed_networks
	adminToks *admin.Tokens  // admin.tokens_file; nil = none
	httpToks  *tokens.Tokens // inject.http.tokens_file; nil = none
}

func buildStatics(cfg *config.Config, log *zap.Logger) (*statics, error) {
	st := &statics{metrics: prometheus.NewRegistry()}
	var err error

	bcs, gcs := bindingConfigs(cfg)
	if st.bindings, err = binding.New(bcs, gcs, cfg.Hostname, nil); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	sc := cfg.Inject.SMTP
	for i, n := range sc.RelayNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("config: inject.smtp.relay_networks[%d]: %w", i, err)
		}
		st.relay = append(st.relay, p.Masked())
	}
	if sc.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(sc.TLSCert, sc.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("config: inject.smtp.tls_cert/tls_key: %w", err)
		}
		st.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if sc.AuthUsersFile != "" {
		if st.users, err = inject.LoadUsers(sc.AuthUsersFile); err != nil {
			return nil, fmt.Errorf("config: inject.smtp.auth_users_file: %w", err)
		}
	}

	if hc := cfg.Inject.HTTP; hc.TokensFile != "" {
		if st.httpToks, err = inject.LoadTokens(hc.TokensFile); err != nil {
			return nil, fmt.Errorf("config: inject.http.tokens_file: %w", err)
		}
	} else {
		// Checked here, not only when the server starts, so that a reload
		// removing the tokens from an open listener is refused whole.
		for i, a := range hc.Listen {
			if !config.LoopbackListen(a) {
				return nil, fmt.Errorf("config: inject.http.tokens_file: must be set, inject.http.listen[%d] %q is not a loopback address", i, a)
			}
		}
	}

	if cfg.Admin.TokensFile != "" {
		if st.adminToks, err = admin.LoadTokens(cfg.Admin.TokensFile); err != nil {
			return nil, fmt.Errorf("config: admin.tokens_file: %w", err)
		}
	}

	routes := make([]mx.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		routes[i] = mx.Route{Domain: r.Domain, Host: r.Host}
	}
	allowed, err := mx.ParseNetworks(cfg.Delivery.AllowedNetworks)
	if err != nil {
		return nil, fmt.Errorf("config: delivery.allowed_networks%w", err)
	}
	st.allowed = allowed
	st.resolver, err = mx.New(mx.Options{
		Servers:         cfg.DNS.Servers,
		Timeout:         cfg.DNS.Timeout,
		Port:            cfg.Delivery.Port,
		AllowLoopback:   cfg.Delivery.AllowLoopbackMX,
		AllowedNetworks: allowed,
		Routes:          routes,
		CacheSize:       cfg.DNS.CacheSize,
		MaxMXHosts:      cfg.DNS.MaxMXHosts,
		MaxAddrsPerHost: cfg.DNS.MaxAddressesPerHost,
		MaxAddrs:        cfg.DNS.MaxAddresses,
		Metrics:         st.metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("dns/routes: %w", err)
	}

	if st.roots, err = cfg.Roots(); err != nil {
		return nil, err
	}

	if st.bounce, err = policy.LoadClassifier(cfg.Delivery.BounceClassesFile); err != nil {
		return nil, fmt.Errorf("config: delivery.bounce_classes_file: %w", err)
	}
	if st.shaper, err = policy.NewShaper(cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if st.rules, err = policy.LoadRules(cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	// Keys are read (and, for dns_check entries, looked up) here, so a
	// bad key stops the start, --check-config and a reload alike.
	if st.dkim, err = dkim.Load(cfg.DKIM); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.DNS.Timeout*time.Duration(max(1, len(cfg.DKIM))))
	err = dkim.CheckDNS(ctx, st.dkim, cfg.DNS.Servers, cfg.DNS.Timeout)
	cancel()
	if err != nil {
		return nil, err
	}

	st.pluginCfg = make(map[string]map[string]any, len(cfg.Hooks.Settings))
	for name, v := range cfg.Hooks.Settings {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("config: hooks.settings.%s: must be a map of settings, not %T", name, v)
		}
		if !contains(cfg.Hooks.Plugins, name) {
			return nil, fmt.Errorf("config: hooks.settings.%s: plugin %q is not in hooks.plugins", name, name)
		}
		st.pluginCfg[name] = m
	}
	st.hooks = hooks.NewRegistry()
	if err := hooks.Enable(st.hooks, cfg.Hooks.Plugins, st.pluginCfg, hooks.PluginConfig{
		Logger:  log,
		Metrics: st.metrics,
		Now:     time.Now,
	}); err != nil {
		return nil, err
	}
	return st, nil
}

// bindingConfigs is the bindings and binding_groups sections as the
// binding package takes them.
func bindingConfigs(cfg *config.Config) ([]binding.Config, []binding.GroupConfig) {
	bcs := make([]binding.Config, len(cfg.Bindings))
	for i, b := range cfg.Bindings {
		bcs[i] = binding.Config{Name: b.Name, Address: b.Address, EHLO: b.EHLO}
	}
	gcs := make([]binding.GroupConfig, len(cfg.BindingGroups))
	for i, g := range cfg.BindingGroups {
		gcs[i].Name = g.Name
		for _, m := range g.Bindings {
			gcs[i].Members = append(gcs[i].Members, binding.Member{Name: m.Name, Weight: m.Weight})
		}
	}
	return bcs, gcs
}

func checkConfig(cfg *config.Config) error {
	_, err := buildStatics(cfg, zap.NewNop())
	return err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// handoff adapts the scheduler to the injection listener's Handoff. It
// goes through the scheduler's intake, which never blocks: the 250 is
// written without waiting on maintenance, hooks or dials. What the intake
// still holds at shutdown is in the spool and recovered at the next start.
type handoff struct {
	s *scheduler.Scheduler
}

// Submit hands a spooled message to the scheduler and returns at once.
func (h handoff) Submit(m *spool.Message) { h.s.Intake(m) }

// Busy reports whether the scheduler's intake is nearly full; the
// listener answers MAIL with 451 4.3.2 while it is.
func (h handoff) Busy() bool { return h.s.Busy() }

// adminPolicy adapts the scheduler to the admin API's Policy: the
// scheduler owns shaping, suspensions and throttles and logs every change;
// the bindings answer which names exist.
type adminPolicy struct {
	*scheduler.Scheduler
	bindings *binding.Set
}

// ResolveShaping is admin.Policy's.
func (p adminPolicy) ResolveShaping(domain, b string) (admin.Shaping, error) {
	r, err := p.Scheduler.ResolveShaping(domain, b)
	if err != nil {
		return admin.Shaping{}, err
	}
	return admin.Shaping{Domain: r.Domain, Binding: r.Binding, MX: r.MX, Shaping: r.Shaping}, nil
}

// HasBinding is admin.Policy's.
func (p adminPolicy) HasBinding(name string) bool { return p.bindings.ByName(name) != nil }

// listenerCheck is /readyz's listener check: the injection listener has
// every address it was configured with bound, and shutdown has not begun.
type listenerCheck struct {
	srv      *inject.Server // nil when no injection address is configured
	want     int
	http     *inject.HTTPServer // nil when inject.http.listen is empty
	httpWant int
	stopping *atomic.Bool
}

// Listening is admin.ListenerCheck's.
func (l listenerCheck) Listening() error {
	if l.stopping.Load() {
		return errors.New("shutting down: no longer accepting mail")
	}
	if l.want > 0 {
		if l.srv == nil {
			return errors.New("SMTP injection not started")
		}
		if n := len(l.srv.Addrs()); n != l.want {
			return fmt.Errorf("SMTP injection listens on %d of its %d addresses", n, l.want)
		}
	}
	if l.httpWant > 0 {
		if l.http == nil {
			return errors.New("HTTP injection not started")
		}
		if n := len(l.http.Addrs()); n != l.httpWant {
			return fmt.Errorf("HTTP injection listens on %d of its %d addresses", n, l.httpWant)
		}
	}
	return nil
}

// runDaemon runs mtad until SIGTERM/SIGINT. Start order: spool, engine,
// recovery, injection, admin; stop order is the reverse, so nothing is
// accepted that can't be stored and the spool closes last.
func runDaemon(cfgPath string, cfg *config.Config) (err error) {
	log, logOut, err := logging.Open(logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, File: cfg.Log.File})
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer func() {
		if err == nil {
			// The last record of a clean stop, after the spool closed: an
			// operator reading the log knows the drain ended.
			log.Info("stopped")
		}
		_ = log.Sync()
		_ = logOut.Close()
	}()
	// Until the signal loop runs (after recovery, which can take minutes),
	// a SIGHUP or logrotate's SIGUSR1 must not kill the daemon by their
	// default action: they are ignored until then (signal.Notify below
	// takes them over).
	signal.Ignore(syscall.SIGHUP, syscall.SIGUSR1)
	log.Info("starting", zap.String("version", version), zap.String("config", cfgPath), zap.Int("pid", os.Getpid()))
	if os.Geteuid() == 0 {
		// Reached only with --allow-root (main refuses otherwise).
		log.Warn("running as root (--allow-root): the systemd unit runs mtad as the mtad user")
	}
	gc, limit := applyRuntime(cfg.Runtime, os.Getenv)
	log.Info("go runtime", zap.String("gc_percent", gc), zap.String("memory_limit", limit))

	st, err := buildStatics(cfg, log)
	if err != nil {
		return err
	}
	st.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// A missing or read-only spool.dir is one line and an exit; a damaged
	// store is salvaged (spool.Salvage), since a supervisor restarting
	// us would meet the same damage again, with the mail behind it.
	if err := spool.CheckDir(cfg.Spool.Dir); err != nil {
		return err
	}
	spoolOpts := spool.Options{Logger: log.Named("spool"), MinFreeBytes: int64(cfg.Spool.MinFree)} // 0: the spool's default
	var sp *spool.Spool
	if spool.SalvageUnfinished(cfg.Spool.Dir) {
		err = errors.New("a salvage of the spool was cut short; doing it again")
	} else {
		sp, err = spool.Open(cfg.Spool.Dir, spoolOpts)
	}
	if spool.IsDamage(err) || (sp == nil && spool.SalvageUnfinished(cfg.Spool.Dir)) {
		sp, err = salvageSpool(cfg.Spool.Dir, spoolOpts, err, log)
	}
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer func() {
		if sp == nil { // a salvage after recovery failed
			return
		}
		if cerr := sp.Close(); cerr != nil {
			log.Error("closing the spool", zap.Error(cerr))
			err = errors.Join(err, cerr)
		}
	}()

	// MTA-STS policies are cached on disk beside the spool; the refreshes
	// in the background end before the process does. The policy servers'
	// addresses are refused or allowed as MX hosts' are.
	// One health table of the DNS servers for MX, MTA-STS and DANE: a
	// server the MX lookups found dead is not waited on again for the
	// _mta-sts TXT or the TLSA records.
	dnsx := st.resolver.Exchanger()
	sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Exchanger: dnsx,
		CacheDir: cfg.MTASTSDir(), Roots: st.roots, Logger: log.Named("mta-sts"),
		AllowLoopback: cfg.Delivery.AllowLoopbackMX, AllowedNetworks: st.allowed})
	if err != nil {
		return fmt.Errorf("tls.mta_sts_cache_dir: %w", err)
	}
	defer sts.Close()
	// DANE (RFC 7672) for the pairs whose shaping says dane: true: TLSA
	// records through dns.servers, which must validate DNSSEC (the AD
	// bit); validated records are checked in the handshake itself.
	// Without dns.servers the resolver asks /etc/resolv.conf's, which
	// DANE must not trust to validate: NewDANE with none refuses lookups.
	daneLookup := tlspolicy.NewDANE(nil, cfg.DNS.Timeout, cfg.Delivery.Port)
	if len(cfg.DNS.Servers) > 0 {
		daneLookup = tlspolicy.NewDANEExchanger(dnsx, cfg.Delivery.Port)
	}
	dane := tlspolicy.DANEChecker(daneLookup, st.roots)
	tlsp, err := tlspolicy.New(tlspolicy.Options{Roots: st.roots, STS: sts, DANE: dane, Logger: log, Metrics: st.metrics})
	if err != nil {
		return err
	}
	signer := dkim.NewSigner(st.dkim)
	for _, k := range st.dkim.All() {
		log.Info("DKIM key loaded", zap.String("key", k.String()), zap.Bool("wildcard", k.Wildcard),
			zap.Int("bits", k.Bits), zap.String("file", k.File))
	}

	// systemd's notify protocol and watchdog (notify.go); the watchdog is
	// fed by the scheduler's ticks and stops after the scheduler does.
	notify, err := newNotifier(log, cfg.Delivery.MaintainInterval)
	if err != nil {
		return err
	}
	defer notify.stopWatchdog()
	notify.start()

	d := cfg.Delivery
	qs := queue.New()
	// Shared limits and suspensions with the other nodes (cluster.go);
	// closed after the scheduler, which gives its leases back first.
	var queued pendingOf
	cl, err := openCluster(cfg, queued.get, st.metrics, log)
	if err != nil {
		return err
	}
	if cl != nil {
		defer cl.Close()
	}
	schedOpts := scheduler.Options{
		Cluster: cl, ClusterLocal: cfg.Cluster.Mode == "local",
		Spool:    sp,
		Queues:   qs,
		Bindings: st.bindings,
		Hooks:    st.hooks,
		Hostname: cfg.Hostname,
		// Each pair's caps, rates, retry schedule, max_age and idle
		// timeout come from its shaping once its MX set is known.
		Shaper: st.shaper,
		Rules:  st.rules,
		// Operators' and rules' suspensions survive a restart.
		SuspensionsFile: filepath.Join(cfg.Spool.Dir, "suspensions.json"),
		Pool: connpool.Options{
			MaxConnections: d.MaxConnections,
			Resolver:       st.resolver,
			IdleTimeout:    d.IdleTimeout,
			ConnectTimeout: d.Timeouts.Connect,
			LookupTimeout:  cfg.DNS.Timeout,
			Timeouts: smtpclient.Timeouts{
				Greeting: d.Timeouts.Greeting, EHLO: d.Timeouts.EHLO, StartTLS: d.Timeouts.STARTTLS,
				Mail: d.Timeouts.Mail, Rcpt: d.Timeouts.Rcpt, DataInit: d.Timeouts.DataInit,
				DataBlock: d.Timeouts.DataBlock, DataTerm: d.Timeouts.DataTerm, Quit: d.Timeouts.Quit,
				Transaction: d.Timeouts.Transaction,
			},
			// Each pair's TLS policy, mta_sts and dane come from its
			// shaping (delivery.tls and tls.* are the defaults there).
			TLSPolicy:       tlsp,
			DisableChunking: !d.Chunking,
			TLSFailureTTL:   d.TLSFailureTTL,
			Logger:          log,
		},
		MaintainInterval: d.MaintainInterval,
		RetryInterval:    d.RetryInterval,
		MaxRetryInterval: d.MaxRetryInterval,
		MaxAge:           d.MaxAge,
		DelayWarning:     d.DelayWarning,
		Reserve:          d.Reserve,
		Bounce:           st.bounce,
		Metrics:          st.metrics,
		OnTick:           notify.beat,
		TopDomains:       cfg.Metrics.TopDomains,
		Logger:           log,
	}
	sched, err := scheduler.New(schedOpts)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	pending := sched.Pending
	queued.p.Store(&pending)

	t0 := time.Now()
	rs, err := sp.Recover(sched.Submit)
	if spool.IsDamage(err) {
		// Recovery met damage part way: what it handed the scheduler is
		// dropped with it, and salvage and recovery start again on a
		// fresh store, with a fresh scheduler.
		_ = sched.Close(context.Background())
		if cerr := sp.Close(); cerr != nil {
			log.Warn("closing the damaged spool", zap.Error(cerr))
		}
		sp = nil
		if sp, err = salvageSpool(cfg.Spool.Dir, spoolOpts, err, log); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		qs = queue.New()
		schedOpts.Spool, schedOpts.Queues = sp, qs
		if sched, err = scheduler.New(schedOpts); err != nil {
			return fmt.Errorf("scheduler: %w", err)
		}
		pending = sched.Pending
		queued.p.Store(&pending)
		rs, err = sp.Recover(sched.Submit)
	}
	if err != nil {
		_ = sched.Close(context.Background())
		return fmt.Errorf("spool recovery: %w", err)
	}
	bounceDamaged(sp, sched, log)
	logging.SpoolRecovered{Messages: rs.Messages, Recipients: rs.Recipients, Quarantined: rs.Quarantined}.Log(log)
	log.Info("spool recovery done", zap.Duration("took", time.Since(t0)), zap.Int("finished", rs.Finished))
	sched.Start()
	stopCtx := func(dur time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), dur)
	}
	defer func() {
		ctx, cancel := stopCtx(cfg.Inject.SMTP.ShutdownGrace)
		defer cancel()
		if cerr := sched.Close(ctx); cerr != nil {
			log.Warn("delivery engine stopped with deliveries cut short", zap.Error(cerr))
		}
	}()

	sc := cfg.Inject.SMTP
	var wm *inject.Watermark // shared by both listeners; nil = no limit
	if cfg.Spool.HighWatermark > 0 {
		if wm, err = inject.NewWatermark(cfg.Spool.HighWatermark, cfg.Spool.LowWatermark, sched.Queued, log); err != nil {
			return fmt.Errorf("spool.high_watermark: %w", err)
		}
	}
	var srv *inject.Server
	if len(sc.Listen)+len(sc.TLSListen) > 0 {
		longLines := inject.LongLinesConvert
		if sc.LongLines == "reject" {
			longLines = inject.LongLinesReject
		}
		srv, err = inject.New(inject.Options{
			Listen:               sc.Listen,
			TLSListen:            sc.TLSListen,
			MaxSessionsPerIP:     sc.MaxSessionsPerIP,
			MaxSessionTime:       sc.MaxSessionTime,
			MaxCommands:          sc.MaxCommands,
			MaxAuthChecks:        sc.MaxAuthChecks,
			MaxReceivedHeaders:   sc.MaxReceivedHeaders,
			AllowAddressLiterals: sc.AllowAddressLiterals,
			LongLines:            longLines,
			RelayNetworks:        st.relay,
			Hostname:             cfg.Hostname,
			MaxMessageSize:       int64(sc.MaxMessageSize),
			MaxRecipients:        sc.MaxRecipients,
			MaxSessions:          sc.MaxSessions,
			TLSConfig:            st.tls,
			AuthUsers:            st.users,
			ReadTimeout:          sc.ReadTimeout,
			WriteTimeout:         sc.WriteTimeout,
			DataTimeout:          sc.DataTimeout,
			AuthFailDelay:        sc.AuthFailDelay,
			Logger:               log,
			DKIM:                 signer,
			Watermark:            wm,
		}, sp, st.bindings, handoff{sched})
		if err != nil {
			return fmt.Errorf("inject: %w", err)
		}
		if err := srv.Start(); err != nil {
			return fmt.Errorf("inject: %w", err)
		}
		for _, a := range srv.Addrs() {
			log.Info("listening for SMTP injection", zap.String("addr", a.String()))
		}
	}
	hsrv, err := startHTTPInject(cfg, st.httpToks, sp, st.bindings, handoff{sched}, signer, wm, log)
	if err != nil {
		if srv != nil {
			ctx, cancel := stopCtx(sc.ShutdownGrace)
			_ = srv.Shutdown(ctx)
			cancel()
		}
		return err
	}

	var stopping atomic.Bool // set when shutdown begins: /readyz says so
	rl := &reloader{path: cfgPath, started: cfg, sched: sched, bindings: st.bindings, signer: signer,
		inj: injectors{srv, hsrv}, logOut: logOut, notify: notify, log: log}
	var admCluster admin.Cluster
	if cl != nil {
		admCluster = clusterAdmin{cl}
	}
	adm := admin.New(admin.Options{
		Listen:       cfg.Admin.Listen,
		Tokens:       st.adminToks,
		Pprof:        cfg.Admin.Pprof,
		ReadTimeout:  cfg.Admin.ReadTimeout,
		WriteTimeout: cfg.Admin.WriteTimeout,
		IdleTimeout:  cfg.Admin.IdleTimeout,
		Cluster:      admCluster,
		Ready: admin.Readiness{Spool: sp, Scheduler: sched, MaintainInterval: d.MaintainInterval, Cluster: admCluster,
			Listeners: listenerCheck{srv: srv, want: len(sc.Listen) + len(sc.TLSListen),
				http: hsrv, httpWant: len(cfg.Inject.HTTP.Listen), stopping: &stopping}},
		Gatherer: st.metrics,
		Version:  version,
		Logger:   log,
		Status: func() any {
			return map[string]any{"queues": qs.Stats(), "connections": sched.Pool().Stats(), "messages_pending": sched.Pending()}
		},
		Policy:     adminPolicy{sched, st.bindings},
		Summary:    func() any { return sched.Summary() },
		Actions:    adminActions{sched, st.bindings},
		Reloader:   rl,
		Quarantine: adminQuarantine{sp, sched},
		Queues:     adminQueues{sched},
	})
	rl.adm = adm
	if err := adm.Start(); err != nil {
		if hsrv != nil {
			ctx, cancel := stopCtx(sc.ShutdownGrace)
			_ = hsrv.Shutdown(ctx)
			cancel()
		}
		if srv != nil {
			ctx, cancel := stopCtx(sc.ShutdownGrace)
			_ = srv.Shutdown(ctx)
			cancel()
		}
		return fmt.Errorf("admin: %w", err)
	}
	if a := adm.Addr(); a != nil {
		log.Info("admin API listening", zap.String("addr", a.String()))
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	notify.ready("delivering")
	log.Info("ready")

	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1: // logrotate's postrotate (deploy/logrotate/mtad)
			reopenLog(logOut, log)
			continue
		case syscall.SIGHUP: // ExecReload=
			reopenLog(logOut, log)
			rl.Reload("SIGHUP", "")
			continue
		}
		log.Info("stopping", zap.String("signal", sig.String()))
		break
	}
	notify.stopping()
	stopping.Store(true)

	ctx, cancel := stopCtx(sc.ShutdownGrace)
	defer cancel()
	if srv != nil {
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("injection sessions cut at the shutdown deadline", zap.Error(err))
		}
	}
	if hsrv != nil {
		if err := hsrv.Shutdown(ctx); err != nil {
			log.Warn("HTTP injection requests cut at the shutdown deadline", zap.Error(err))
		}
	}
	if err := adm.Shutdown(ctx); err != nil {
		log.Warn("admin API shutdown", zap.Error(err))
	}
	log.Info("stopped accepting; draining delivery")
	return nil
}

// salvageSpool replaces the damaged store in dir (cause is the read error
// that showed it) with a fresh one holding what could be read, and logs
// one spool_salvaged record.
func salvageSpool(dir string, opts spool.Options, cause error, log *zap.Logger) (*spool.Spool, error) {
	sp, st, err := spool.Salvage(dir, opts, cause)
	if err != nil {
		return nil, err
	}
	logging.SpoolSalvaged{Copied: st.Copied, Quarantined: st.Quarantined, DSNOwed: st.DSNOwed, NoticeOwed: st.NoticeOwed, Orphans: st.Orphans,
		KeptQuarantined: st.KeptQuarantined, KeptDSNOwed: st.KeptDSNOwed, DamagedRanges: st.DamagedRanges, DamagedDir: st.DamagedDir, Cause: spool.ErrLine(cause)}.Log(log)
	return sp, nil
}

// bounceDamaged sends the DSNs (or damage notices, see
// scheduler.BounceDamaged) owed for messages a salvage (this start or an
// earlier one cut short) quarantined with a readable envelope. One that
// cannot be spooled now stays owed and is tried at the next start.
func bounceDamaged(sp *spool.Spool, sched *scheduler.Scheduler, log *zap.Logger) {
	owed, err := sp.SalvageOwed()
	if err != nil {
		log.Error("reading the DSNs owed for damaged messages", zap.Error(err))
		return
	}
	for _, m := range owed {
		if _, err := sched.BounceDamaged(m); err != nil {
			log.Error("DSN for a damaged message; tried again at the next start", zap.String("queue_id", m.ID), zap.Error(err))
			continue
		}
		if err := sp.SalvageDSNSent(m.ID); err != nil {
			log.Error("recording the DSN sent for a damaged message", zap.String("queue_id", m.ID), zap.Error(err))
		}
	}
}

// startHTTPInject starts the HTTP injection API when inject.http.listen
// names addresses; nil when it does not.
func startHTTPInject(cfg *config.Config, toks *tokens.Tokens, sp *spool.Spool, b inject.Bindings, h inject.Handoff, signer *dkim.Signer, wm *inject.Watermark, log *zap.Logger) (*inject.HTTPServer, error) {
	hc := cfg.Inject.HTTP
	if len(hc.Listen) == 0 {
		return nil, nil
	}
	longLines := inject.LongLinesConvert
	if cfg.Inject.SMTP.LongLines == "reject" {
		longLines = inject.LongLinesReject
	}
	srv, err := inject.NewHTTP(inject.HTTPOptions{
		Listen:               hc.Listen,
		Tokens:               toks,
		Hostname:             cfg.Hostname,
		MaxMessageSize:       int64(hc.MaxMessageSize),
		MaxRecipients:        hc.MaxRecipients,
		MaxReceivedHeaders:   cfg.Inject.SMTP.MaxReceivedHeaders,
		LongLines:            longLines,
		AllowAddressLiterals: cfg.Inject.SMTP.AllowAddressLiterals,
		Logger:               log,
		DKIM:                 signer,
		Watermark:            wm,
	}, sp, b, h)
	if err != nil {
		return nil, fmt.Errorf("inject.http: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("inject.http: %w", err)
	}
	for _, a := range srv.Addrs() {
		log.Info("listening for HTTP injection", zap.String("addr", a.String()))
	}
	return srv, nil
}
