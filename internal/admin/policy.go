package admin

// The policy endpoints: the shaping a domain/binding pair resolves to, with
// where each value came from; suspensions listed, added and lifted; rule
// throttles listed and lifted. The admin API only reads and checks the
// operator's input: every change goes through the Policy the daemon plugs
// in (the scheduler), which applies it and writes the one `policy` log
// record for it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mtad/mtad/internal/mx"
	"github.com/mtad/mtad/internal/policy"
)

// Policy is what the policy endpoints need from the daemon; cmd/mtad plugs
// the scheduler in. Every method is safe for concurrent use.
type Policy interface {
	// ResolveShaping returns the shaping of domain (in mx.Canonical form)
	// sent from binding ("" = no binding narrowing; otherwise a name
	// HasBinding knows), looking the domain's MX set up if need be.
	ResolveShaping(domain, binding string) (Shaping, error)
	// HasBinding reports whether name is a configured binding.
	HasBinding(name string) bool
	// HasProvider reports whether name is a provider of shaping.providers.
	HasProvider(name string) bool
	// Suspend puts sp in force, logs it, and returns the suspension in
	// force for its scope (an existing one that ends later is kept).
	Suspend(sp policy.Suspension) policy.Suspension
	// Resume lifts the suspension id and logs who did it and why; false
	// when there is none.
	Resume(id, who, reason string) (policy.Suspension, bool)
	// Suspensions lists the suspensions not ended at now.
	Suspensions(now time.Time) []policy.Suspension
	// Throttles lists the rule throttles not expired at now.
	Throttles(now time.Time) []policy.Override
	// Unthrottle lifts the throttle of the scope key at once and logs
	// who did it and why; false when there is none.
	Unthrottle(scope, who, reason string) (policy.Override, bool)
}

// Shaping is a pair's resolved shaping as the operator sees it.
type Shaping struct {
	Domain, Binding string
	MX              []string // the MX set it was resolved with; nil when unknown
	*policy.Shaping
}

// Limits on what an operator may write.
const (
	// MaxSuspension is the longest suspension the API accepts: every
	// suspension ends, and one meant to last longer belongs in the
	// configuration, where it is reviewed, rather than in memory.
	MaxSuspension = 30 * 24 * time.Hour
	// maxBody bounds a request body; a suspension request is < 1 KB.
	maxBody = 64 << 10
	// maxText bounds a reason, a name and a "by": they end up in every
	// listing and log record.
	maxText = 512
	// defaultBy is who acts when the request does not say.
	defaultBy = "operator"
)

// ----------------------------------------------------------------- shaping

// keyValue is one shaping key: its value and the scope it came from.
type keyValue struct {
	Value  any    `json:"value"`
	Source string `json:"source"`
}

// shapingJSON is GET /api/v1/shaping's answer. The keys are in the
// config's order (encoding/json keeps a struct's field order), which
// mtactl keeps in its table.
type shapingJSON struct {
	Domain   string   `json:"domain"`
	Binding  string   `json:"binding"`
	MX       []string `json:"mx"`
	Site     string   `json:"site"`
	Provider string   `json:"provider"`

	MXRollup                                 keyValue `json:"mx_rollup"`
	MaxConnections                           keyValue `json:"max_connections"`
	MaxDeliveriesPerConnection               keyValue `json:"max_deliveries_per_connection"`
	MaxMessageRate                           keyValue `json:"max_message_rate"`
	MaxConnectionRate                        keyValue `json:"max_connection_rate"`
	ProviderMaxConnections                   keyValue `json:"provider_max_connections"`
	ProviderMaxMessageRate                   keyValue `json:"provider_max_message_rate"`
	RetryInterval                            keyValue `json:"retry_interval"`
	MaxRetryInterval                         keyValue `json:"max_retry_interval"`
	MaxAge                                   keyValue `json:"max_age"`
	IdleTimeout                              keyValue `json:"idle_timeout"`
	ConsecutiveConnectionFailuresBeforeDelay keyValue `json:"consecutive_connection_failures_before_delay"`
	TLS                                      keyValue `json:"tls"`
	MTASTS                                   keyValue `json:"mta_sts"`
	DANE                                     keyValue `json:"dane"`
}

