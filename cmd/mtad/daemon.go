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
	"sort"
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
	httpToks  []string       // inject.http.tokens_file; nil = none
}

func buildStatics(cfg *config.Config, log *zap.Logger) (*statics, error) {
	st := &statics{metrics: prometheus.NewRegistry()}
	var err error

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
	if st.bindings, err = binding.New(bcs, gcs, cfg.Hostname, nil); err != nil {
		return nil, fmt.Errorf("bindings: %w", err)
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
	defer func() { _ = log.Sync(); _ = logOut.Close() }()
	// Until the signal loop runs (after recovery, which can take minutes),
	// a SIGHUP or logrotate's SIGUSR1 must not kill the daemon by their
	// default action: they are ignored until then (signal.Notify below
	// takes them over).
	signal.Ignore(syscall.SIGHUP, syscall.SIGUSR1)
	log.Info("starting", zap.String("version", version), zap.String("config", cfgPath), zap.Int("pid", os.Getpid()))
	gc, limit := applyRuntime(cfg.Runtime, os.Getenv)
	log.Info("go runtime", zap.String("gc_percent", gc), zap.String("memory_limit", limit))

	st, err := buildStatics(cfg, log)
	if err != nil {
		return err
	}
	st.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	sp, err := spool.Open(cfg.Spool.Dir, spool.Options{Logger: log.Named("spool")})
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer func() {
		if cerr := sp.Close(); cerr != nil {
			log.Error("closing the spool", zap.Error(cerr))
			err = errors.Join(err, cerr)
		}
	}()

	// MTA-STS policies are cached on disk beside the spool; the refreshes
	// in the background end before the process does. The policy servers'
	// addresses are refused or allowed as MX hosts' are.
	sts, err := tlspolicy.NewSTS(tlspolicy.STSOptions{Servers: cfg.DNS.Servers, DNSTimeout: cfg.DNS.Timeout,
		CacheDir: cfg.MTASTSDir(), Roots: st.roots, Logger: log.Named("mta-sts"),
		AllowLoopback: cfg.Delivery.AllowLoopbackMX, AllowedNetworks: st.allowed})
	if err != nil {
		return fmt.Errorf("tls.mta_sts_cache_dir: %w", err)
	}
	defer sts.Close()
	// DANE (RFC 7672) for the pairs whose shaping says dane: true: TLSA
	// records through dns.servers, which must validate DNSSEC (the AD
	// bit); validated records are checked in the handshake itself.
	dane := tlspolicy.DANEChecker(tlspolicy.NewDANE(cfg.DNS.Servers, cfg.DNS.Timeout, cfg.Delivery.Port), st.roots)
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

	// The current config, swapped whole on SIGHUP.
	var cur atomic.Pointer[config.Config]
	cur.Store(cfg)
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
	sched, err := scheduler.New(scheduler.Options{
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
	})
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	pending := sched.Pending
	queued.p.Store(&pending)

	t0 := time.Now()
	rs, err := sp.Recover(sched.Submit)
	if err != nil {
		_ = sched.Close(context.Background())
		return fmt.Errorf("spool recovery: %w", err)
	}
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
	hsrv, err := startHTTPInject(cfg, st.httpToks, sp, st.bindings, handoff{sched}, signer, log)
	if err != nil {
		if srv != nil {
			ctx, cancel := stopCtx(sc.ShutdownGrace)
			_ = srv.Shutdown(ctx)
			cancel()
		}
		return err
	}

	var stopping atomic.Bool // set when shutdown begins: /readyz says so
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
		Policy:  adminPolicy{sched, st.bindings},
		Summary: func() any { return sched.Summary() },
		Actions: adminActions{sched, st.bindings},
	})
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
			notify.reloading()
			reopenLog(logOut, log)
			reload(cfgPath, cfg, &cur, sched, signer, adm, injectors{srv, hsrv}, log)
			notify.ready("delivering; configuration reloaded")
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

