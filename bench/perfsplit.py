#!/usr/bin/env python3
"""Split a proxy's CPU samples by what the kernel was doing.

Reads `perf script` output of a call-graph recording on stdin and prints the
share of samples in each class, judged from the frames of each sample's stack:
context switches (finish_task_switch, by why the thread left the CPU), waking
another task, TCP send and receive, epoll, other kernel work, and user space.
docs/benchmarks.md ("Where the CPU goes now") has the figures and the commands:

    perf record -e cpu-clock -F 2000 -g -p PID -o hop.data -- sleep 10
    perf script -i hop.data | python3 bench/perfsplit.py
"""
import collections
import sys


def classify(frames):
    s = " ".join(frames)
    if "finish_task_switch" in s:
        if "do_epoll_wait" in s:
            return "context switch: blocked in epoll_wait"
        if "futex" in s:
            return "context switch: futex wait"
        if "exit_to_user_mode" in s:
            return "context switch: preempted on return to user space"
        if "nanosleep" in s:
            return "context switch: nanosleep"
        return "context switch: other"
    if "sock_def_readable" in s or "try_to_wake_up" in s:
        return "waking another task (socket reader, thread)"
    if "tcp_sendmsg" in s:
        return "tcp send"
    if "tcp_recvmsg" in s:
        return "tcp receive"
    if "do_epoll_wait" in s:
        return "epoll_wait"
    if frames and frames[0].startswith("k:"):
        return "kernel, other"
    return "user space"


def main():
    counts = collections.Counter()
    frames = []

    def flush():
        if frames:
            counts[classify(frames)] += 1
            frames.clear()

    for line in sys.stdin:
        if not line.strip():
            flush()
            continue
        if line[0] in " \t":
            parts = line.split()
            if len(parts) >= 2:
                where = "k:" if "kernel" in parts[-1] else "u:"
                frames.append(where + parts[1])
    flush()
    total = sum(counts.values())
    for what, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {what}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
