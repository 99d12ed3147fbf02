// Command benchreport turns the benchmark's raw results into the side-by-side
// table: for each workload and MTA (ceiling, postfix, mtad) the injection
// rate, delivered rate, reception→delivery latency p50/p99, peak memory and
// CPU seconds per 1,000 messages, then mtad's ratios to Postfix and to the
// ceiling, and what each mtad-only variant of a workload (W1S shaped, W1R
// and W1E DKIM-signed) costs against it. A leg whose injection was paced
// (rate=, msgs/s offered) shows its offered rate next to the workload's
// name, in the list of workloads and in the notes, so a latency is never
// read without the load it was measured at. It reads the *.leg files run.sh
// writes (key=value lines naming the sink's stats, benchmon's result and the
// daemon's log), prints the table as Markdown and, with -md, writes it with
// the run's description to a file.
//
// It only reads what the run left behind; it must never start or signal
// anything.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

func main() {
	dir := flag.String("legs", "", "directory of *.leg files")
	md := flag.String("md", "", "also write the report (with -meta and the method) to this Markdown file")
	meta := flag.String("meta", "", "file of lines describing the run, put at the top of -md")
	flag.Parse()
	if *dir == "" {
		fatal(errors.New("-legs is required"))
	}
	legs, err := readLegs(*dir)
	if err != nil {
		fatal(err)
	}
	rows := make([]row, 0, len(legs))
	for _, l := range legs {
		rows = append(rows, compute(l))
	}
	table := render(rows)
	fmt.Print(table)
	if *md == "" {
		return
	}
	var b strings.Builder
	b.WriteString("# mtad side-by-side benchmark\n\n")
	if *meta != "" {
		m, err := os.ReadFile(*meta)
		if err != nil {
			fatal(fmt.Errorf("reading -meta: %w", err))
		}
		b.Write(m)
		b.WriteString("\n")
	}
	b.WriteString(table)
	b.WriteString(method)
	if err := os.WriteFile(*md, []byte(b.String()), 0o644); err != nil {
		fatal(fmt.Errorf("writing -md: %w", err))
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchreport:", err)
	os.Exit(1)
}

// leg is one workload run against one MTA, as run.sh describes it.
type leg map[string]string

func (l leg) int(key string) int64 {
	v, _ := strconv.ParseInt(l[key], 10, 64)
	return v
}

// readLegs reads dir/*.leg in name order (run.sh numbers them in run order).
func readLegs(dir string) ([]leg, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.leg"))
	if err != nil {
		return nil, fmt.Errorf("listing legs: %w", err)
	}
	sort.Strings(names)
	var out []leg
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			return nil, fmt.Errorf("opening leg: %w", err)
		}
		l, err := parseLeg(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", n, err)
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no *.leg files in %s", dir)
	}
	return out, nil
}

