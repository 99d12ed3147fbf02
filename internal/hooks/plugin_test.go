package hooks_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mtad/mtad/internal/hooks"
	_ "github.com/mtad/mtad/internal/hooks/accounting"
	_ "github.com/mtad/mtad/internal/hooks/adaptive"
	"github.com/mtad/mtad/internal/queue"
)

// slowstart is the package doc's example plugin: it holds a pair once it has
// `max` connections open or opening.
func slowstart(reg *hooks.Registry, cfg hooks.PluginConfig) error {
	max := 2
	for k, v := range cfg.Settings {
		switch k {
		case "max":
			n, ok := v.(int)
			if !ok || n < 1 {
				return fmt.Errorf("hooks.settings.test_slowstart.max: want a positive integer, got %v", v)
			}
			max = n
		default:
			return fmt.Errorf("hooks.settings.test_slowstart.%s: unknown setting", k)
		}
	}
	reg.MailQueueMaintain.RegisterFirst(func(dr *queue.DomainRecord, slot int, sl *queue.Pair,
		now time.Time, goalsz, reserve int) int {
		if sl.Open()+sl.Connecting() >= max {
			return hooks.Handled
		}
		return 0
	})
	return nil
}

// gotConfig is what test_probe saw when enabled; the probe is enabled by
// only one test.
var gotConfig = make(chan hooks.PluginConfig, 1)

func init() {
	hooks.RegisterPlugin("test_slowstart", slowstart)
	hooks.RegisterPlugin("test_probe", func(reg *hooks.Registry, cfg hooks.PluginConfig) error {
		gotConfig <- cfg
		return nil
	})
	hooks.RegisterPlugin("test_fails", func(reg *hooks.Registry, cfg hooks.PluginConfig) error {
		return errors.New("hooks.settings.test_fails.x: bad")
	})
}

func TestPluginsListed(t *testing.T) {
	t.Parallel()
	got := strings.Join(hooks.Plugins(), ",")
	if got != "accounting,adaptive,test_fails,test_probe,test_slowstart" {
		t.Fatalf("Plugins() = %s", got)
	}
}

func TestEnableRunsExamplePlugin(t *testing.T) {
	t.Parallel()
	q := queue.New()
	p := q.Push(&queue.Delivery{MsgID: "m", Domain: "example.com"})
	reg := hooks.NewRegistry()
	reg.MailQueueMaintain.SetDefault(func(*queue.DomainRecord, int, *queue.Pair, time.Time, int, int) int { return 1 })
	err := hooks.Enable(reg, []string{"test_slowstart"}, map[string]map[string]any{"test_slowstart": {"max": 1}}, hooks.PluginConfig{})
	if err != nil {
		t.Fatalf("Enable: %v", err)
	}
	if !reg.MailQueueMaintain.Has() {
		t.Fatal("plugin registered no hook")
	}
	call := func() int { return reg.MailQueueMaintain.Call(p.Domain(), 0, p, time.Unix(1, 0), 1, 0) }
	if r := call(); r != 1 {
		t.Fatalf("no connections yet: Call = %d, want the default's 1", r)
	}
	if !p.TryConnect(0, 0) {
		t.Fatal("TryConnect refused")
	}
	if r := call(); r != hooks.Handled {
		t.Fatalf("at max 1: Call = %d, want Handled", r)
	}
	p.ConnectFailed()
}

func TestEnablePassesConfig(t *testing.T) {
	t.Parallel()
	clock := func() time.Time { return time.Unix(1234, 0) }
	metrics := prometheus.NewRegistry()
	settings := map[string]map[string]any{"test_probe": {"answer": 42}, "adaptive": {"failures": 3}}
	base := hooks.PluginConfig{Logger: zap.NewNop(), Metrics: metrics, Now: clock, Settings: map[string]any{"ignored": 1}}
	if err := hooks.Enable(hooks.NewRegistry(), []string{"test_probe"}, settings, base); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	cfg := <-gotConfig
	if len(cfg.Settings) != 1 || cfg.Settings["answer"] != 42 {
		t.Errorf("Settings = %v, want only answer: 42", cfg.Settings)
	}
	if cfg.Metrics != prometheus.Registerer(metrics) || cfg.Logger == nil || !cfg.Now().Equal(clock()) {
		t.Errorf("config not passed through: %+v", cfg)
	}
}

func TestEnableErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		names    []string
		settings map[string]map[string]any
		want     string
	}{
		{"unknown plugin", []string{"accounting", "x"}, nil,
			`hooks.plugins: unknown plugin "x" (known: accounting, adaptive, test_fails, test_probe, test_slowstart)`},
		{"listed twice", []string{"test_slowstart", "test_slowstart"}, nil, `hooks.plugins: plugin "test_slowstart" listed twice`},
		{"settings for unknown plugin", []string{"accounting"}, map[string]map[string]any{"acounting": {}},
			`hooks.settings.acounting: unknown plugin "acounting"`},
		{"plugin refuses its settings", []string{"test_slowstart"}, map[string]map[string]any{"test_slowstart": {"max": "lots"}},
			`enabling hook plugin "test_slowstart": hooks.settings.test_slowstart.max: want a positive integer, got lots`},
		{"plugin error", []string{"test_fails"}, nil, `enabling hook plugin "test_fails": hooks.settings.test_fails.x: bad`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := hooks.NewRegistry()
			err := hooks.Enable(reg, tt.names, tt.settings, hooks.PluginConfig{})
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Enable error %v, want %s", err, tt.want)
			}
			if tt.name != "plugin refuses its settings" && tt.name != "plugin error" && reg.MailQueueMaintain.Has() {
				t.Fatal("a refused name list still enabled a plugin")
			}
		})
	}
}

func TestRegisterPluginDuplicatePanics(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		p    hooks.Plugin
	}{{"test_slowstart", slowstart}, {"test_nil", nil}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterPlugin(%q) did not panic", tt.name)
				}
			}()
			hooks.RegisterPlugin(tt.name, tt.p)
		}()
	}
}
