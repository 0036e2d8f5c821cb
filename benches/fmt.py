"""Formatting helpers for benches/run.sh: parse wrk output, print table rows."""
import json
import math
import re
import sys


def wrk(path):
    t = open(path).read()

    def ms(label):
        m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        if not m:
            return float("nan")
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v

    rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    rps = float(rps.group(1)) if rps else float("nan")
    print(f"{rps:.0f} {ms('50%'):.2f} {ms('99%'):.2f} {bad.group(1) if bad else 0}")


def _rows(path):
    return [[float(x) for x in line.split()] for line in open(path) if line.strip()]


def median(path):
    """Column-wise median of `wrk` lines (rps p50 p99 non2xx)."""
    rows = _rows(path)
    cols = list(zip(*rows))
    med = [sorted(c)[len(c) // 2] for c in cols]
    print(f"{med[0]:.0f} {med[1]:.2f} {med[2]:.2f} {med[3]:.0f}")


def spread(path_a, path_b):
    """Min-max of the per-pair throughput ratios a/b."""
    rs = [a[0] / b[0] for a, b in zip(_rows(path_a), _rows(path_b)) if b[0]]
    print(f"{min(rs):.2f}-{max(rs):.2f}" if rs else "n/a")


def ratio(a, b):
    a, b = float(a), float(b)
    print("n/a" if b == 0 or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}")


def drip(raw):
    d = json.loads(raw)
    print(
        f"| d. drip {d['rate_per_min']}/min over {d['secs']} s | {d['entries']:.0f} entries, "
        f"{d['per_sec']}/s | expected {d['expected']} | error {d['error_pct']}% |"
    )


def sse(raw):
    d = json.loads(raw)
    per = d.get("rss_bytes_per_connection")
    per = f"{per / 1024:.1f} KiB/conn" if per else "n/a"
    rss = (d.get("gateway_rss_bytes") or 0) / 2**20
    cpu = d.get("gateway_cpu_secs_fanout") or 0
    last = d.get("delay_ms_max") or 0
    print(
        f"| c. SSE waiters | {d['connections_open']}/{d['connections_requested']} open, RSS {rss:.0f} MiB ({per}) "
        f"| update delay p50 {d['delay_ms_p50']:.0f} ms, p99 {d['delay_ms_p99']:.0f} ms, last {last:.0f} ms "
        f"({d['delivered']} delivered) | fan-out CPU {cpu:.2f} s |"
    )


if __name__ == "__main__":
    commands = {"wrk": wrk, "ratio": ratio, "drip": drip, "sse": sse, "median": median, "spread": spread}
    commands[sys.argv[1]](*sys.argv[2:])