// parseLeg reads key=value lines; blank lines and lines starting with # are
// skipped, a later key wins.
func parseLeg(r io.Reader) (leg, error) {
	l := leg{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %q is not key=value", line)
		}
		l[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return l, sc.Err()
}

// sinkStats mirrors benchsink's stats file.
type sinkStats struct {
	Count  int64 `json:"count"`
	LastNs int64 `json:"last_ns"`
}

// monResult mirrors benchmon's result.
type monResult struct {
	CPUSeconds float64 `json:"cpu_s"`
	PeakPSSKB  int64   `json:"peak_pss_sum_kb"`
	PeakRSSKB  int64   `json:"peak_rss_sum_kb"`
	RootHWMKB  int64   `json:"root_hwm_kb"`
	MaxProcs   int     `json:"max_procs"`
	RootExited bool    `json:"root_exited"`
}

// row is one line of the table. NaN marks a figure that does not apply or
// could not be measured.
type row struct {
	workload, desc, mta string
	n, delivered        int64
	injRate, delRate    float64 // messages per second
	p50, p99            float64 // seconds
	memMB, cpuPer1k     float64
	rate, paceChunk     int64 // offered msgs/s and chunk per lane of a paced injection; 0 unpaced
	ok                  bool
	notes               []string
}

func compute(l leg) row {
	nan := math.NaN()
	r := row{workload: l["workload"], desc: l["desc"], mta: l["mta"], n: l.int("n"),
		injRate: nan, delRate: nan, p50: nan, p99: nan, memMB: nan, cpuPer1k: nan, ok: l["status"] == "ok"}
	if !r.ok {
		r.notes = append(r.notes, "FAILED: "+l["reason"])
	}
	start, end := l.int("inj_start_ns"), l.int("inj_end_ns")
	if fc := l.int("inj_failed_chunks"); fc > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d smtp-source runs failed", fc))
	}
	if end > start && start > 0 {
		r.injRate = float64(r.n) / (float64(end-start) / 1e9)
	}
	if r.rate = max(l.int("rate"), 0); r.rate > 0 {
		r.paceChunk = max(l.int("pace_chunk"), 0)
		note := fmt.Sprintf("paced injection: %d msgs/s offered", r.rate)
		if r.paceChunk > 0 {
			note += fmt.Sprintf(" (each lane in chunks of %d)", r.paceChunk)
		}
		if !math.IsNaN(r.injRate) {
			note += fmt.Sprintf(", %s msgs/s reached", num(r.injRate, 0))
			if r.injRate < 0.9*float64(r.rate) {
				note += ": the injection fell behind its pace, the latencies are not at the offered rate"
			}
		}
		r.notes = append(r.notes, note)
	}
	var st sinkStats
	if l["sink_stats"] == "" && !r.ok {
		// failed before the sink started: the reason says it all
	} else if err := readJSON(l["sink_stats"], &st); err != nil {
		r.notes = append(r.notes, "no sink stats: "+err.Error())
	} else {
		r.delivered = st.Count
		if st.LastNs > start && start > 0 {
			r.delRate = float64(st.Count) / (float64(st.LastNs-start) / 1e9)
		}
	}
	if algo := l["dkim_algo"]; algo != "" {
		r.notes = append(r.notes, fmt.Sprintf("DKIM: %d of %d received records name the a=%s signature", l.int("dkim_signed"), r.n, algo))
	}
	if r.delivered > r.n {
		r.notes = append(r.notes, fmt.Sprintf("%d duplicate deliveries", r.delivered-r.n))
	}
	if l["mon"] != "" {
		var m monResult
		if err := readJSON(l["mon"], &m); err != nil {
			r.notes = append(r.notes, "no cpu/memory figures: "+err.Error())
		} else {
			if m.MaxProcs > 1 {
				r.memMB = float64(m.PeakPSSKB) / 1024
				r.notes = append(r.notes, fmt.Sprintf("memory: peak Σ PSS over up to %d processes (Σ RSS %.0f MB)", m.MaxProcs, float64(m.PeakRSSKB)/1024))
			} else {
				r.memMB = float64(m.RootHWMKB) / 1024
			}
			if r.delivered > 0 {
				r.cpuPer1k = m.CPUSeconds / float64(r.delivered) * 1000
			}
			if m.RootExited {
				r.notes = append(r.notes, "daemon exited before the end of the measurement")
			}
		}
	}
	if kind := l["log_kind"]; kind != "" {
		s, err := summarizeLogs(kind, strings.Split(l["log"], ","))
		if err != nil {
			r.notes = append(r.notes, "latency: "+err.Error())
		} else {
			r.p50, r.p99 = percentile(s.latencies, 50), percentile(s.latencies, 99)
			r.notes = append(r.notes, fmt.Sprintf("latency from %s over %d deliveries", s.source, len(s.latencies)))
			var other []string
			for ev, c := range s.events {
				if ev != "sent" && ev != "delivered" && ev != "received" && ev != "connection" && c > 0 {
					other = append(other, fmt.Sprintf("%s %d", ev, c))
				}
			}
			sort.Strings(other)
			if len(other) > 0 {
				r.notes = append(r.notes, "log events: "+strings.Join(other, ", "))
			}
		}
	}
	return r
}

