package main

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/binding"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/dkim"
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/logging"
	"github.com/mtad/mtad/internal/scheduler"
)

// reloader re-reads the config and the files it names, on SIGHUP and on
// POST /api/v1/reload alike (it is the admin API's Reloader). One reload
// runs at a time. A config or file that does not load or check refuses the
// whole reload and the running configuration stays; otherwise shaping,
// response rules, bounce classes, DKIM keys, admin tokens, the injection's
// AUTH users, TLS certificate and HTTP tokens, bindings and binding groups,
// and log.level take effect at once, and the keys that shape what is
// already built (listeners, spool, DNS, the connection pool) are reported
// as needing a restart, each with why, rather than half-applied.
type reloader struct {
	path string
	// started is the config the process started with: what a reload does
	// not apply is still as it was then, so a change waiting for a
	// restart is compared with it and reported until it is made or undone.
	started *config.Config

	sched    *scheduler.Scheduler
	bindings *binding.Set
	signer   *dkim.Signer
	adm      *admin.Server // set once built; the API cannot call before
	inj      injectors
	logOut   *logging.Output
	notify   *notifier
	log      *zap.Logger

	mu sync.Mutex // one reload at a time
}

// Reload is admin.Reloader's and the SIGHUP path's: it tells systemd
// RELOADING before and READY after, whatever the outcome (the daemon runs
// on, on the old config if the new one was refused), and writes one log
// record with the result.
func (r *reloader) Reload(who, reason string) admin.ReloadResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notify.reloading()
	defer r.notify.ready("delivering; configuration reloaded")
	res := admin.ReloadResult{At: time.Now()}
	restart, more, err := r.apply(&res)
	res.Duration = time.Since(res.At)
	res.OK = err == nil
	var keys []string
	for _, k := range restart {
		keys = append(keys, k.key)
		res.NeedingRestart = append(res.NeedingRestart, k.key+": "+k.why)
	}
	fields := append([]zap.Field{zap.Bool("ok", res.OK), zap.String("by", who), zap.String("reason", reason),
		zap.Strings("applied", res.Applied), zap.Strings("changed_needing_restart", keys),
		zap.Duration("took", res.Duration)}, more...)
	if err != nil {
		res.Error = err.Error()
		r.log.Error("reload refused: the running configuration is kept", append(fields, zap.Error(err))...)
		return res
	}
	r.log.Info("configuration reloaded: shaping, response rules, bounce classes, DKIM keys, injection files, bindings and log level applied", fields...)
	return res
}

// apply loads and checks the config, then applies it; nothing is applied
// when it returns an error. It returns the changed keys that need a
// restart and the log fields saying what the files held.
func (r *reloader) apply(res *admin.ReloadResult) ([]restartKey, []zap.Field, error) {
	next, err := config.Load(r.path)
	if err != nil {
		return nil, nil, err
	}
	st, err := buildStatics(next, zap.NewNop())
	if err != nil {
		return nil, nil, err
	}
	// Checked by buildStatics already; the swap itself checks again and
	// is all or nothing, so it goes first: a refusal here leaves
	// everything as it was.
	bcs, gcs := bindingConfigs(next)
	ch, err := r.bindings.Apply(bcs, gcs)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	// log.level was checked by config.Load: this does not fail.
	if err := r.logOut.SetLevel(next.Log.Level); err != nil {
		r.log.Error("log.level not changed", zap.Error(err))
	}

	r.sched.SetShaper(st.shaper)
	r.sched.SetRules(st.rules)
	r.sched.SetBounceClassifier(st.bounce)
	// The key files are re-read even when the config names the same ones:
	// rotating a key is replacing its file and reloading.
	r.signer.SetKeys(st.dkim)
	// The tokens file too: adding or revoking a token is editing it and
	// reloading. Removing tokens_file opens the API only on loopback
	// (buildStatics refused it otherwise, and SetTokens checks again).
	if err := r.adm.SetTokens(st.adminToks); err != nil {
		r.log.Error("admin tokens not changed", zap.Error(err))
	}
	// The injection files likewise: read and checked by buildStatics, so
	// these do not fail but for a listener's own refusal (logged).
	r.inj.apply(st, r.log)
	res.Applied = []string{"shaping", "response_rules", "delivery.bounce_classes_file", "dkim",
		"admin.tokens_file", "inject.smtp.auth_users_file", "inject.smtp.tls_cert", "inject.http.tokens_file",
		"bindings", "binding_groups", "log.level=" + r.logOut.Level()}
	for _, b := range ch.Retired {
		n, err := r.sched.RetireBinding(b.Slot)
		if err != nil {
			r.log.Error("retired binding's mail not moved: it moves as each delivery settles", zap.String("binding", b.Name), zap.Error(err))
			continue
		}
		res.Applied = append(res.Applied, fmt.Sprintf("bindings: %s retired, %d deliveries moved to group %s", b.Name, n, binding.DefaultName))
	}
	for _, n := range ch.Added {
		res.Applied = append(res.Applied, "bindings: "+n+" added")
	}
	for _, n := range ch.Changed {
		res.Applied = append(res.Applied, "bindings: "+n+" changed (next connection)")
	}
	return needingRestart(r.started, next), []zap.Field{
		zap.Int("dkim_keys", st.dkim.Len()),
		zap.String("bounce_classes_file", next.Delivery.BounceClassesFile),
		zap.String("response_rules_file", next.ResponseRulesFile), zap.Int("response_rules", st.rules.Len()),
		zap.Int("admin_tokens", st.adminToks.Len()),
		zap.Int("auth_users", len(st.users)), zap.Bool("inject_tls", st.tls != nil),
		zap.Int("http_inject_tokens", st.httpToks.Len()), zap.Int("binding_slots", r.bindings.Len()),
	}, nil
}

