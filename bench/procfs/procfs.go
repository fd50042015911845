// Package procfs reads what the benchmark harness measures about a process from
// Linux's /proc: CPU time (utime+stime), resident memory (VmRSS, VmHWM), children,
// and the sockets it listens on. It also samples those figures over a measured
// period. Only the benchmark harness (bench/...) imports it.
package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. Linux
// fixes it at 100 on every architecture Go supports; reading it would need cgo.
const ClockTicks = 100

// FS reads one /proc tree.
type FS struct {
	// Root is the mount point of procfs; default "/proc".
	Root string
}

func (fs FS) path(elem ...string) string {
	root := fs.Root
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

// Stat is the part of /proc/PID/stat the harness uses.
type Stat struct {
	PID   int
	Comm  string
	State string
	PPID  int
	// UTime and STime are in clock ticks (ClockTicks per second).
	UTime, STime uint64
}

// CPUSeconds is the process's user plus system CPU time in seconds.
func (s Stat) CPUSeconds() float64 {
	return float64(s.UTime+s.STime) / ClockTicks
}

// ParseStat parses the one line of /proc/PID/stat. The command name is in
// parentheses and may itself hold spaces and parentheses, so the fields after
// it are found from the last ')'.
func ParseStat(line string) (Stat, error) {
	open := strings.IndexByte(line, '(')
	end := strings.LastIndexByte(line, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("stat line %q: no (comm) field", trunc(line))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line[:open]))
	if err != nil {
		return Stat{}, fmt.Errorf("stat line %q: pid: %w", trunc(line), err)
	}
	// Fields after comm, numbered from 3 (state) as in proc(5).
	f := strings.Fields(line[end+1:])
	if len(f) < 13 {
		return Stat{}, fmt.Errorf("stat line %q: %d fields after comm, want at least 13", trunc(line), len(f))
	}
	st := Stat{PID: pid, Comm: line[open+1 : end], State: f[0]}
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("stat line %q: ppid: %w", trunc(line), err)
	}
	if st.UTime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat line %q: utime: %w", trunc(line), err)
	}
	if st.STime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat line %q: stime: %w", trunc(line), err)
	}
	return st, nil
}

// Status is the memory part of /proc/PID/status, in bytes.
type Status struct {
	// VmRSS is the resident set now; VmHWM its peak over the process's life.
	VmRSS, VmHWM uint64
}

// ParseStatus reads VmRSS and VmHWM from the text of /proc/PID/status. Both
// must be present: a kernel thread or a zombie has neither.
func ParseStatus(text string) (Status, error) {
	var st Status
	var haveRSS, haveHWM bool
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return Status{}, fmt.Errorf("status %s: %q is not \"N kB\"", key, strings.TrimSpace(val))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return Status{}, fmt.Errorf("status %s: %w", key, err)
		}
		switch key {
		case "VmRSS":
			st.VmRSS, haveRSS = kb*1024, true
		case "VmHWM":
			st.VmHWM, haveHWM = kb*1024, true
		}
	}
	if !haveRSS || !haveHWM {
		return Status{}, errors.New("status has no VmRSS or VmHWM line: is the process a zombie?")
	}
	return st, nil
}

// ParsePss reads the Pss line (proportional set size: each shared page
// divided among the processes that map it) of /proc/PID/smaps_rollup, in bytes.
func ParsePss(text string) (uint64, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		val, ok := strings.CutPrefix(sc.Text(), "Pss:")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("smaps_rollup Pss: %q is not \"N kB\"", strings.TrimSpace(val))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("smaps_rollup Pss: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("smaps_rollup has no Pss line")
}

// Pss reads pid's proportional set size from /proc/PID/smaps_rollup (Linux 4.14+).
func (fs FS) Pss(pid int) (uint64, error) {
	b, err := os.ReadFile(fs.path(strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	v, err := ParsePss(string(b))
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	return v, nil
}

// Stat reads /proc/PID/stat.
func (fs FS) Stat(pid int) (Stat, error) {
	b, err := os.ReadFile(fs.path(strconv.Itoa(pid), "stat"))
	if err != nil {
		return Stat{}, fmt.Errorf("process %d: %w", pid, err)
	}
	st, err := ParseStat(strings.TrimSpace(string(b)))
	if err != nil {
		return Stat{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return st, nil
}

// Status reads /proc/PID/status.
func (fs FS) Status(pid int) (Status, error) {
	b, err := os.ReadFile(fs.path(strconv.Itoa(pid), "status"))
	if err != nil {
		return Status{}, fmt.Errorf("process %d: %w", pid, err)
	}
	st, err := ParseStatus(string(b))
	if err != nil {
		return Status{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return st, nil
}

// ResetPeak resets pid's VmHWM to its current VmRSS (clear_refs, value 5).
func (fs FS) ResetPeak(pid int) error {
	f, err := os.OpenFile(fs.path(strconv.Itoa(pid), "clear_refs"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	_, err = f.WriteString("5")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("process %d: reset VmHWM: %w", pid, err)
	}
	return nil
}

// Children lists the live processes whose parent is pid, by scanning /proc.
func (fs FS) Children(pid int) ([]int, error) {
	ents, err := os.ReadDir(fs.path())
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := fs.Stat(child)
		if err != nil {
			continue // gone meanwhile
		}
		if st.PPID == pid && st.State != "Z" {
			out = append(out, child)
		}
	}
	return out, nil
}

// Alive says whether pid is a live (not zombie) process.
func (fs FS) Alive(pid int) bool {
	st, err := fs.Stat(pid)
	return err == nil && st.State != "Z"
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
