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


def errors(r):
    return sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))


def webhook(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by_key = {(r["review"], r["conns"], r["server"]): r for r in rows}
    print("| review | conns | webhook req/s | floor req/s | ratio | webhook p50 / p99 ms | floor p50 / p99 ms "
          "| errors webhook / floor | webhook RSS under load / peak MiB | floor RSS MiB | webhook CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
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
                  f"| {mib(f['rss_kib'])} | {w['cpu_s']:.1f} |")


if __name__ == "__main__":
    {"webhook": webhook}[sys.argv[1]](*sys.argv[2:])