func shapingOf(r Shaping) shapingJSON {
	sh := r.Shaping
	src := func(k string) string { return sh.Sources[k] }
	kv := func(k string, v any) keyValue { return keyValue{Value: v, Source: src(k)} }
	mxs := r.MX
	if mxs == nil {
		mxs = []string{} // "not resolved" reads as an empty set, not null
	}
	return shapingJSON{
		Domain: r.Domain, Binding: r.Binding, MX: mxs, Site: sh.Site, Provider: sh.Provider,
		MXRollup:                   kv("mx_rollup", sh.MXRollup),
		MaxConnections:             kv("max_connections", sh.MaxConnections),
		MaxDeliveriesPerConnection: kv("max_deliveries_per_connection", sh.MaxDeliveriesPerConnection),
		MaxMessageRate:             kv("max_message_rate", sh.MaxMessageRate.String()),
		MaxConnectionRate:          kv("max_connection_rate", sh.MaxConnectionRate.String()),
		ProviderMaxConnections:     kv("provider_max_connections", sh.ProviderMaxConnections),
		ProviderMaxMessageRate:     kv("provider_max_message_rate", sh.ProviderMaxMessageRate.String()),
		RetryInterval:              kv("retry_interval", sh.RetryInterval.String()),
		MaxRetryInterval:           kv("max_retry_interval", sh.MaxRetryInterval.String()),
		MaxAge:                     kv("max_age", sh.MaxAge.String()),
		IdleTimeout:                kv("idle_timeout", sh.IdleTimeout.String()),
		ConsecutiveConnectionFailuresBeforeDelay: kv("consecutive_connection_failures_before_delay",
			sh.ConsecutiveConnectionFailuresBeforeDelay),
		TLS:    kv("tls", sh.TLS),
		MTASTS: kv("mta_sts", sh.MTASTS),
		DANE:   kv("dane", sh.DANE),
	}
}

// shaping serves GET /api/v1/shaping?domain=D[&binding=B].
func (s *Server) shaping(w http.ResponseWriter, r *http.Request) {
	q, err := params(r.URL.Query(), "domain", "binding")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if q["domain"] == "" {
		writeError(w, http.StatusBadRequest, "domain: required")
		return
	}
	domain, err := mx.Canonical(q["domain"])
	if err != nil || mx.IsLiteral(domain) {
		if err == nil {
			err = errors.New("an address literal has no shaping")
		}
		writeError(w, http.StatusBadRequest, "domain: "+err.Error())
		return
	}
	b := q["binding"]
	if b != "" && !s.opts.Policy.HasBinding(b) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("binding: no binding %q", b))
		return
	}
	res, err := s.opts.Policy.ResolveShaping(domain, b)
	if err != nil {
		// The input was checked above: what is left is the daemon's.
		writeError(w, http.StatusInternalServerError, "resolving the shaping of "+domain+": "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, shapingOf(res))
}

// ------------------------------------------------------------- suspensions

// suspensionJSON is a suspension as the API lists it.
type suspensionJSON struct {
	ID      string    `json:"id"`
	Scope   string    `json:"scope"`
	Name    string    `json:"name"`
	Binding string    `json:"binding"`
	Start   time.Time `json:"start"`
	Until   time.Time `json:"until"`
	Source  string    `json:"source"`
	Rule    string    `json:"rule"`
	Reason  string    `json:"reason"`
	Node    string    `json:"node,omitempty"` // the cluster node that set it, when another
}

func suspensionOf(sp policy.Suspension) suspensionJSON {
	return suspensionJSON{ID: sp.ID, Scope: string(sp.Kind), Name: sp.Name, Binding: sp.Binding,
		Start: sp.Start.UTC(), Until: sp.Until.UTC(), Source: sp.Source, Rule: sp.Rule, Reason: sp.Reason, Node: sp.Node}
}

// suspendRequest is POST /api/v1/suspensions's body.
type suspendRequest struct {
	Scope    string `json:"scope"`
	Name     string `json:"name"`
	Binding  string `json:"binding"`
	Duration string `json:"duration"`
	Reason   string `json:"reason"`
	By       string `json:"by"`
}

