package scheduler

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardMetricsExist: deploy/grafana/mtad.json parses, every panel
// takes its data from the dashboard's datasource variable, and every
// metric an expression names is one the code registers (a name in a
// collector's options or description under internal/ and cmd/), so a
// renamed metric cannot leave a panel silently empty.
func TestDashboardMetricsExist(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../deploy/grafana/mtad.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("mtad.json: %v", err)
	}
	hasVar := false
	for _, v := range dash.Templating.List {
		hasVar = hasVar || (v.Name == "datasource" && v.Type == "datasource")
	}
	if !hasVar {
		t.Error("no datasource variable")
	}

	known := registeredMetrics(t)
	metric := regexp.MustCompile(`\bmtad_[a-z0-9_]+`)
	panels := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		panels++
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %q, want ${datasource}", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metric.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: %q names no mtad metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				base := n
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(n, suf); ok && known[b] {
						base = b
					}
				}
				if !known[base] {
					t.Errorf("panel %q: metric %s is registered nowhere", p.Title, n)
				}
			}
		}
	}
	if panels < 10 {
		t.Errorf("%d panels; the dashboard lost some", panels)
	}
}

// registeredMetrics finds the metric names the code registers: each
// Name: "mtad_…" of a collector's options and each NewDesc("mtad_…").
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`(?:Name:\s*|NewDesc\()"(mtad_[a-z0-9_]+)"`)
	known := map[string]bool{}
	for _, dir := range []string{"../../internal", "../../cmd"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range re.FindAllSubmatch(src, -1) {
				known[string(m[1])] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, must := range []string{"mtad_recipients_total", "mtad_bounce_class_total", "mtad_dns_lookup_seconds", "mtad_smtp_transaction_seconds"} {
		if !known[must] {
			t.Fatalf("the source scan missed %s: found %v", must, known)
		}
	}
	return known
}
