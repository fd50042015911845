package procfs

import (
	"fmt"
	"sync"
	"time"
)

// Group is a set of processes measured as one: a proxy's master and workers.
type Group struct {
	Name string
	PIDs []int
}

// Usage is what a group used over a measured period.
type Usage struct {
	// CPUSeconds is the growth of utime+stime over the period, summed over the group.
	CPUSeconds float64
	// RSSMaxBytes is the largest sum of VmRSS seen by the periodic samples.
	// Pages shared by processes of the group (libraries, the master's memory
	// inherited by workers) count once per process.
	RSSMaxBytes uint64
	// PSSMaxBytes is the largest sum of Pss seen by the same samples: shared
	// pages divided among the processes mapping them; 0 if unreadable.
	PSSMaxBytes uint64
	// HWMBytes is the sum of VmHWM at the end: each process's peak since the
	// start of the period when PeakReset, else over its whole life.
	HWMBytes uint64
	// PeakReset says that every process's VmHWM was reset at the start.
	PeakReset bool
	// Samples is how many RSS samples were taken.
	Samples int
}

// SamplerOptions configure a Sampler.
type SamplerOptions struct {
	// FS is the /proc to read; default the real one.
	FS FS
	// Interval between RSS samples; default 100ms.
	Interval time.Duration
	// ResetPeak resets each process's VmHWM at the start (writing 5 to
	// /proc/PID/clear_refs, Linux 4.0 and later; needs the right to write it),
	// so that VmHWM is the peak over the period.
	ResetPeak bool
}

// Sampler measures groups of processes from Start to Stop.
type Sampler struct {
	fs       FS
	groups   []Group
	cpu0     []float64
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	rssMax   []uint64
	pssMax   []uint64
	noPSS    bool
	samples  int
	reset    []bool
	firstErr error
}

// StartSampler reads the groups' CPU times and starts sampling their RSS.
func StartSampler(opts SamplerOptions, groups []Group) (*Sampler, error) {
	if opts.Interval <= 0 {
		opts.Interval = 100 * time.Millisecond
	}
	s := &Sampler{
		fs: opts.FS, groups: groups,
		stop: make(chan struct{}), done: make(chan struct{}),
		rssMax: make([]uint64, len(groups)), pssMax: make([]uint64, len(groups)),
	}
	for _, g := range groups {
		cpu, err := s.cpu(g)
		if err != nil {
			return nil, err
		}
		s.cpu0 = append(s.cpu0, cpu)
		reset := opts.ResetPeak
		if reset {
			for _, pid := range g.PIDs {
				if s.fs.ResetPeak(pid) != nil {
					reset = false
				}
			}
		}
		s.reset = append(s.reset, reset)
	}
	s.sample()
	go s.loop(opts.Interval)
	return s, nil
}

func (s *Sampler) cpu(g Group) (float64, error) {
	var sum float64
	for _, pid := range g.PIDs {
		st, err := s.fs.Stat(pid)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", g.Name, err)
		}
		sum += st.CPUSeconds()
	}
	return sum, nil
}

func (s *Sampler) loop(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *Sampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range s.groups {
		var rss, pss uint64
		for _, pid := range g.PIDs {
			st, err := s.fs.Status(pid)
			if err != nil {
				if s.firstErr == nil {
					s.firstErr = fmt.Errorf("%s: %w", g.Name, err)
				}
				continue
			}
			rss += st.VmRSS
			if !s.noPSS {
				p, err := s.fs.Pss(pid)
				if err != nil {
					s.noPSS = true // an old kernel: report no PSS rather than part of it
				}
				pss += p
			}
		}
		s.rssMax[i] = max(s.rssMax[i], rss)
		s.pssMax[i] = max(s.pssMax[i], pss)
	}
	s.samples++
}

// Stop ends sampling and returns each group's usage, in the order of the groups.
// It fails if a process could not be read during the period (it exited).
func (s *Sampler) Stop() ([]Usage, error) {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.firstErr != nil {
		return nil, s.firstErr
	}
	out := make([]Usage, len(s.groups))
	for i, g := range s.groups {
		cpu, err := s.cpu(g)
		if err != nil {
			return nil, err
		}
		var hwm uint64
		for _, pid := range g.PIDs {
			st, err := s.fs.Status(pid)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", g.Name, err)
			}
			hwm += st.VmHWM
		}
		pss := s.pssMax[i]
		if s.noPSS {
			pss = 0
		}
		out[i] = Usage{CPUSeconds: cpu - s.cpu0[i], RSSMaxBytes: s.rssMax[i], PSSMaxBytes: pss, HWMBytes: hwm, PeakReset: s.reset[i], Samples: s.samples}
	}
	return out, nil
}