// fieldError is a refusal of one field of the operator's input.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// parseSuspend reads a suspension request and checks every field, naming
// the first bad one: the scope is one of the five kinds; name is a domain
// (domain, pair), a site key or "domain:" + a domain (site), a provider
// name (provider), or the binding (binding); binding, where given, is a
// binding hasBinding knows (required for pair); duration is a Go duration
// in (0, MaxSuspension]; reason is required. The suspension starts at now.
func parseSuspend(body []byte, now time.Time, hasBinding, hasProvider func(string) bool) (policy.Suspension, error) {
	var req suspendRequest
	if err := decodeStrict(body, &req); err != nil {
		return policy.Suspension{}, err
	}
	for _, f := range []struct{ name, v string }{
		{"scope", req.Scope}, {"name", req.Name}, {"binding", req.Binding},
		{"duration", req.Duration}, {"reason", req.Reason}, {"by", req.By},
	} {
		if err := checkText(f.v); err != nil {
			return policy.Suspension{}, &fieldError{f.name, err.Error()}
		}
	}
	sp := policy.Suspension{Kind: policy.ScopeKind(req.Scope), Binding: req.Binding, Source: policy.SourceOperator}
	name := strings.TrimSpace(req.Name)
	switch sp.Kind {
	case policy.ScopeDomain, policy.ScopePair:
		if name == "" {
			return sp, &fieldError{"name", "required: the domain to suspend"}
		}
		d, err := mx.Canonical(name)
		if err == nil && mx.IsLiteral(d) {
			err = errors.New("an address literal is not a domain")
		}
		if err != nil {
			return sp, &fieldError{"name", err.Error()}
		}
		sp.Name = d
		if sp.Kind == policy.ScopePair && sp.Binding == "" {
			return sp, &fieldError{"binding", "required for scope pair"}
		}
	case policy.ScopeSite:
		site, err := siteKey(name)
		if err != nil {
			return sp, &fieldError{"name", err.Error()}
		}
		sp.Name = site
	case policy.ScopeProvider:
		if name == "" {
			return sp, &fieldError{"name", "required: the provider's name, as in shaping.providers"}
		}
		if !hasProvider(name) {
			return sp, &fieldError{"name", fmt.Sprintf("no provider %q in shaping.providers", name)}
		}
		sp.Name = name
	case policy.ScopeBinding:
		// The binding is the name; "binding" may repeat it.
		switch {
		case name == "" && sp.Binding == "":
			return sp, &fieldError{"name", "required: the binding to suspend"}
		case name != "" && sp.Binding != "" && name != sp.Binding:
			return sp, &fieldError{"binding", fmt.Sprintf("%q differs from name %q for scope binding", sp.Binding, name)}
		case name != "":
			sp.Binding = name
		}
	case "":
		return sp, &fieldError{"scope", "required: one of domain, site, provider, binding, pair"}
	default:
		return sp, &fieldError{"scope", fmt.Sprintf("%q is not one of domain, site, provider, binding, pair", req.Scope)}
	}
	if sp.Binding != "" && !hasBinding(sp.Binding) {
		return sp, &fieldError{"binding", fmt.Sprintf("no binding %q", sp.Binding)}
	}
	if req.Duration == "" {
		return sp, &fieldError{"duration", "required, e.g. \"2h\": every suspension ends"}
	}
	d, err := time.ParseDuration(req.Duration)
	switch {
	case err != nil:
		return sp, &fieldError{"duration", fmt.Sprintf("%q is not a duration such as \"90m\" or \"2h\"", req.Duration)}
	case d <= 0:
		return sp, &fieldError{"duration", fmt.Sprintf("%q is not positive", req.Duration)}
	case d > MaxSuspension:
		return sp, &fieldError{"duration", fmt.Sprintf("%q is longer than %s", req.Duration, MaxSuspension)}
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		return sp, &fieldError{"reason", "required: say why; it is listed and logged"}
	}
	// Suspension.Source says what kind of actor acted ("operator"); who
	// it was goes with the reason, so that listings show it.
	if by := strings.TrimSpace(req.By); by != "" && by != defaultBy {
		reason += " (by " + by + ")"
	}
	sp.Reason = reason
	sp.Start, sp.Until = now, now.Add(d)
	return sp, nil
}

