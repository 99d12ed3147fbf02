package hooks

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// PluginConfig is what a plugin gets when it is enabled.
type PluginConfig struct {
	// Settings are the plugin's own settings (hooks.settings.<name> in the
	// configuration), never nil. The plugin validates them and returns an
	// error naming the key, as "hooks.settings.<name>.<key>: ...".
	Settings map[string]any
	// Logger logs for the plugin; Enable names it after the plugin. Never nil.
	Logger *zap.Logger
	// Metrics is where the plugin registers its collectors; nil for none.
	Metrics prometheus.Registerer
	// Now is the clock; never nil (tests pass a fake one).
	Now func() time.Time
}

// Plugin registers a plugin's hooks on reg. It returns an error, changing
// nothing on reg, when its settings are invalid.
type Plugin func(reg *Registry, cfg PluginConfig) error

// The plugin table: the package's one mutable global, written from init
// functions, as database/sql's driver table.
var plugins = struct {
	sync.Mutex
	m map[string]Plugin
}{m: make(map[string]Plugin)}

// RegisterPlugin makes a plugin available under name; call it from an init
// function. It panics if p is nil or the name is taken, as sql.Register does.
func RegisterPlugin(name string, p Plugin) {
	if p == nil {
		panic("hooks: RegisterPlugin " + name + " with a nil plugin")
	}
	plugins.Lock()
	defer plugins.Unlock()
	if _, dup := plugins.m[name]; dup {
		panic("hooks: RegisterPlugin called twice for plugin " + name)
	}
	plugins.m[name] = p
}

// Plugins returns the names of the registered plugins, sorted.
func Plugins() []string {
	plugins.Lock()
	defer plugins.Unlock()
	return sortedKeys(plugins.m)
}

// Enable enables the named plugins on reg, in the order given (which is the
// order their RegisterLast hooks run; their RegisterFirst hooks run in the
// reverse order). settings maps a plugin's name to its settings; base gives
// the logger (named "hooks.<plugin>" for each plugin; nil for none), the
// metrics registerer and the clock (nil for time.Now).
//
// Unknown or repeated names, and settings for a plugin that does not exist,
// are refused before any plugin is enabled. A plugin refusing its settings
// stops Enable with an error; plugins enabled before it keep their hooks,
// so on error the caller discards reg.
func Enable(reg *Registry, names []string, settings map[string]map[string]any, base PluginConfig) error {
	plugins.Lock()
	table := make(map[string]Plugin, len(plugins.m))
	for n, p := range plugins.m {
		table[n] = p
	}
	plugins.Unlock()
	known := func() string { return strings.Join(sortedKeys(table), ", ") }

	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if _, ok := table[n]; !ok {
			return fmt.Errorf("hooks.plugins: unknown plugin %q (known: %s)", n, known())
		}
		if seen[n] {
			return fmt.Errorf("hooks.plugins: plugin %q listed twice", n)
		}
		seen[n] = true
	}
	for _, n := range sortedKeys(settings) {
		if _, ok := table[n]; !ok {
			return fmt.Errorf("hooks.settings.%s: unknown plugin %q (known: %s)", n, n, known())
		}
	}

	if base.Logger == nil {
		base.Logger = zap.NewNop()
	}
	if base.Now == nil {
		base.Now = time.Now
	}
	for _, n := range names {
		cfg := base
		cfg.Settings = settings[n]
		if cfg.Settings == nil {
			cfg.Settings = map[string]any{}
		}
		cfg.Logger = base.Logger.Named("hooks." + n)
		if err := table[n](reg, cfg); err != nil {
			return fmt.Errorf("enabling hook plugin %q: %w", n, err)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}