// reload re-reads the config on SIGHUP. A bad file is logged and the running
// config kept. Shaping and the bounce classification rules (the
// file named by delivery.bounce_classes_file, re-read even when the name is
// unchanged) and the DKIM keys (files re-read; a bad one refuses the
// reload, so the old keys stay), and the injection's AUTH users file, TLS
// certificate and HTTP tokens file (likewise) take effect at once; keys that shape what is already built
// (listeners, spool, bindings, DNS) are reported as needing a restart
// rather than half-applied.
func reload(path string, started *config.Config, cur *atomic.Pointer[config.Config], sched *scheduler.Scheduler, signer *dkim.Signer, adm *admin.Server, inj injectors, log *zap.Logger) {
	next, err := config.Load(path)
	if err != nil {
		log.Error("reload refused: the running configuration is kept", zap.Error(err))
		return
	}
	st, err := buildStatics(next, zap.NewNop())
	if err != nil {
		log.Error("reload refused: the running configuration is kept", zap.Error(err))
		return
	}
	// What a reload does not apply is still as it was at start: compare
	// with that, not with the last reload's file, so a change waiting for
	// a restart is reported until it is made or undone.
	old := started
	var restart []string
	if fmt.Sprint(injectNeedingRestart(old.Inject)) != fmt.Sprint(injectNeedingRestart(next.Inject)) {
		restart = append(restart, "inject")
	}
	if old.Spool != next.Spool {
		restart = append(restart, "spool")
	}
	if old.Runtime != next.Runtime {
		restart = append(restart, "runtime")
	}
	if fmt.Sprint(old.Bindings, old.BindingGroups) != fmt.Sprint(next.Bindings, next.BindingGroups) {
		restart = append(restart, "bindings")
	}
	// admin.tokens_file is re-read and applied below.
	oa, na := old.Admin, next.Admin
	oa.TokensFile, na.TokensFile = "", ""
	od, nd := old.Delivery, next.Delivery
	od.BounceClassesFile, nd.BounceClassesFile = "", "" // applied below
	// Applied below too: the shaping of every pair (the delivery.* timings
	// are its defaults), and the response rules.
	od.RetryInterval, od.MaxRetryInterval, od.MaxAge, od.IdleTimeout, od.TLS = 0, 0, 0, 0, ""
	nd.RetryInterval, nd.MaxRetryInterval, nd.MaxAge, nd.IdleTimeout, nd.TLS = 0, 0, 0, 0, ""
	for _, c := range []struct {
		key      string
		old, new any
	}{
		{"dns", old.DNS, next.DNS}, {"routes", old.Routes, next.Routes}, {"delivery", od, nd},
		{"hooks", old.Hooks, next.Hooks}, {"log", old.Log, next.Log}, {"admin", oa, na},
		{"hostname", old.Hostname, next.Hostname},
	} {
		if fmt.Sprint(c.old) != fmt.Sprint(c.new) {
			restart = append(restart, c.key)
		}
	}
	// The TLS engine (tls.ca_file's roots, the MTA-STS cache, DANE) is
	// built once at start; tls.mta_sts and tls.dane as defaults of the
	// shaping are applied with it.
	ot, nt := old.TLS, next.TLS
	ot.MTASTS, ot.DANE, nt.MTASTS, nt.DANE = false, false, false, false
	if ot != nt {
		restart = append(restart, "tls")
	}
	sort.Strings(restart)
	cur.Store(next)
	sched.SetShaper(st.shaper)
	sched.SetRules(st.rules)
	sched.SetBounceClassifier(st.bounce)
	// The key files are re-read even when the config names the same ones:
	// rotating a key is replacing its file and sending SIGHUP.
	signer.SetKeys(st.dkim)
	// The tokens file too: adding or revoking a token is editing it and
	// sending SIGHUP. A file that does not load refused the reload above.
	// Removing tokens_file opens the API only on loopback (config
	// validation refused it otherwise, and SetTokens checks again).
	if err := adm.SetTokens(st.adminToks); err != nil {
		log.Error("admin tokens not changed", zap.Error(err))
	}
	// The injection files likewise: the AUTH users, the certificate and
	// the HTTP tokens, read and checked by buildStatics above, so these
	// do not fail but for a listener's own refusal (logged).
	inj.apply(st, log)
	log.Info("configuration reloaded: shaping, response rules, bounce classes, DKIM keys and injection files applied",
		zap.Int("dkim_keys", st.dkim.Len()),
		zap.String("bounce_classes_file", next.Delivery.BounceClassesFile),
		zap.String("response_rules_file", next.ResponseRulesFile), zap.Int("response_rules", st.rules.Len()),
		zap.Int("admin_tokens", st.adminToks.Len()),
		zap.Int("auth_users", len(st.users)), zap.Bool("inject_tls", st.tls != nil),
		zap.Int("http_inject_tokens", len(st.httpToks)),
		zap.Strings("changed_needing_restart", restart))
}

// injectors are the injection listeners a reload applies the users,
// certificate and tokens files to; either may be nil (not configured).
type injectors struct {
	smtp *inject.Server
	http *inject.HTTPServer
}

// apply gives the listeners the files' new contents. Each session reads
// them when it next uses them (inject's reload.go).
func (i injectors) apply(st *statics, log *zap.Logger) {
	if i.smtp != nil {
		if err := i.smtp.SetAuthUsers(st.users); err != nil {
			log.Error("inject.smtp.auth_users_file not changed", zap.Error(err))
		}
		if err := i.smtp.SetTLSConfig(st.tls); err != nil {
			log.Error("inject.smtp.tls_cert not changed", zap.Error(err))
		}
	}
	if i.http != nil {
		if err := i.http.SetTokens(st.httpToks); err != nil {
			log.Error("inject.http.tokens_file not changed", zap.Error(err))
		}
	}
}

// injectNeedingRestart is the inject section less what a reload applies:
// the users, certificate and tokens files (names and contents).
func injectNeedingRestart(in config.Inject) config.Inject {
	in.SMTP.AuthUsersFile, in.SMTP.TLSCert, in.SMTP.TLSKey = "", "", ""
	in.HTTP.TokensFile = ""
	return in
}

// startHTTPInject starts the HTTP injection API when inject.http.listen
// names addresses; nil when it does not.
func startHTTPInject(cfg *config.Config, toks []string, sp *spool.Spool, b inject.Bindings, h inject.Handoff, signer *dkim.Signer, log *zap.Logger) (*inject.HTTPServer, error) {
	hc := cfg.Inject.HTTP
	if len(hc.Listen) == 0 {
		return nil, nil
	}
	longLines := inject.LongLinesConvert
	if cfg.Inject.SMTP.LongLines == "reject" {
		longLines = inject.LongLinesReject
	}
	srv, err := inject.NewHTTP(inject.HTTPOptions{
		Listen:             hc.Listen,
		Tokens:             toks,
		Hostname:           cfg.Hostname,
		MaxMessageSize:     int64(hc.MaxMessageSize),
		MaxRecipients:      hc.MaxRecipients,
		MaxReceivedHeaders: cfg.Inject.SMTP.MaxReceivedHeaders,
		LongLines:          longLines,
		Logger:             log,
		DKIM:               signer,
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
