package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Figures are one configuration's results: one round's, or the medians of all rounds.
type Figures struct {
	// Latency percentiles in milliseconds.
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p99_9_ms"`
	// RateRPS is the achieved rate, requests per second.
	RateRPS float64 `json:"rate_rps"`
	// Requests made and Errors among them (any answer but 200, or no answer).
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	// Hops are the proxies' figures, hop1 (the caller's side) first.
	Hops []HopFigures `json:"hops,omitempty"`
}

// HopFigures are one proxy's figures over a measured period.
type HopFigures struct {
	Name string `json:"name"`
	// Processes is how many processes the hop is (nginx: master and worker).
	Processes int `json:"processes"`
	// CPUSeconds is utime+stime used during the period; Cores that divided by
	// the period; CoresPer1kRPS that divided by the achieved rate in thousands.
	CPUSeconds    float64 `json:"cpu_seconds"`
	Cores         float64 `json:"cores"`
	CoresPer1kRPS float64 `json:"cores_per_1k_rps"`
	// RSSMaxBytes is the largest VmRSS sampled every 100ms during the period;
	// HWMBytes is VmHWM at its end: the peak since the period started (the
	// harness resets it), or over the process's whole life if HWMLifetime.
	RSSMaxBytes uint64 `json:"rss_max_bytes"`
	// PSSMaxBytes is the largest Pss sum of the same samples: for a hop of
	// several processes (nginx's master and worker), shared pages count once.
	PSSMaxBytes uint64 `json:"pss_max_bytes,omitempty"`
	HWMBytes    uint64 `json:"vmhwm_bytes"`
	HWMLifetime bool   `json:"vmhwm_lifetime,omitempty"`
}

// percentile returns the p-th percentile (0-100) of values by linear
// interpolation between closest ranks; NaN for no values.
func percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := slices.Clone(values)
	slices.Sort(s)
	if p <= 0 {
		return s[0]
	}
	if p >= 100 {
		return s[len(s)-1]
	}
	rank := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(rank))
	hi := int(math.Ceil(rank))
	return s[lo] + (s[hi]-s[lo])*(rank-float64(lo))
}

// median is the 50th percentile: the middle value, or the mean of the two middle ones.
func median(values []float64) float64 { return percentile(values, 50) }

// medianOf applies median to one field of each element.
func medianOf[T any](xs []T, field func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = field(x)
	}
	return median(v)
}

// medianFigures takes the median of each figure over the rounds. Errors and
// Requests are medians too; hops are matched by position.
func medianFigures(rounds []Figures) Figures {
	if len(rounds) == 0 {
		return Figures{}
	}
	m := Figures{
		P50Ms:    medianOf(rounds, func(f Figures) float64 { return f.P50Ms }),
		P90Ms:    medianOf(rounds, func(f Figures) float64 { return f.P90Ms }),
		P99Ms:    medianOf(rounds, func(f Figures) float64 { return f.P99Ms }),
		P999Ms:   medianOf(rounds, func(f Figures) float64 { return f.P999Ms }),
		RateRPS:  medianOf(rounds, func(f Figures) float64 { return f.RateRPS }),
		Requests: int64(math.Round(medianOf(rounds, func(f Figures) float64 { return float64(f.Requests) }))),
		Errors:   int64(math.Round(medianOf(rounds, func(f Figures) float64 { return float64(f.Errors) }))),
	}
	for i, h := range rounds[0].Hops {
		hops := make([]HopFigures, 0, len(rounds))
		for _, r := range rounds {
			if i < len(r.Hops) {
				hops = append(hops, r.Hops[i])
			}
		}
		m.Hops = append(m.Hops, HopFigures{
			Name:          h.Name,
			Processes:     h.Processes,
			CPUSeconds:    medianOf(hops, func(h HopFigures) float64 { return h.CPUSeconds }),
			Cores:         medianOf(hops, func(h HopFigures) float64 { return h.Cores }),
			CoresPer1kRPS: medianOf(hops, func(h HopFigures) float64 { return h.CoresPer1kRPS }),
			RSSMaxBytes:   uint64(math.Round(medianOf(hops, func(h HopFigures) float64 { return float64(h.RSSMaxBytes) }))),
			PSSMaxBytes:   uint64(math.Round(medianOf(hops, func(h HopFigures) float64 { return float64(h.PSSMaxBytes) }))),
			HWMBytes:      uint64(math.Round(medianOf(hops, func(h HopFigures) float64 { return float64(h.HWMBytes) }))),
			HWMLifetime:   slices.ContainsFunc(hops, func(h HopFigures) bool { return h.HWMLifetime }),
		})
	}
	return m
}

