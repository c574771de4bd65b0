#!/usr/bin/env python3
"""Turns the JSON lines the bench scripts write into the markdown tables of docs/benchmarks.md.

usage: report.py webhook target/bench/webhook.jsonl
"""
import json
import sys


def ms(us):
    return f"{us / 1000:.2f}"


def mib(kib):
    return f"{kib / 1024:.1f}"


def server_ms(r):
    p50, p99 = r.get("server_p50_us"), r.get("server_p99_us")
    if p50 is None or p99 is None:
        return "–"
    return f"{p50 / 1000:.2f} / {p99 / 1000:.2f}"


def share(x):
    return "–" if x is None else f"{x * 100:.1f}%"


def errors(r):
    return sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))


METRIC = "healthscope_webhook_request_duration_seconds"


def buckets(path):
    """Cumulative bucket counts of METRIC, summed over its series: {le: count}."""
    out = {}
    for line in open(path):
        if not line.startswith(METRIC + "_bucket"):
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        le = float("inf") if le == "+Inf" else float(le)
        out[le] = out.get(le, 0.0) + float(value)
    return out


def quantile(cumulative, q):
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    items = sorted(cumulative.items())
    total = items[-1][1] if items else 0
    if total <= 0:
        return None
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            inside = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / inside if inside else 1)
        prev_le, prev_count = le, count
    return None


def server_latency(before, after):
    """Server-side p50/p99 (µs) and share within 5 ms of the requests between two scrapes."""
    b, a = buckets(before), buckets(after)
    diff = {le: a[le] - b.get(le, 0.0) for le in a}
    total = diff.get(float("inf"), 0)
    p50, p99 = quantile(diff, 0.5), quantile(diff, 0.99)
    print(json.dumps({
        "server_p50_us": round(p50 * 1e6) if p50 is not None else None,
        "server_p99_us": round(p99 * 1e6) if p99 is not None else None,
        "server_within_5ms": diff.get(0.005, 0) / total if total else None,
    }))


def webhook(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by_key = {(r["review"], r["conns"], r["server"]): r for r in rows}
    print("| review | conns | webhook req/s | floor req/s | ratio | webhook p50 / p99 ms | floor p50 / p99 ms "
          "| errors webhook / floor | webhook RSS under load / peak MiB | floor RSS MiB | webhook CPU s "
          "| server-side p50 / p99 ms | server-side ≤ 5 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for review in dict.fromkeys(r["review"] for r in rows):
        for conns in sorted({r["conns"] for r in rows if r["review"] == review}):
            w, f = by_key.get((review, conns, "webhook")), by_key.get((review, conns, "floor"))
            if not w or not f:
                continue
            w_rps = w["requests"] / (w["duration_us"] / 1e6)
            f_rps = f["requests"] / (f["duration_us"] / 1e6)
            print(f"| {review} | {conns} | {w_rps:,.0f} | {f_rps:,.0f} | {w_rps / f_rps:.2f} "
                  f"| {ms(w['p50_us'])} / {ms(w['p99_us'])} | {ms(f['p50_us'])} / {ms(f['p99_us'])} "
                  f"| {errors(w)} / {errors(f)} | {mib(w['rss_kib'])} / {mib(w['hwm_kib'])} "
                  f"| {mib(f['rss_kib'])} | {w['cpu_s']:.1f} "
                  f"| {server_ms(w)} | {share(w.get('server_within_5ms'))} |")


if __name__ == "__main__":
    {"webhook": webhook, "server-latency": server_latency}[sys.argv[1]](*sys.argv[2:])
