"""Formatting helpers for benches/run.sh: parse wrk output, print table rows."""
import json
import math
import re
import statistics
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


def cpu_per_request(path, ticks):
    """A process's CPU per request in µs: `ticks` (1/100 s) over wrk's count."""
    m = re.search(r"^\s*(\d+) requests in", open(path).read(), re.M)
    n = int(m.group(1)) if m else 0
    print(f"{int(ticks) * 10_000 / n:.1f}" if n else "nan")


def cpu_median(path):
    """Median of the CPU-per-request column (the fifth) of `run_wrk` lines."""
    vals = [r[4] for r in _rows(path) if len(r) > 4 and not math.isnan(r[4])]
    print(f"{statistics.median(vals):.1f}" if vals else "nan")


def cpu_spread(path_a, path_b):
    """Min-max of the per-pair CPU-per-request ratios a/b."""
    rs = [a[4] / b[4] for a, b in zip(_rows(path_a), _rows(path_b))
          if len(a) > 4 and len(b) > 4 and b[4] and not math.isnan(a[4] / b[4])]
    print(f"{min(rs):.2f}-{max(rs):.2f}" if rs else "n/a")


def _rows(path):
    return [[float(x) for x in line.split()] for line in open(path) if line.strip()]


def median(path):
    """Column-wise median of `wrk` lines (rps p50 p99); non-2xx are summed."""
    rows = _rows(path)
    cols = list(zip(*rows))
    med = [statistics.median(c) for c in cols[:3]]
    print(f"{med[0]:.0f} {med[1]:.2f} {med[2]:.2f} {sum(cols[3]):.0f}")


def spread(path_a, path_b):
    """Min-max of the per-pair throughput ratios a/b."""
    rs = [a[0] / b[0] for a, b in zip(_rows(path_a), _rows(path_b)) if b[0]]
    print(f"{min(rs):.2f}-{max(rs):.2f}" if rs else "n/a")


def pair_median(path_a, path_b):
    """Median of the per-pair throughput ratios a/b."""
    rs = [a[0] / b[0] for a, b in zip(_rows(path_a), _rows(path_b)) if b[0]]
    print(f"{statistics.median(rs):.2f}" if rs else "n/a")


def ratio(a, b):
    a, b = float(a), float(b)
    print("n/a" if b == 0 or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}")


def drip(raw):
    d = json.loads(raw)
    replicas = d.get("replicas", 1)
    where = f", Redis store, {replicas} replicas" if replicas > 1 else ""
    retried = d.get("claims_not_yet", 0)
    retried = f" ({retried} claim attempts answered not-yet, then retried)" if retried else ""
    print(
        f"| d. drip {d['rate_per_min']}/min over {d['secs']} s{where} | {d['entries']:.0f} entries, "
        f"{d['per_sec']}/s{retried} | expected {d['expected']} | error {d['error_pct']}% |"
    )


def _sse_runs(path):
    runs = []
    for line in open(path):
        try:
            runs.append(json.loads(line))
        except ValueError:
            print(f"(an SSE run failed: {line.strip()[:200]})", file=sys.stderr)
    return runs


def _num(v):
    """A JSON number, or NaN for null (no stream delivered: no percentile)."""
    return float("nan") if v is None else v