// restartKey is a changed config key that only a restart applies, and why.
type restartKey struct{ key, why string }

// needingRestart lists the keys changed since start that a reload does not
// apply, each with why, sorted.
func needingRestart(old, next *config.Config) []restartKey {
	var restart []restartKey
	add := func(changed bool, key, why string) {
		if changed {
			restart = append(restart, restartKey{key, why})
		}
	}
	add(fmt.Sprint(injectNeedingRestart(old.Inject)) != fmt.Sprint(injectNeedingRestart(next.Inject)),
		"inject", "listeners and their limits are set when they open")
	add(old.Spool != next.Spool, "spool", "the spool is open in its directory")
	add(old.Runtime != next.Runtime, "runtime", "the Go runtime's settings are set at start")
	// admin.tokens_file is applied.
	oa, na := old.Admin, next.Admin
	oa.TokensFile, na.TokensFile = "", ""
	add(fmt.Sprint(oa) != fmt.Sprint(na), "admin", "the admin listener is open")
	od, nd := old.Delivery, next.Delivery
	od.BounceClassesFile, nd.BounceClassesFile = "", "" // applied
	// Applied too: the shaping of every pair (the delivery.* timings are
	// its defaults).
	od.RetryInterval, od.MaxRetryInterval, od.MaxAge, od.IdleTimeout, od.TLS = 0, 0, 0, 0, ""
	nd.RetryInterval, nd.MaxRetryInterval, nd.MaxAge, nd.IdleTimeout, nd.TLS = 0, 0, 0, 0, ""
	add(fmt.Sprint(od) != fmt.Sprint(nd), "delivery", "the connection pool's caps, port and timeouts are set when it is built")
	add(fmt.Sprint(old.DNS) != fmt.Sprint(next.DNS), "dns", "the resolver and its cache are built at start")
	add(fmt.Sprint(old.Routes) != fmt.Sprint(next.Routes), "routes", "routes are the resolver's, built at start")
	add(fmt.Sprint(old.Hooks) != fmt.Sprint(next.Hooks), "hooks", "plugins are registered at start")
	ol, nl := old.Log, next.Log
	ol.Level, nl.Level = "", "" // applied
	add(ol != nl, "log", "the log file and format are opened at start (log.level is applied)")
	add(old.Hostname != next.Hostname, "hostname", "listeners and bindings say it from start")
	add(fmt.Sprint(old.Cluster) != fmt.Sprint(next.Cluster), "cluster",
		"the node joins the cluster at start (Redis client, node name, mode, fallback, lease and call timeouts)")
	// The TLS engine (tls.ca_file's roots, the MTA-STS cache, DANE) is
	// built once at start; tls.mta_sts and tls.dane as defaults of the
	// shaping are applied with it.
	ot, nt := old.TLS, next.TLS
	ot.MTASTS, ot.DANE, nt.MTASTS, nt.DANE = false, false, false, false
	add(ot != nt, "tls", "the outbound TLS engine (roots, MTA-STS cache) is built at start")
	sort.Slice(restart, func(i, j int) bool { return restart[i].key < restart[j].key })
	return restart
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