// siteKey checks and normalises a site name: MX host names joined with
// ",", or "domain:" + a domain (the site of a domain without MX rollup).
func siteKey(name string) (string, error) {
	if name == "" {
		return "", errors.New("required: the site's MX hosts joined with \",\" (as `mtactl shaping resolve` prints it)")
	}
	if d, ok := strings.CutPrefix(name, "domain:"); ok {
		c, err := mx.Canonical(strings.TrimSpace(d))
		if err != nil {
			return "", err
		}
		return "domain:" + c, nil
	}
	hosts := strings.Split(name, ",")
	for i, h := range hosts {
		c, err := mx.NormalizeDomain(strings.TrimSpace(h))
		if err != nil {
			return "", fmt.Errorf("MX host %q: %w", strings.TrimSpace(h), err)
		}
		hosts[i] = c
	}
	return policy.SiteKey(hosts), nil
}

// suspensions serves GET /api/v1/suspensions.
func (s *Server) suspensions(w http.ResponseWriter, r *http.Request) {
	if _, err := params(r.URL.Query()); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	list := s.opts.Policy.Suspensions(time.Now())
	out := make([]suspensionJSON, len(list))
	for i, sp := range list {
		out[i] = suspensionOf(sp)
	}
	writeJSON(w, http.StatusOK, map[string]any{"suspensions": out})
}

// suspend serves POST /api/v1/suspensions: 201 and the new suspension,
// or 200 and the existing one when its scope is already suspended until
// later (a suspension is never shortened by adding one).
func (s *Server) suspend(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	sp, err := parseSuspend(body, time.Now(), s.opts.Policy.HasBinding, s.opts.Policy.HasProvider)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	got := s.opts.Policy.Suspend(sp)
	code := http.StatusCreated
	if !got.Until.Equal(sp.Until) || got.Reason != sp.Reason {
		code = http.StatusOK
	}
	w.Header().Set("Location", "/api/v1/suspensions/"+url.PathEscape(got.ID))
	writeJSON(w, code, suspensionOf(got))
}

// resume serves DELETE /api/v1/suspensions/{id}[?by=WHO&reason=WHY].
func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	q, err := params(r.URL.Query(), "by", "reason")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	id := r.PathValue("id")
	sp, ok := s.opts.Policy.Resume(id, byOf(q, Who(r)), q["reason"])
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no suspension %q in force", id))
		return
	}
	writeJSON(w, http.StatusOK, suspensionOf(sp))
}

// ---------------------------------------------------------------- throttles

// throttleJSON is a rule throttle as the API lists it. Scope is the key
// DELETE /api/v1/throttles?scope= takes; Kind, Name and Binding are that
// key's parts.
type throttleJSON struct {
	Scope          string    `json:"scope"`
	Kind           string    `json:"kind"`
	Name           string    `json:"name"`
	Binding        string    `json:"binding"`
	Rule           string    `json:"rule"`
	MaxMessageRate *string   `json:"max_message_rate,omitempty"`
	MaxConnections *int      `json:"max_connections,omitempty"`
	Start          time.Time `json:"start"`
	End            time.Time `json:"end"`  // the override's values hold until End,
	Ramp           string    `json:"ramp"` // then climb back to normal over Ramp,
	Until          time.Time `json:"until"`
}

func throttleOf(o policy.Override) throttleJSON {
	kind, name, b := splitScopeKey(o.Scope)
	t := throttleJSON{Scope: o.Scope, Kind: kind, Name: name, Binding: b, Rule: o.Rule,
		MaxConnections: o.MaxConnections, Start: o.Start.UTC(), End: o.End.UTC(),
		Ramp: max(o.Ramp, 0).String(), Until: o.Until().UTC()}
	if o.MaxMessageRate != nil {
		r := o.MaxMessageRate.String()
		t.MaxMessageRate = &r
	}
	return t
}

