package controlplane

import (
	"log/slog"
	"strings"

	"github.com/trellis-mesh/trellis/internal/model"
)

// logLevel lets a MeshConfig's spec.observability.osmLogLevel set the control
// plane's own log level while it runs; with none, the level given at start
// (--log-level) is back in force.
type logLevel struct {
	v   *slog.LevelVar // nil: the level is fixed
	def slog.Level
	cur string // the MeshConfig's word in force, "" for none
}

func newLogLevel(v *slog.LevelVar) *logLevel {
	l := &logLevel{v: v}
	if v != nil {
		l.def = v.Level()
	}
	return l
}

// follow applies the level the mesh settings name, logging the change.
func (l *logLevel) follow(m model.MeshSettings, log *slog.Logger) {
	if l.v == nil || m.ControlPlaneLogLevel == l.cur {
		return
	}
	lv := osmLogLevel(m.ControlPlaneLogLevel, l.def)
	if m.ControlPlaneLogLevel == "" {
		log.Info("control plane log level back to its own", "level", lv.String())
	} else {
		log.Info("control plane log level set by the mesh config", "osmLogLevel", m.ControlPlaneLogLevel, "level", lv.String(), "source", m.Source)
	}
	l.cur = m.ControlPlaneLogLevel
	l.v.Set(lv)
}

// osmLogLevel maps OSM's control-plane log level (zerolog's words) to a slog
// level; empty or unknown gives def.
func osmLogLevel(osm string, def slog.Level) slog.Level {
	switch strings.ToLower(osm) {
	case "trace", "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	case "fatal", "panic":
		return slog.LevelError + 4 // the control plane logs nothing above error
	case "disabled", "off":
		return slog.LevelError + 100
	}
	return def
}
