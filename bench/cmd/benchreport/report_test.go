package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const postfixLog = `Nov 22 03:07:36 postfix postfix/smtpd[1]: 5E2479842D4: client=localhost[127.0.0.1]
Nov 22 03:07:36 postfix postfix/smtp[15734]: 5E2479842D4: to=<1bench@d5.bench>, relay=127.0.1.6[127.0.1.6]:40027, conn_use=19, delay=0.042, delays=0.034/0.003/0.002/0.003, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Nov 22 03:07:36 postfix postfix/smtp[15766]: 603019842E4: to=<2bench@d5.bench>, relay=127.0.1.6[127.0.1.6]:40027, delay=0.016, delays=0.011/0.001/0.004/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Nov 22 03:07:36 postfix postfix/smtp[15766]: 703019842E4: to=<3bench@d5.bench>, relay=none, delay=1.5, delays=1/0/0.5/0, dsn=4.4.1, status=deferred (connect to 127.0.1.6[127.0.1.6]:40027: Connection refused)
Nov 22 03:07:36 postfix postfix/qmgr[15305]: 5E2479842D4: removed
`

func TestParsePostfixLog(t *testing.T) {
	t.Parallel()
	s, err := parsePostfixLog(strings.NewReader(postfixLog))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.latencies) != 2 || s.latencies[0] != 0.042 || s.latencies[1] != 0.016 {
		t.Errorf("latencies %v, want [0.042 0.016]", s.latencies)
	}
	if s.events["sent"] != 2 || s.events["deferred"] != 1 || len(s.events) != 2 {
		t.Errorf("events %v, want sent 2 deferred 1", s.events)
	}
}

func TestParseMtadLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, log string
		want      []float64
		events    map[string]int
	}{
		{
			name: "delay field",
			log: `{"level":"info","ts":"2026-11-22T03:07:36.100Z","msg":"received","event":"received","queue_id":"Q1"}
{"level":"info","ts":"2026-11-22T03:07:36.150Z","msg":"delivered","event":"delivered","queue_id":"Q1","delay":0.0512}
not json at all
{"level":"info","ts":"2026-11-22T03:07:36.150Z","msg":"deferred","event":"deferred","queue_id":"Q2","delay":1}
{"level":"info","msg":"started"}`,
			want:   []float64{0.0512},
			events: map[string]int{"received": 1, "delivered": 1, "deferred": 1},
		},
		{
			name: "ts fallback",
			log: `{"ts":"2026-11-22T03:07:36.250+0000","event":"delivered","queue_id":"Q1"}
{"ts":"2026-11-22T03:07:36.100+0000","event":"received","queue_id":"Q1"}
{"ts":"2026-11-22T03:07:36.100+0000","event":"delivered","queue_id":"unknown"}`,
			want:   []float64{0.150},
			events: map[string]int{"received": 1, "delivered": 2},
		},
	}
	for _, tc := range tests {
		s, err := parseMtadLog(strings.NewReader(tc.log))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(s.latencies) != len(tc.want) {
			t.Fatalf("%s: latencies %v, want %v", tc.name, s.latencies, tc.want)
		}
		for i := range tc.want {
			if math.Abs(s.latencies[i]-tc.want[i]) > 1e-9 {
				t.Errorf("%s: latencies %v, want %v", tc.name, s.latencies, tc.want)
			}
		}
		if fmt.Sprint(s.events) != fmt.Sprint(tc.events) {
			t.Errorf("%s: events %v, want %v", tc.name, s.events, tc.events)
		}
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	xs := []float64{}
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	for p, want := range map[float64]float64{50: 50, 99: 99, 100: 100, 1: 1, 0.1: 1} {
		if got := percentile(append([]float64(nil), xs...), p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing is not NaN")
	}
}

func TestRatio(t *testing.T) {
	t.Parallel()
	for r, want := range map[float64]string{2.5: "2.50", 0.1: "0.10", 0.0512: "0.051", 0.000511: "0.00051", 0: "0.00", math.NaN(): "–"} {
		if got := ratio(r); got != want {
			t.Errorf("ratio(%v) = %q, want %q", r, got, want)
		}
	}
}

func TestParseLeg(t *testing.T) {
	t.Parallel()
	l, err := parseLeg(strings.NewReader("# comment\nworkload=W1\n\nreason=a = b\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l["workload"] != "W1" || l["reason"] != "a = b" {
		t.Errorf("leg %v", l)
	}
	if _, err := parseLeg(strings.NewReader("no equals sign\n")); err == nil {
		t.Error("a line without = was accepted")
	}
}

// TestReport builds the files of one workload's three legs and checks the
// figures and ratios that come out.
func TestReport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const s0 = int64(1_000_000_000_000_000_000)
	sec := int64(1e9)
	write("1.leg", fmt.Sprintf("workload=W1\ndesc=test\nmta=ceiling\nn=1000\nstatus=ok\ninj_start_ns=%d\ninj_end_ns=%d\nsink_stats=%s\n",
		s0, s0+sec, write("c.json", fmt.Sprintf(`{"count":1000,"last_ns":%d}`, s0+sec))))
	write("2.leg", fmt.Sprintf("workload=W1\ndesc=test\nmta=postfix\nn=1000\nstatus=ok\ninj_start_ns=%d\ninj_end_ns=%d\nsink_stats=%s\nmon=%s\nlog_kind=postfix\nlog=%s\n",
		s0, s0+4*sec, write("p.json", fmt.Sprintf(`{"count":1000,"last_ns":%d}`, s0+5*sec)),
		write("p.mon", `{"cpu_s":2,"peak_pss_sum_kb":102400,"peak_rss_sum_kb":512000,"max_procs":40}`),
		write("p.log", postfixLog)))
	write("3.leg", fmt.Sprintf("workload=W1\ndesc=test\nmta=mtad\nn=1000\nstatus=ok\ninj_start_ns=%d\ninj_end_ns=%d\nsink_stats=%s\nmon=%s\nlog_kind=mtad\nlog=%s,%s\n",
		s0, s0+2*sec, write("m.json", fmt.Sprintf(`{"count":1000,"last_ns":%d}`, s0+2*sec)),
		write("m.mon", `{"cpu_s":1,"root_hwm_kb":51200,"max_procs":1}`),
		filepath.Join(dir, "missing.log"),
		write("m.log", `{"event":"delivered","queue_id":"a","delay":0.021}`+"\n")))
	write("4.leg", "workload=W2\ndesc=other\nmta=mtad\nn=10\nstatus=failed\nreason=bin/mtad missing\n")
	legs, err := readLegs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var rows []row
	for _, l := range legs {
		rows = append(rows, compute(l))
	}
	out := render(rows)
	for _, want := range []string{
		"| W1 | ceiling | 1000/1000 | 1000 | 1000 | – | – | – | – |",
		"| W1 | postfix | 1000/1000 | 250 | 200 | 16.0 | 42.0 | 100.0 | 2.000 |",
		"| W1 | mtad | 1000/1000 | 500 | 500 | 21.0 | 21.0 | 50.0 | 1.000 |",
		"| W2 | mtad (FAILED) | 0/10 |",
		"| W1 | mtad/Postfix | 2.00 | 2.50 | 1.31 | 0.50 | 0.50 | 0.50 |",
		"| W1 | mtad/ceiling | 0.50 | 0.50 |",
		"| W2 | mtad failed |",
		"W2 mtad: FAILED: bin/mtad missing",
		"W1 postfix: log events: deferred 1",
		"- W1: test\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// Unpaced legs (no rate=) say nothing about pacing.
	if strings.Contains(out, "paced") || strings.Contains(out, " @ ") {
		t.Errorf("unpaced report mentions pacing:\n%s", out)
	}
}

// TestReportPaced reads the legs of testdata/paced: a W1H run paced at 400
// msgs/s, where the ceiling kept the pace and mtad fell behind it. The
// offered rate must be in the table, the workload list and the notes.
func TestReportPaced(t *testing.T) {
	t.Parallel()
	legs, err := readLegs(filepath.Join("testdata", "paced"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []row
	for _, l := range legs {
		rows = append(rows, compute(l))
	}
	if len(rows) != 2 || rows[0].rate != 400 || rows[0].paceChunk != 10 || rows[1].rate != 400 {
		t.Fatalf("rows %+v, want two legs at rate 400, chunk 10", rows)
	}
	out := render(rows)
	for _, want := range []string{
		"| W1H @ 400/s | ceiling | 2000/2000 | 392 | 392 | – | – | – | – |",
		"| W1H @ 400/s | mtad | 2000/2000 | 200 | 200 | 10.0 | 30.0 | 40.0 | 1.000 |",
		"| W1H @ 400/s | mtad/ceiling | 0.51 | 0.51 |",
		"- W1H: 20,000 × 5 KB → 100 domains, W1 at half rate, paced at 400 msgs/s offered\n",
		"- W1H ceiling: paced injection: 400 msgs/s offered (each lane in chunks of 10), 392 msgs/s reached\n",
		"- W1H mtad: paced injection: 400 msgs/s offered (each lane in chunks of 10), 200 msgs/s reached: the injection fell behind its pace",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// A bad or negative rate= is no pacing.
	for _, v := range []string{"", "x", "-5", "0"} {
		if r := compute(leg{"workload": "W1", "mta": "ceiling", "n": "1", "status": "ok", "rate": v, "sink_stats": "none"}); r.rate != 0 || r.label() != "W1" {
			t.Errorf("rate=%q: row rate %d label %q, want unpaced", v, r.rate, r.label())
		}
	}
}

// FuzzLogs feeds arbitrary text to both log parsers: they must not fail on
// it nor yield a negative latency.
func FuzzLogs(f *testing.F) {
	f.Add(postfixLog)
	f.Add(`{"ts":"2026-11-22T03:07:36.250+0000","event":"delivered","queue_id":"Q1","delay":-1}` + "\n{\"event\":\"received\",\"queue_id\":\"Q1\",\"ts\":\"1.5\"}")
	f.Fuzz(func(t *testing.T, in string) {
		for _, parse := range []func(string) (logSummary, error){
			func(s string) (logSummary, error) { return parsePostfixLog(strings.NewReader(s)) },
			func(s string) (logSummary, error) { return parseMtadLog(strings.NewReader(s)) },
		} {
			s, err := parse(in)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range s.latencies {
				if l < 0 || math.IsNaN(l) {
					t.Fatalf("latency %v from %q", l, in)
				}
			}
		}
	})
}

// TestVariantCost: the mtad legs of W1S, W1R and W1E are each compared with
// W1's, figure by figure with the change in percent, and each gets its CPU
// per message added; a failed leg is said so; without a variant and its
// base's mtad leg there is no table.
func TestVariantCost(t *testing.T) {
	t.Parallel()
	nan := math.NaN()
	w1 := row{workload: "W1", mta: "mtad", ok: true, delRate: 2000, injRate: 2000, cpuPer1k: 0.400, p99: 0.020}
	w1s := row{workload: "W1S", mta: "mtad", ok: true, delRate: 1900, injRate: 2100, cpuPer1k: 0.420, p99: nan}
	w1r := row{workload: "W1R", mta: "mtad", ok: true, delRate: 800, injRate: 800, cpuPer1k: 1.600, p99: 0.050}
	w1e := row{workload: "W1E", mta: "mtad", ok: true, delRate: 1500, injRate: 1500, cpuPer1k: 0.600, p99: 0.025}
	pf := row{workload: "W1", mta: "postfix", ok: true, delRate: 500, cpuPer1k: 3}
	w1h := row{workload: "W1H", mta: "mtad", ok: true, delRate: 1000, cpuPer1k: 0.5}
	out := render([]row{pf, w1, w1s, w1r, w1e, w1h})
	for _, want := range []string{
		"| variant cost (mtad) | against | delivered/s | inj/s | CPU s/1k msgs | p99 ms |\n",
		"| W1 | – | 2000 | 2000 | 0.400 | 20.0 |\n",
		"| W1S: shaping config whose limits are never reached | W1 | 1900 (-5.0%) | 2100 (+5.0%) | 0.420 (+5.0%) | – |\n",
		"| W1R: DKIM-signed, RSA-2048 | W1 | 800 (-60.0%) | 800 (-60.0%) | 1.600 (+300.0%) | 50.0 (+150.0%) |\n",
		"| W1E: DKIM-signed, Ed25519 | W1 | 1500 (-25.0%) | 1500 (-25.0%) | 0.600 (+50.0%) | 25.0 (+25.0%) |\n",
		"- W1S (shaping config whose limits are never reached) against W1: CPU per message added: 0.020 ms (0.400 → 0.420 ms)\n",
		"- W1R (DKIM-signed, RSA-2048) against W1: CPU per message added: 1.200 ms (0.400 → 1.600 ms)\n",
		"- W1E (DKIM-signed, Ed25519) against W1: CPU per message added: 0.200 ms (0.400 → 0.600 ms)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// W1H repeats W1 at another rate: not a variant; Postfix has none.
	if strings.Contains(out, "| W1H:") || strings.Contains(out, "W1H (") {
		t.Errorf("W1H shown as a variant:\n%s", out)
	}
	// Rows come in run order, the base first.
	vc := variantCost([]row{w1, w1e, w1r})
	if i, j, k := strings.Index(vc, "| W1 |"), strings.Index(vc, "| W1E:"), strings.Index(vc, "| W1R:"); !(i >= 0 && i < j && j < k) {
		t.Errorf("rows out of run order:\n%s", vc)
	}

	failed := w1r
	failed.ok = false
	vc = variantCost([]row{w1, failed, w1e})
	for _, want := range []string{"| W1R: DKIM-signed, RSA-2048 | W1 | failed | – | – | – |\n", "- W1E (DKIM-signed, Ed25519) against W1: CPU per message added: 0.200 ms"} {
		if !strings.Contains(vc, want) {
			t.Errorf("failed W1R: table lacks %q:\n%s", want, vc)
		}
	}
	if strings.Contains(vc, "W1R (") {
		t.Errorf("failed W1R has a CPU line:\n%s", vc)
	}
	baseFailed := w1
	baseFailed.ok = false
	vc = variantCost([]row{baseFailed, w1r})
	if want := "| W1 | – | failed | – | – | – |\n| W1R: DKIM-signed, RSA-2048 | W1 | 800 | 800 | 1.600 | 50.0 |\n"; !strings.Contains(vc, want) || strings.Contains(vc, "added") {
		t.Errorf("failed W1: table %q, want %q and no CPU line", vc, want)
	}

	for name, rows := range map[string][]row{
		"no variant":  {pf, w1, w1h},
		"no W1 mtad":  {pf, w1s, w1r, w1e},
		"postfix W1R": {pf, {workload: "W1R", mta: "postfix", ok: true}},
	} {
		if vc := variantCost(rows); vc != "" {
			t.Errorf("%s: variant cost table %q, want none", name, vc)
		}
	}
}

func TestVariantOf(t *testing.T) {
	t.Parallel()
	for w, want := range map[string]string{"W1S": "W1", "W1R": "W1", "W1E": "W1", "W2S": "W2", "W1": "", "W1H": "", "R": "", "": ""} {
		base, what, ok := variantOf(w)
		if ok != (want != "") || base != want && ok || ok && what == "" {
			t.Errorf("variantOf(%q) = %q, %q, %v; want base %q", w, base, what, ok, want)
		}
	}
}

// TestDKIMNote: a signing leg's count of signed messages is in the notes.
func TestDKIMNote(t *testing.T) {
	t.Parallel()
	r := compute(leg{"workload": "W1R", "mta": "mtad", "n": "5000", "status": "ok", "sink_stats": "none",
		"dkim_algo": "rsa-sha256", "dkim_signed": "4999"})
	want := "DKIM: 4999 of 5000 received records name the a=rsa-sha256 signature"
	if !strings.Contains(strings.Join(r.notes, "\n"), want) {
		t.Errorf("notes %q lack %q", r.notes, want)
	}
	if r := compute(leg{"workload": "W1", "mta": "mtad", "n": "1", "status": "ok", "sink_stats": "none"}); strings.Contains(strings.Join(r.notes, "\n"), "DKIM") {
		t.Errorf("unsigned leg notes %q mention DKIM", r.notes)
	}
}