// Ratios are figures divided by a reference's, by name: p50, p90, p99, p99.9,
// and with hops on both sides cpu (both hops), cpu_hop1, cpu_hop2, rss_hop1,
// rss_hop2, pss_hop1, pss_hop2. A ratio whose reference is zero is left out.
type Ratios map[string]float64

// ratio is a/b, and false when b is zero or either is not a number.
func ratio(a, b float64) (float64, bool) {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0, false
	}
	return a / b, true
}

// ratios divides x's figures by ref's. With latencyOnly, hops are not compared.
func ratios(x, ref Figures, latencyOnly bool) Ratios {
	out := Ratios{}
	put := func(name string, a, b float64) {
		if r, ok := ratio(a, b); ok {
			out[name] = r
		}
	}
	put("p50", x.P50Ms, ref.P50Ms)
	put("p90", x.P90Ms, ref.P90Ms)
	put("p99", x.P99Ms, ref.P99Ms)
	put("p99.9", x.P999Ms, ref.P999Ms)
	if latencyOnly || len(x.Hops) == 0 || len(x.Hops) != len(ref.Hops) {
		return out
	}
	var cx, cr float64
	for i, h := range x.Hops {
		r := ref.Hops[i]
		cx += h.CPUSeconds
		cr += r.CPUSeconds
		put("cpu_"+h.Name, h.CoresPer1kRPS, r.CoresPer1kRPS)
		put("rss_"+h.Name, float64(h.RSSMaxBytes), float64(r.RSSMaxBytes))
		if h.PSSMaxBytes > 0 {
			put("pss_"+h.Name, float64(h.PSSMaxBytes), float64(r.PSSMaxBytes))
		}
	}
	put("cpu", cx, cr)
	return out
}

// Budget statuses.
const (
	Met         = "met"
	NotMet      = "not met"
	NotMeasured = "not measured"
)

// Budget is one line of BUDGETS.md checked against this run.
type Budget struct {
	Figure string `json:"figure"`
	Budget string `json:"budget"`
	Status string `json:"status"`
	// Value and Limit in Unit; no Value when not measured.
	Value  *float64 `json:"value,omitempty"`
	Limit  *float64 `json:"limit,omitempty"`
	Unit   string   `json:"unit,omitempty"`
	Detail string   `json:"detail,omitempty"`
}

// check judges value against limit. Figures equal in what was measured can
// differ in their last bits after the divisions that make them (CPU comes in
// 10 ms ticks, so two hops often use the same CPU seconds exactly), and those
// bits must not turn a budget met at its limit into one missed: value may
// pass limit by a relative 1e-9.
func check(figure, budget string, value, limit float64, unit, detail string) Budget {
	b := Budget{Figure: figure, Budget: budget, Limit: &limit, Unit: unit, Detail: detail}
	switch {
	case math.IsNaN(value):
		b.Status = NotMeasured
	case value > limit+math.Abs(limit)*1e-9:
		b.Status, b.Value = NotMet, &value
	default:
		b.Status, b.Value = Met, &value
	}
	return b
}

const mib = 1 << 20