// summarizeLogs parses every existing file of paths as a log of kind.
func summarizeLogs(kind string, paths []string) (logSummary, error) {
	var all logSummary
	all.events = map[string]int{}
	found := false
	for _, p := range paths {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return all, fmt.Errorf("opening log: %w", err)
		}
		found = true
		var s logSummary
		switch kind {
		case "postfix":
			s, err = parsePostfixLog(f)
		case "mtad":
			s, err = parseMtadLog(f)
		default:
			err = fmt.Errorf("unknown log kind %q", kind)
		}
		f.Close()
		if err != nil {
			return all, err
		}
		all.latencies = append(all.latencies, s.latencies...)
		for k, v := range s.events {
			all.events[k] += v
		}
		if len(s.latencies) > 0 || all.source == "" {
			all.source = s.source
		}
	}
	if !found {
		return all, errors.New("no log file found")
	}
	return all, nil
}

func readJSON(path string, v any) error {
	if path == "" {
		return errors.New("no file named")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func num(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// ratio prints r with two decimals, or two significant digits when it is
// below 0.1 (mtad's latency can be a thousandth of Postfix's).
func ratio(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "–"
	}
	if r != 0 && math.Abs(r) < 0.1 {
		return strconv.FormatFloat(r, 'g', 2, 64)
	}
	return strconv.FormatFloat(r, 'f', 2, 64)
}

func ms(sec float64) string {
	if math.IsNaN(sec) {
		return "–"
	}
	return num(sec*1000, 1)
}

// render writes the main table, the ratio table and the notes.
func render(rows []row) string {
	var b strings.Builder
	b.WriteString("| workload | MTA | delivered | inj/s | delivered/s | p50 ms | p99 ms | peak mem MB | CPU s/1k msgs |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		mta := r.mta
		if !r.ok {
			mta += " (FAILED)"
		}
		fmt.Fprintf(&b, "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s |\n",
			r.label(), mta, r.delivered, r.n, num(r.injRate, 0), num(r.delRate, 0), ms(r.p50), ms(r.p99), num(r.memMB, 1), num(r.cpuPer1k, 3))
	}
	b.WriteString("\n")
	b.WriteString(ratios(rows))
	if vc := variantCost(rows); vc != "" {
		b.WriteString("\n")
		b.WriteString(vc)
	}
	b.WriteString("\nWorkloads:\n\n")
	seen := map[string]bool{}
	for _, r := range rows {
		if !seen[r.workload] {
			seen[r.workload] = true
			desc := r.desc
			if r.rate > 0 {
				desc += fmt.Sprintf(", paced at %d msgs/s offered", r.rate)
			}
			fmt.Fprintf(&b, "- %s: %s\n", r.workload, desc)
		}
	}
	b.WriteString("\nNotes:\n\n")
	for _, r := range rows {
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s %s: %s\n", r.workload, r.mta, n)
		}
	}
	return b.String()
}

// label is the row's workload as the tables show it: its name, and for a
// paced injection the offered rate.
func (r row) label() string {
	if r.rate > 0 {
		return fmt.Sprintf("%s @ %d/s", r.workload, r.rate)
	}
	return r.workload
}

// ratios compares mtad with Postfix and with the ceiling, per workload, for
// legs that succeeded. Higher is better for rates, lower for the rest.
func ratios(rows []row) string {
	byKey := map[string]row{}
	var order []string
	for _, r := range rows {
		if _, ok := byKey[r.workload+"/"+r.mta]; !ok && r.mta == "mtad" {
			order = append(order, r.workload)
		}
		byKey[r.workload+"/"+r.mta] = r
	}
	var b strings.Builder
	b.WriteString("| workload | ratio | inj/s | delivered/s | p50 | p99 | peak mem | CPU/1k |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|\n")
	div := func(a, c float64) string {
		if c == 0 {
			return "–"
		}
		return ratio(a / c)
	}
	wrote := false
	for _, w := range order {
		m := byKey[w+"/mtad"]
		lw := m.label()
		if !m.ok {
			fmt.Fprintf(&b, "| %s | mtad failed | – | – | – | – | – | – |\n", lw)
			wrote = true
			continue
		}
		if p, ok := byKey[w+"/postfix"]; ok && p.ok {
			fmt.Fprintf(&b, "| %s | mtad/Postfix | %s | %s | %s | %s | %s | %s |\n", lw,
				div(m.injRate, p.injRate), div(m.delRate, p.delRate), div(m.p50, p.p50), div(m.p99, p.p99), div(m.memMB, p.memMB), div(m.cpuPer1k, p.cpuPer1k))
			wrote = true
		}
		if c, ok := byKey[w+"/ceiling"]; ok && c.ok {
			fmt.Fprintf(&b, "| %s | mtad/ceiling | %s | %s | – | – | – | – |\n", lw, div(m.injRate, c.injRate), div(m.delRate, c.delRate))
			wrote = true
		}
	}
	switch {
	case len(order) == 0:
		return "(no mtad leg, no ratios)\n"
	case !wrote:
		return "(no Postfix or ceiling leg to compare mtad with, no ratios)\n"
	}
	return b.String()
}

// variants are the mtad-only workloads that repeat another one (their name
// less the last letter: W1S, W1R and W1E repeat W1) with one thing changed,
// so that the difference between the two mtad legs is what that thing costs.
var variants = map[byte]string{
	'S': "shaping config whose limits are never reached",
	'R': "DKIM-signed, RSA-2048",
	'E': "DKIM-signed, Ed25519",
}

// variantOf returns the workload a variant repeats and what it changes, or
// ok false when w is no variant.
func variantOf(w string) (base, what string, ok bool) {
	if len(w) < 2 {
		return "", "", false
	}
	what, ok = variants[w[len(w)-1]]
	return w[:len(w)-1], what, ok
}

// variantCost compares each variant's mtad leg (W1S, W1R, W1E) with its base
// workload's (W1): one row for the base's figures, then one per variant with
// its figures and their change from the base, then for each the CPU per
// message the change adds (CPU s/1k msgs is ms per message). Empty when no
// variant has its base's mtad leg in the run. The legs run one after the
// other, so the machine's drift between them is in the figures too.
func variantCost(rows []row) string {
	mtad := map[string]row{}
	var order []string
	for _, r := range rows {
		if r.mta != "mtad" {
			continue
		}
		if _, seen := mtad[r.workload]; !seen {
			order = append(order, r.workload)
		}
		mtad[r.workload] = r
	}
	type pair struct {
		base, v row
		what    string
	}
	byBase := map[string][]pair{}
	var bases []string
	for _, w := range order {
		bw, what, ok := variantOf(w)
		if !ok {
			continue
		}
		b, ok := mtad[bw]
		if !ok {
			continue
		}
		if len(byBase[bw]) == 0 {
			bases = append(bases, bw)
		}
		byBase[bw] = append(byBase[bw], pair{b, mtad[w], what})
	}
	if len(bases) == 0 {
		return ""
	}
	// cell is a variant's figure and its change from the base's.
	cell := func(v, base float64, prec int) string {
		if math.IsNaN(v) {
			return "–"
		}
		if d := pctDiff(v, base); d != "–" {
			return num(v, prec) + " (" + d + ")"
		}
		return num(v, prec)
	}
	var b, added strings.Builder
	b.WriteString("| variant cost (mtad) | against | delivered/s | inj/s | CPU s/1k msgs | p99 ms |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|\n")
	for _, bw := range bases {
		base := byBase[bw][0].base
		if !base.ok {
			fmt.Fprintf(&b, "| %s | – | failed | – | – | – |\n", bw)
		} else {
			fmt.Fprintf(&b, "| %s | – | %s | %s | %s | %s |\n", bw,
				num(base.delRate, 0), num(base.injRate, 0), num(base.cpuPer1k, 3), ms(base.p99))
		}
		for _, p := range byBase[bw] {
			name := p.v.workload + ": " + p.what
			switch {
			case !p.v.ok:
				fmt.Fprintf(&b, "| %s | %s | failed | – | – | – |\n", name, bw)
				continue
			case !base.ok:
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", name, bw,
					num(p.v.delRate, 0), num(p.v.injRate, 0), num(p.v.cpuPer1k, 3), ms(p.v.p99))
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", name, bw,
				cell(p.v.delRate, base.delRate, 0), cell(p.v.injRate, base.injRate, 0),
				cell(p.v.cpuPer1k, base.cpuPer1k, 3), cell(p.v.p99*1000, base.p99*1000, 1))
			if d := p.v.cpuPer1k - base.cpuPer1k; !math.IsNaN(d) {
				fmt.Fprintf(&added, "- %s (%s) against %s: CPU per message added: %s ms (%s → %s ms)\n",
					p.v.workload, p.what, bw, strconv.FormatFloat(d, 'f', 3, 64), num(base.cpuPer1k, 3), num(p.v.cpuPer1k, 3))
			}
		}
	}
	if added.Len() > 0 {
		b.WriteString("\n")
		b.WriteString(added.String())
	}
	return b.String()
}