def _med(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _sse_summary(path):
    """Median delays over runs; memory from the first run (a gateway's later
    runs reuse memory its allocator kept, so their RSS growth reads low)."""
    runs = _sse_runs(path)
    if not runs:
        return None
    first = runs[0]
    return {
        "runs": len(runs),
        "open": min(r["connections_open"] for r in runs),
        "requested": first["connections_requested"],
        "delivered": min(r["delivered"] for r in runs),
        "p50": _med([r["delay_ms_p50"] for r in runs]),
        "p99": _med([r["delay_ms_p99"] for r in runs]),
        "last": _med([r.get("delay_ms_max") for r in runs]),
        "cpu": _med([r.get("gateway_cpu_secs_fanout") for r in runs]),
        "loadgen_cpu": _med([r.get("loadgen_cpu_secs_fanout") for r in runs]),
        "rss": (first.get("gateway_rss_bytes") or 0) / 2**20,
        "per_conn": first.get("rss_bytes_per_connection"),
        "p99s": [r["delay_ms_p99"] for r in runs],
        "failed": _failed(runs),
    }


def sse(path):
    d = _sse_summary(path)
    if d is None:
        print("| c. SSE waiters | failed | | |")
        return
    per = f"{d['per_conn'] / 1024:.1f} KiB/conn" if d["per_conn"] else "n/a"
    print(
        f"| c. SSE waiters (median of {d['runs']}) | {d['open']}/{d['requested']} open{d['failed']}, RSS {d['rss']:.0f} MiB ({per}) "
        f"| update delay p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, last {d['last']:.0f} ms "
        f"({d['delivered']} delivered) | fan-out CPU {d['cpu']:.2f} s{_loadgen_cpu(d['loadgen_cpu'])} |"
    )


def _loadgen_cpu(secs):
    """', load generator N s' (it runs on the same cores), or ''."""
    if secs is None or math.isnan(secs):
        return ""
    return f"; load generator {secs:.2f} s"


def _failed(runs):
    """' (N failed: why ×n, …)' over the runs, or ''."""
    errors = {}
    for r in runs:
        for why, n in (r.get("errors") or {}).items():
            errors[why] = errors.get(why, 0) + n
    total = sum(r.get("failures", 0) for r in runs)
    if not total:
        return ""
    whys = ", ".join(f"{why} ×{n}" for why, n in sorted(errors.items()))
    return f" ({total} failed: {whys})"


def sse_big(path):
    """Row for the SSE run spread over several replicas sharing one Redis."""
    runs = _sse_runs(path)
    if not runs:
        print("| c. SSE waiters on several replicas | failed | | |")
        return
    d = runs[0]
    per = d.get("rss_bytes_per_connection")
    per = f"{per / 1024:.1f} KiB/conn" if per else "n/a"
    rss = (d.get("gateway_rss_bytes") or 0) / 2**20
    cpu = d.get("gateway_cpu_secs_fanout")
    cpu = "n/a" if cpu is None else f"{cpu:.2f} s"
    print(
        f"| c. {d['connections_requested']} SSE waiters on {d['replicas']} replicas sharing one Redis "
        f"({d['processes']} load-generator processes) | {d['connections_open']}/{d['connections_requested']} open{_failed(runs)}, "
        f"RSS {rss:.0f} MiB in all ({per}; goal ≤ 2 GiB at 100,000) "
        f"| update delay p50 {_num(d.get('delay_ms_p50')):.0f} ms, p99 {_num(d.get('delay_ms_p99')):.0f} ms (goal ≤ 1 s), "
        f"last {_num(d.get('delay_ms_max')):.0f} ms ({d['delivered']} delivered) | fan-out CPU {cpu} (all replicas){_loadgen_cpu(d.get('loadgen_cpu_secs_fanout'))} |"
    )


def sse_moving(path):
    """Row for the SSE run with every stream its own fan while the line moves."""
    runs = _sse_runs(path)
    if not runs or not runs[0].get("moving"):
        print("| c. SSE fans while the line moves | failed | | |")
        return
    d, m = runs[0], runs[0]["moving"]
    open_ = d["connections_open"]
    per_fan_min = m["messages_per_sec"] * 60 / open_ if open_ else float("nan")
    cores = m.get("gateway_cpu_cores")
    cores = "n/a" if cores is None else f"{cores:.2f} of a core"
    retried = m.get("join_retries") or 0
    retried = f" ({retried} joins answered 503 and retried)" if retried else ""
    print(
        f"| c. {d['connections_requested']} SSE fans, each in their own place, while the line moves "
        f"({m['rate_per_min']}/min for {m['secs']} s) | {open_}/{d['connections_requested']} open{_failed(runs)}{retried}; "
        f"{m['messages_per_sec']:.0f} messages/s written ({per_fan_min:.1f} per fan a minute) "
        f"| resume reached p99 {_num(d.get('delay_ms_p99')):.0f} ms ({d['delivered']} delivered) "
        f"| gateway CPU while moving: {cores} |"
    )


def _moving_cell(path):
    """A moving-line run's cell text with its resume p99 and message rate, or None."""
    runs = _sse_runs(path)
    if not runs or not runs[0].get("moving"):
        return None
    d, m = runs[0], runs[0]["moving"]
    return {
        "text": f"{d['connections_open']}/{d['connections_requested']} open in {_num(d.get('open_secs')):.1f} s{_failed(runs)}, "
        f"{m.get('join_retries') or 0} joins answered 503; {m['messages_per_sec']:.0f} messages/s; "
        f"resume p99 {_num(d.get('delay_ms_p99')):.0f} ms",
        "p99": _num(d.get("delay_ms_p99")),
        "rate": m["messages_per_sec"],
    }


def sse_moving_vs(path_a, path_b):
    """Row comparing the moving line (a burst of joins first) on gateway a (Redis) with b (embedded)."""
    a, b = _moving_cell(path_a), _moving_cell(path_b)
    if a is None or b is None:
        print("| c. SSE fans joining at once, then a moving line | failed | | |")
        return
    p99 = f"{a['p99'] / b['p99']:.2f}" if b["p99"] else "n/a"
    print(f"| c. SSE fans joining at once, then a moving line | {a['text']} | {b['text']} | resume p99 {p99} |")


def sse_vs(path_a, path_b):
    """Row comparing SSE runs of gateway a (Redis) with gateway b (embedded)."""
    a, b = _sse_summary(path_a), _sse_summary(path_b)
    if a is None or b is None:
        print("| c. SSE waiters | failed | | |")
        return
    pairs = [x / y for x, y in zip(a["p99s"], b["p99s"]) if y]
    spread = f"{min(pairs):.2f}-{max(pairs):.2f}" if pairs else "n/a"
    p99 = "n/a" if not b["p99"] else f"{a['p99'] / b['p99']:.2f}"
    mem = "n/a" if not (a["per_conn"] and b["per_conn"]) else f"{a['per_conn'] / b['per_conn']:.2f}"

    def cell(d):
        per = f"{d['per_conn'] / 1024:.1f} KiB/conn" if d["per_conn"] else "n/a"
        return (
            f"{d['open']}/{d['requested']} open, {d['delivered']} delivered; delay p50 {d['p50']:.0f} / "
            f"p99 {d['p99']:.0f} / last {d['last']:.0f} ms; {per}"
        )

    print(f"| c. SSE waiters | {cell(a)} | {cell(b)} | p99 delay {p99} (pairs: {spread}); RSS/conn {mem} |")


if __name__ == "__main__":
    commands = {"wrk": wrk, "ratio": ratio, "drip": drip, "sse": sse, "sse_big": sse_big, "sse_moving": sse_moving, "sse_vs": sse_vs, "sse_moving_vs": sse_moving_vs, "median": median, "spread": spread, "pair_median": pair_median, "cpu_per_request": cpu_per_request, "cpu_median": cpu_median, "cpu_spread": cpu_spread}
    commands[sys.argv[1]](*sys.argv[2:])