// budgets checks the Trellis figures of this run against BUDGETS.md. trellis
// and nginx are the median figures (nil when the configuration did not run);
// errors is trellis-2hop's total over all rounds.
func budgets(trellis, nginx *Figures, errors int64, facts *sidecarFacts) []Budget {
	var out []Budget
	nan := math.NaN()
	latency := func(name string, get func(Figures) float64) {
		v := nan
		detail := ""
		if trellis != nil && nginx != nil {
			if r, ok := ratio(get(*trellis), get(*nginx)); ok {
				v = r
				detail = fmt.Sprintf("%.3f ms vs nginx-2hop %.3f ms", get(*trellis), get(*nginx))
			}
		}
		out = append(out, check("latency "+name+" through two sidecars ÷ nginx-2hop", "≤ 1.00", v, 1, "×", detail))
	}
	latency("p50", func(f Figures) float64 { return f.P50Ms })
	latency("p99", func(f Figures) float64 { return f.P99Ms })

	// CPU: the worse of the two sidecars, against the matching nginx hop.
	worstRatio, worstCores := nan, nan
	var ratioDetail, coresDetail string
	if trellis != nil && len(trellis.Hops) == 2 {
		for i, h := range trellis.Hops {
			if math.IsNaN(worstCores) || h.CoresPer1kRPS > worstCores {
				worstCores = h.CoresPer1kRPS
				coresDetail = fmt.Sprintf("worse sidecar %s; %s", h.Name, hopList(trellis.Hops, func(h HopFigures) string { return fmt.Sprintf("%.3f", h.CoresPer1kRPS) }))
			}
			if nginx != nil && len(nginx.Hops) == 2 {
				if r, ok := ratio(h.CoresPer1kRPS, nginx.Hops[i].CoresPer1kRPS); ok && (math.IsNaN(worstRatio) || r > worstRatio) {
					worstRatio = r
					ratioDetail = fmt.Sprintf("worse sidecar %s: %.3f vs nginx %s %.3f cores per 1,000 rps", h.Name, h.CoresPer1kRPS, nginx.Hops[i].Name, nginx.Hops[i].CoresPer1kRPS)
				}
			}
		}
	}
	out = append(out,
		check("CPU per sidecar per 1,000 rps ÷ one nginx hop", "≤ 1.00", worstRatio, 1, "×", ratioDetail),
		check("CPU per sidecar per 1,000 rps", "≤ 0.10 cores", worstCores, 0.10, "cores", coresDetail))

	idle := nan
	idleDetail := ""
	if facts != nil {
		if v, ok := facts.IdleRSS["hop1"]; ok {
			idle = float64(v) / mib
			idleDetail = fmt.Sprintf("client sidecar (hop1); server sidecar (hop2) %.1f MiB", float64(facts.IdleRSS["hop2"])/mib)
		}
	}
	out = append(out, check("sidecar RSS idle, certificate and one destination loaded", "≤ 12 MiB", idle, 12, "MiB", idleDetail))

	loaded := nan
	loadedDetail := ""
	if trellis != nil && len(trellis.Hops) > 0 {
		for _, h := range trellis.Hops {
			loaded = max(zeroIfNaN(loaded), float64(h.RSSMaxBytes)/mib)
		}
		loadedDetail = "largest VmRSS sampled every 100ms; " + hopList(trellis.Hops, func(h HopFigures) string { return fmt.Sprintf("%.1f MiB", float64(h.RSSMaxBytes)/mib) })
	}
	out = append(out, check("sidecar RSS at 1,000 rps", "≤ 20 MiB", loaded, 20, "MiB", loadedDetail))

	errs := nan
	if trellis != nil {
		errs = float64(errors)
	}
	out = append(out, check("errors at the fixed rate (trellis-2hop, all rounds)", "0", errs, 0, "requests", ""))

	str := nan
	strDetail := ""
	if facts != nil && len(facts.StartToReady) > 0 {
		ms := make([]float64, len(facts.StartToReady))
		for i, d := range facts.StartToReady {
			ms[i] = float64(d) / float64(time.Millisecond)
		}
		str = median(ms)
		strDetail = fmt.Sprintf("median of %d sidecar starts; max %.1f ms", len(ms), percentile(ms, 100))
	}
	out = append(out, check("sidecar start to ready (certificate issued, listeners up)", "≤ 100 ms", str, 100, "ms", strDetail))

	for _, b := range []Budget{
		{Figure: "sidecar RSS with 5,000 services (permissive), app calling 5, ÷ the same with 10 services", Budget: "≤ 1.10"},
		{Figure: "control plane: a TrafficSplit change reaches 99% of 10,000 connected proxies", Budget: "≤ 1 s, p99"},
		{Figure: "control plane memory with 10,000 connected proxies and 1,000 services", Budget: "≤ 1 GiB"},
	} {
		b.Status, b.Detail = NotMeasured, "not measured by this harness"
		out = append(out, b)
	}
	return out
}

func zeroIfNaN(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

func hopList(hops []HopFigures, f func(HopFigures) string) string {
	s := ""
	for i, h := range hops {
		if i > 0 {
			s += ", "
		}
		s += h.Name + " " + f(h)
	}
	return s
}