// pctDiff is (v − base)/base as a signed percentage with one decimal
// ("+5.0%", "-5.0%").
func pctDiff(v, base float64) string {
	if base == 0 || math.IsNaN(v) || math.IsNaN(base) || math.IsInf(v, 0) || math.IsInf(base, 0) {
		return "–"
	}
	d := strconv.FormatFloat((v-base)/base*100, 'f', 1, 64)
	if !strings.HasPrefix(d, "-") {
		d = "+" + d
	}
	return d + "%"
}

const method = `
## How each figure is measured

- **inj/s**: messages ÷ wall time of the injection (20 concurrent smtp-source
  sessions, one message per connection, one recipient per message). A
  workload shown as "W1H @ 750/s" was paced: each session (lane) sent chunks
  of a few messages on a schedule that offers that many messages per second
  in all, so inj/s is the rate reached, close to the offered one unless the
  MTA could not take it (the notes say so), and delivered/s can be no higher;
  its p50/p99 are the latencies at that load.
- **delivered/s**: messages the counting sink received ÷ (last arrival at the
  sink − first injection). For the ceiling smtp-source talks to the sink
  directly, so this is what injection alone can reach on this machine.
- **p50/p99**: reception → delivery per message, from the daemon's own log.
  mtad: the ` + "`delay`" + ` field of each ` + "`delivered`" + ` record (time since the
  message was received). Postfix: ` + "`delay=`" + ` of each ` + "`status=sent`" + ` line
  (time since the queue file was created, which is at MAIL FROM, so it also
  holds the DATA transfer: a few ms at most here). Not measured for the
  ceiling.
- **peak mem MB**: mtad: VmHWM (peak RSS) of the process. Postfix: the peak,
  over samples every 250 ms, of Σ PSS over master and all its children
  (Σ RSS would count the shared libraries once per process; it is in the notes).
- **CPU s/1k msgs**: CPU seconds (user+system, children that exited included)
  of the daemon's whole process tree from the start of injection to the last
  delivery, per 1,000 delivered messages. The injector, the sink and the DNS
  server are not counted, but they share the machine's CPUs with the daemon.
- Postfix sends to the sink without DNS: a transport map routes each test
  domain to its sink address ([127.0.1.N]:port), so each domain is its own
  Postfix destination, as each is its own domain for mtad, which resolves MX
  and A records through the benchmark's DNS server on loopback.
- Both MTAs fsync every message before acknowledging it; both keep their
  queue on the same file system.
- **variant cost**: W1 again into mtad alone with one thing changed, each
  variant's figures with their change from W1's mtad leg (a negative
  delivered/s or a positive CPU change is the cost), and the CPU per message
  the change adds (CPU s/1k msgs is ms per message). The legs run one after
  the other, so the machine's drift between them is in the figures too.
  - W1S: a shaping config of one entry per test domain (max_message_rate
    100000/s, max_connections 50) and provider entries that match none of
    the benchmark's MX hosts. No limit is ever reached, so the difference is
    what resolving and applying shaping costs (a token taken per delivery,
    the site's connection count, the suspension check).
  - W1R, W1E: every message DKIM-signed at injection for src.bench (the
    From domain smtp-source writes) with an RSA-2048 or an Ed25519 key made
    for the run by openssl: the signature itself, the body hash, and the
    second spool write of the body that signing makes. The leg fails unless
    every message's received record names the signature. They may hold
    fewer messages than W1 (BENCH_W1R_N, BENCH_W1E_N); the figures compared
    are per message or per second.
`
