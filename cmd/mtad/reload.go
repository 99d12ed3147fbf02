package main

import (
	"fmt"
	"sort"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/config"
	"github.com/mtad/mtad/internal/dkim"
	"github.com/mtad/mtad/internal/inject"
	"github.com/mtad/mtad/internal/scheduler"
)

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
