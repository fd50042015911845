package procfs

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    Stat
		wantErr string
	}{
		{
			name: "a real line",
			line: "26358 (cat) R 26355 26355 14294 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 490334 3133440 416 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0",
			want: Stat{PID: 26358, Comm: "cat", State: "R", PPID: 26355, UTime: 7, STime: 3},
		},
		{
			name: "a command name with spaces and parentheses",
			line: "42 (nginx: worker (x) ) S 41 41 41 0 -1 0 0 0 0 0 1234 567 0 0 20 0 1 0 1 1 1",
			want: Stat{PID: 42, Comm: "nginx: worker (x) ", State: "S", PPID: 41, UTime: 1234, STime: 567},
		},
		{name: "no comm", line: "42 S 41", wantErr: "no (comm) field"},
		{name: "cut short", line: "42 (x) S 41 41 41 0", wantErr: "want at least 13"},
		{name: "bad utime", line: "42 (x) S 41 41 41 0 -1 0 0 0 0 0 x 567 0", wantErr: "utime"},
		{name: "bad pid", line: "abc (x) S 41 41 41 0 -1 0 0 0 0 0 1 567 0", wantErr: "pid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseStat error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStat: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseStat (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCPUSeconds(t *testing.T) {
	got := Stat{UTime: 150, STime: 50}.CPUSeconds()
	if got != 2.0 {
		t.Errorf("CPUSeconds of 150+50 ticks = %v, want 2", got)
	}
}

func TestParseStatus(t *testing.T) {
	const real = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t   64012 kB\nVmSize:\t   63900 kB\nVmHWM:\t    9120 kB\nVmRSS:\t    8800 kB\nRssAnon:\t    2000 kB\nThreads:\t1\n"
	tests := []struct {
		name    string
		text    string
		want    Status
		wantErr string
	}{
		{name: "a real status", text: real, want: Status{VmRSS: 8800 * 1024, VmHWM: 9120 * 1024}},
		{name: "a zombie has no memory lines", text: "Name:\tx\nState:\tZ (zombie)\n", wantErr: "no VmRSS or VmHWM"},
		{name: "unit other than kB", text: "VmHWM:\t1 MB\nVmRSS:\t1 kB\n", wantErr: `not "N kB"`},
		{name: "not a number", text: "VmHWM:\tx kB\nVmRSS:\t1 kB\n", wantErr: "VmHWM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStatus(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseStatus error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStatus: %v", err)
			}
			if got != tc.want {
				t.Errorf("ParseStatus = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParsePss(t *testing.T) {
	const real = "55d0c5c3e000-7ffd8a5f5000 ---p 00000000 00:00 0                          [rollup]\nRss:                6740 kB\nPss:                3945 kB\nPss_Dirty:           900 kB\nPss_Anon:            948 kB\nShared_Clean:       5000 kB\n"
	tests := []struct {
		name    string
		text    string
		want    uint64
		wantErr string
	}{
		{name: "a real smaps_rollup", text: real, want: 3945 * 1024},
		{name: "no Pss line", text: "Rss: 10 kB\nPss_Anon: 5 kB\n", wantErr: "no Pss line"},
		{name: "not kB", text: "Pss: 10 MB\n", wantErr: `not "N kB"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePss(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePss error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParsePss = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func littleEndian() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}

func TestParseNetSockets(t *testing.T) {
	if !littleEndian() {
		t.Skip("the sample tables were taken on a little-endian machine")
	}
	tests := []struct {
		name    string
		text    string
		want    []Socket
		wantErr string
	}{
		{
			name: "tcp",
			text: "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
				"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 165 1 00000000c7d977c8 100 0 0 10 0\n" +
				"   1: 0100007F:A8C9 0100007F:DD5A 06 00000000:00000000 03:0000119C 00000000     0        0 0 3 00000000acc52b27\n",
			want: []Socket{
				{Local: netip.MustParseAddrPort("0.0.0.0:2024"), State: 0x0A, Inode: 165},
				{Local: netip.MustParseAddrPort("127.0.0.1:43209"), State: 0x06, Inode: 0},
			},
		},
		{
			name: "tcp6, loopback and v4-mapped loopback",
			text: "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
				"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n" +
				"   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0\n",
			want: []Socket{
				{Local: netip.MustParseAddrPort("[::1]:8080"), State: 0x0A, Inode: 777},
				{Local: netip.MustParseAddrPort("127.0.0.1:80"), State: 0x0A, Inode: 778},
			},
		},
		{name: "header only", text: "  sl  local_address rem_address   st\n"},
		{name: "short line", text: "header\n   0: 0100007F:A8C9 0A\n", wantErr: "want at least 10"},
		{name: "bad address", text: "header\n   0: 01007F:A8C9 00000000:0000 0A 0:0 0:0 0 0 0 5\n", wantErr: "not a hexadecimal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNetSockets(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseNetSockets error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseNetSockets: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("ParseNetSockets (-want +got):\n%s", diff)
			}
		})
	}
}

func TestListeningFindsOwnSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got, err := FS{}.Listening(os.Getpid())
	if err != nil {
		t.Fatalf("Listening: %v", err)
	}
	for _, want := range []string{ln.Addr().String(), pc.LocalAddr().String()} {
		if !slices.ContainsFunc(got, func(a netip.AddrPort) bool { return a.String() == want }) {
			t.Errorf("Listening(self) = %v, want it to include %s", got, want)
		}
	}
}

func TestChildrenAndAlive(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	fs := FS{}
	kids, err := fs.Children(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(kids, cmd.Process.Pid) {
		t.Errorf("Children(self) = %v, want it to include the child %d", kids, cmd.Process.Pid)
	}
	if !fs.Alive(cmd.Process.Pid) {
		t.Errorf("Alive(%d) = false for a running child", cmd.Process.Pid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if fs.Alive(cmd.Process.Pid) {
		t.Errorf("Alive(%d) = true after the child was reaped", cmd.Process.Pid)
	}
}

func TestSamplerMeasuresCPUAndRSS(t *testing.T) {
	s, err := StartSampler(SamplerOptions{Interval: 10 * time.Millisecond, ResetPeak: true}, []Group{{Name: "self", PIDs: []int{os.Getpid()}}})
	if err != nil {
		t.Fatal(err)
	}
	// Burn 300ms of this process's CPU (however busy the machine) and touch
	// 32 MiB, which the samples must see.
	buf := make([]byte, 32<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	fs, self := FS{}, os.Getpid()
	st0, err := fs.Stat(self)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	x := 0
	for {
		for range 1 << 20 {
			x++
		}
		st, err := fs.Stat(self)
		if err != nil {
			t.Fatal(err)
		}
		if st.CPUSeconds()-st0.CPUSeconds() >= 0.3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("could not burn 0.3s of CPU in 30s")
		}
	}
	got, err := s.Stop()
	if err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if len(got) != 1 {
		t.Fatalf("Stop returned %d usages, want 1", len(got))
	}
	u := got[0]
	if u.CPUSeconds < 0.3 || u.CPUSeconds > 30 {
		t.Errorf("CPUSeconds = %v after burning 0.3s, want between 0.3 and 30", u.CPUSeconds)
	}
	if u.RSSMaxBytes < 32<<20 {
		t.Errorf("RSSMaxBytes = %d, want at least the 32 MiB touched", u.RSSMaxBytes)
	}
	if u.PSSMaxBytes == 0 || u.PSSMaxBytes > u.RSSMaxBytes {
		t.Errorf("PSSMaxBytes = %d, want above 0 and at most RSSMaxBytes %d", u.PSSMaxBytes, u.RSSMaxBytes)
	}
	if u.HWMBytes < u.RSSMaxBytes {
		t.Errorf("HWMBytes = %d < RSSMaxBytes = %d: the lifetime peak cannot be below a sample", u.HWMBytes, u.RSSMaxBytes)
	}
	if !u.PeakReset {
		t.Errorf("PeakReset = false, but a process may reset its own VmHWM")
	}
	if u.Samples < 3 {
		t.Errorf("Samples = %d over at least 300ms at 10ms, want at least 3", u.Samples)
	}
	_ = buf[x%len(buf)]
}

func TestSamplerRefusesAMissingProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	_, err := StartSampler(SamplerOptions{}, []Group{{Name: "gone", PIDs: []int{cmd.Process.Pid}}})
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("StartSampler on an exited process: error = %v, want one naming the group", err)
	}
}

func TestResetPeak(t *testing.T) {
	fs, self := FS{}, os.Getpid()
	buf := make([]byte, 96<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	before, err := fs.Status(self)
	if err != nil {
		t.Fatal(err)
	}
	buf = nil
	runtime.GC()
	debug.FreeOSMemory()
	if err := fs.ResetPeak(self); err != nil {
		t.Fatalf("ResetPeak(self): %v", err)
	}
	after, err := fs.Status(self)
	if err != nil {
		t.Fatal(err)
	}
	if after.VmHWM+64<<20 > before.VmHWM {
		t.Errorf("VmHWM %d MiB after freeing 96 MiB and ResetPeak, was %d MiB: want it at least 64 MiB lower", after.VmHWM>>20, before.VmHWM>>20)
	}
	if err := fs.ResetPeak(1 << 30); err == nil {
		t.Errorf("ResetPeak of a process that does not exist: no error")
	}
}