// splitScopeKey undoes policy.ScopeKey ("kind:name|binding"); the name may
// hold ":" (a "domain:" site) but not "|".
func splitScopeKey(k string) (kind, name, binding string) {
	kind, rest, _ := strings.Cut(k, ":")
	i := strings.LastIndexByte(rest, '|')
	if i < 0 {
		return kind, rest, ""
	}
	return kind, rest[:i], rest[i+1:]
}

// throttles serves GET /api/v1/throttles.
func (s *Server) throttles(w http.ResponseWriter, r *http.Request) {
	if _, err := params(r.URL.Query()); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	list := s.opts.Policy.Throttles(time.Now())
	out := make([]throttleJSON, len(list))
	for i, o := range list {
		out[i] = throttleOf(o)
	}
	writeJSON(w, http.StatusOK, map[string]any{"throttles": out})
}

// unthrottle serves DELETE /api/v1/throttles?scope=KEY[&by=&reason=].
func (s *Server) unthrottle(w http.ResponseWriter, r *http.Request) {
	q, err := params(r.URL.Query(), "scope", "by", "reason")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if q["scope"] == "" {
		writeError(w, http.StatusBadRequest, "scope: required: a throttle's scope key as GET /api/v1/throttles lists it")
		return
	}
	o, ok := s.opts.Policy.Unthrottle(q["scope"], byOf(q, Who(r)), q["reason"])
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("scope: no throttle on %q", q["scope"]))
		return
	}
	writeJSON(w, http.StatusOK, throttleOf(o))
}

// ---------------------------------------------------------------- helpers

// params returns the query's parameters, refusing, by name, one not in
// allowed, one given twice, and a value that is not clean text.
func params(q url.Values, allowed ...string) (map[string]string, error) {
	out := make(map[string]string, len(q))
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		switch {
		case !ok:
			return nil, fmt.Errorf("%s: unknown parameter", k)
		case len(vs) > 1:
			return nil, fmt.Errorf("%s: given %d times", k, len(vs))
		}
		if err := checkText(vs[0]); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out[k] = vs[0]
	}
	return out, nil
}

// byOf is who acts: the "by" parameter; when absent, the name of the
// token that authenticated the request (token), else "operator".
func byOf(q map[string]string, token string) string {
	if by := strings.TrimSpace(q["by"]); by != "" {
		return by
	}
	if token != "" {
		return token
	}
	return defaultBy
}

// checkText refuses what would garble a listing or a log line: control
// characters, invalid UTF-8 (which JSON would turn into U+FFFD) and text
// past maxText bytes.
func checkText(s string) error {
	if len(s) > maxText {
		return fmt.Errorf("longer than %d bytes", maxText)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

// readBody reads a JSON request body of at most maxBody bytes, answering
// 415 for another content type and 413 for a longer body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	// Content-Type is required: a browser sends a cross-site POST without
	// a preflight only with no type or a form's, never with JSON's, so a
	// web page cannot make the (loopback, unauthenticated) API suspend
	// anything.
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: the body must be application/json", ct))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: longer than %d bytes", maxBody))
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, "body: "+err.Error())
		return nil, false
	}
	return body, true
}

// decodeStrict decodes one JSON object into v, refusing unknown fields,
// wrong types and anything after the object, each named.
func decodeStrict(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return &fieldError{"body", "empty: a JSON object is required"}
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return &fieldError{"body", fmt.Sprintf("not JSON at byte %d: %v", syn.Offset, syn)}
		case errors.As(err, &typ) && typ.Field != "":
			return &fieldError{typ.Field, fmt.Sprintf("must be a %s, not %s", typ.Type, typ.Value)}
		case errors.As(err, &typ):
			return &fieldError{"body", fmt.Sprintf("must be a JSON object, not %s", typ.Value)}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			// encoding/json has no error type for it; its text is stable.
			name := strings.TrimPrefix(err.Error(), "json: unknown field ")
			if name = strings.Trim(name, `"`); name == "" {
				return &fieldError{"body", `unknown field ""`}
			}
			return &fieldError{name, "unknown field"}
		case errors.Is(err, io.ErrUnexpectedEOF):
			return &fieldError{"body", "truncated JSON"}
		}
		return &fieldError{"body", err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &fieldError{"body", "more than one JSON value"}
	}
	return nil
}
