"""Turn a run's raw numbers (``bench/out/results.json``) into RESULTS.md and results.png.

python -m bench.report [bench/out/results.json]   # re-render without re-running
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.backends import BEST_HTTP

REFS = {"flup": "flup prefork", "uwsgi": "uWSGI", "c": "C responder (raw protocol)"}
FCGI, FCGI_KA = "fcgi", "fcgi + keepalive"
NGINX_WORKLOADS = ["hello", "64k", "post16k", "upload1m", "headers40"]
#: Issue 14's rows (backend keys): uWSGI and fcgi behind uwsgi_pass, fcgi behind scgi_pass.
ISSUE14 = ("uwsgi-native", "fcgi-uwsgi", "fcgi-scgi")
#: The workloads issue 14's target is checked in: those it names, the upload if it ran.
ISSUE14_WORKLOADS = ("hello", "64k", "post16k", "upload1m")


def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else None


def summarize(data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> target name -> median/min/max req/s, latency, CPU, errors."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for wkey, per_target in data["runs"].items():
        for name, runs in per_target.items():
            ok = [r for r in runs if not r.get("failure")]
            rps = [r["rps"] for r in ok]
            out.setdefault(wkey, {})[name] = {
                "median": _med(rps) if rps else 0.0,
                "min": min(rps) if rps else 0.0,
                "max": max(rps) if rps else 0.0,
                "p50_us": _med([r.get("p50_us") for r in ok]),
                "p99_us": _med([r.get("p99_us") for r in ok]),
                "cpu_per_1k": _med([r.get("cpu_per_1k") for r in ok]),
                "errors": sum(int(r.get("errors", 0)) for r in runs),
                "failures": [r["failure"] for r in runs if r.get("failure")],
                "runs": len(runs),
                "stalled": max((int(r.get("stalled", 0)) for r in ok), default=0),
                "reconnects": sum(int(r.get("reconnects", 0)) for r in ok),
                # the mixed-latency workload only (bench/c/httpload.c)
                "slow_p50_us": _med([r.get("slow_p50_us") for r in ok]),
                "slow_p99_us": _med([r.get("slow_p99_us") for r in ok]),
                "fast": sum(int(r.get("fast", 0)) for r in ok),
                "slow": sum(int(r.get("slow", 0)) for r in ok),
            }
    return out


def best_http(data: dict[str, Any], per: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    """The faster of the BEST_HTTP peers in one workload's rows: (row name, median req/s)."""
    names = [t["name"] for t in data["targets"] if t["backend"] in BEST_HTTP]
    rows = [(n, float(per[n]["median"])) for n in names if per.get(n, {}).get("median")]
    return max(rows, key=lambda row: row[1]) if rows else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _fmt_num(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _label(data: dict[str, Any], key: str) -> str:
    return str(data["backends"].get(key, {}).get("label", key))


def target_checks(data: dict[str, Any], summ: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The targets of issue 5 for fcgi, one markdown row each."""
    rows: list[str] = []
    uw, fl, c = REFS["uwsgi"], REFS["flup"], REFS["c"]

    def med(w: str, name: str) -> float | None:
        v = summ.get(w, {}).get(name, {}).get("median")
        return float(v) if v else None

    def add(what: str, num: float | None, den: float | None, need: float, more: bool) -> None:
        r = _ratio(num, den)
        if r is None:
            rows.append(f"| {what} | - | {'≥' if more else '≤'} {need:g}x | not measured |")
            return
        ok = r >= need if more else r <= need
        gap = "" if ok else f" (gap {abs(r / need - 1) * 100:.0f}%)"
        rows.append(
            f"| {what} | {r:.2f}x | {'≥' if more else '≤'} {need:g}x | "
            f"{'yes' if ok else 'NO' + gap} |"
        )

    for w in NGINX_WORKLOADS:
        if w not in summ:
            continue
        add(f"{w} via nginx vs uWSGI", med(w, FCGI), med(w, uw), 1.1, True)
        add(f"{w} via nginx vs flup", med(w, FCGI), med(w, fl), 2.5, True)
        add(f"{w} via nginx vs C", med(w, FCGI), med(w, c), 0.85, True)
        add(f"{w} via nginx keepalive vs uWSGI", med(w, FCGI_KA), med(w, uw), 1.5, True)
    if "direct-new" in summ:
        add("direct new-conn vs uWSGI", med("direct-new", FCGI), med("direct-new", uw), 1.2, True)
        add("direct new-conn vs flup", med("direct-new", FCGI), med("direct-new", fl), 3.0, True)
    if "direct-keep" in summ:
        add(
            "direct kept conns vs uWSGI",
            med("direct-keep", FCGI),
            med("direct-keep", uw),
            2.0,
            True,
        )
    for w in ("direct-new", "direct-keep"):
        if w in summ:
            f_cpu = summ[w].get(FCGI, {}).get("cpu_per_1k")
            c_cpu = summ[w].get(c, {}).get("cpu_per_1k")
            add(f"{w} backend CPU/request vs C", f_cpu, c_cpu, 2.0, False)
    mem = data["memory"].get("fcgi", {})
    if "upload_peak_kib" in mem:
        grow = (mem["upload_peak_kib"] - mem["rss_worker_kib"]) / 1024
        ok = grow < 1.0
        rows.append(
            f"| 1 MiB upload: peak RSS growth per worker | {grow:.2f} MiB | < 1 MiB "
            f"(the body size) | {'yes' if ok else 'NO'} |"
        )
    return rows


def issue12_checks(data: dict[str, Any], summ: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Issue 12's targets for fcgi (both nginx configurations), one markdown row each."""
    rows: list[str] = []
    uw, c = REFS["uwsgi"], REFS["c"]

    def add(what: str, r: float | None, need: float, more: bool = True) -> None:
        sign = "≥" if more else "≤"
        if r is None:
            rows.append(f"| {what} | - | {sign} {need:g}x | not measured |")
            return
        ok = r >= need if more else r <= need
        gap = "" if ok else f" (gap {abs(r / need - 1) * 100:.0f}%)"
        rows.append(f"| {what} | {r:.2f}x | {sign} {need:g}x | {'yes' if ok else 'NO' + gap} |")

    def med(w: str, name: str, key: str = "median") -> float | None:
        v = summ.get(w, {}).get(name, {}).get(key)
        return float(v) if v else None

    for w in ("hello", "64k", "post16k"):
        if w not in summ:
            continue
        best = best_http(data, summ[w])
        for name in (FCGI, FCGI_KA):
            peer = f" ({best[0]})" if best else ""
            versus = _ratio(med(w, name), best[1]) if best else None
            add(f"{w}: {name} vs best HTTP peer{peer}", versus, 1.1)
            add(f"{w}: {name} vs uWSGI", _ratio(med(w, name), med(w, uw)), 1.2)
    if "upload1m" in summ:
        for name in (FCGI, FCGI_KA):
            versus = _ratio(med("upload1m", name), med("upload1m", uw))
            add(f"upload1m: {name} vs uWSGI", versus, 1.0)
    if "hello" in summ:
        for name, ref in ((FCGI, c), (FCGI_KA, f"{c} + keepalive")):
            cpu = _ratio(med("hello", name, "cpu_per_1k"), med("hello", ref, "cpu_per_1k"))
            add(f"hello: {name} backend CPU/request vs C, same nginx config", cpu, 1.5, False)
    if "mixed" in summ:
        p99 = _ratio(med("mixed", FCGI_KA, "p99_us"), med("mixed", FCGI, "p99_us"))
        add("mixed: fast requests' p99, keepalive vs without", p99, 1.0, False)
    # ASGI (item 4): the asyncio worker against uvicorn, the trio worker against
    # hypercorn on trio, each fcgi row at its better nginx configuration.
    asgi_peers = (("fcgi-asgi", "uvicorn", 1.0), ("fcgi-trio", "hypercorn", 1.2))
    for w in ("hello", "64k", "post16k"):
        for key, peer, need in asgi_peers:
            label, peer_label = _label(data, key), _label(data, peer)
            ours = [med(w, label), med(w, f"{label} + keepalive")]
            fastest = max((x for x in ours if x), default=None)
            add(f"{w}: {label} vs {peer_label}", _ratio(fastest, med(w, peer_label)), need)
    return rows


def issue14_checks(data: dict[str, Any], summ: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Issue 14's target (fcgi over uwsgi_pass against uWSGI over it), and what it costs.

    The target row per workload is required; the others are informative, with no target:
    fcgi on uwsgi and on SCGI against fcgi on FastCGI (the same pool, the same nginx, only
    the protocol differs), and uWSGI on its protocol against uWSGI on FastCGI (the issue's
    measure of what the uwsgi protocol itself is worth).
    """
    rows: list[str] = []
    native, fcgi_uwsgi, fcgi_scgi = (_label(data, k) for k in ISSUE14)
    fcgi, uwsgi_fcgi = _label(data, "fcgi"), _label(data, "uwsgi")

    def med(w: str, name: str) -> float | None:
        v = summ.get(w, {}).get(name, {}).get("median")
        return float(v) if v else None

    def ratio(w: str, num: str, den: str) -> float | None:
        return _ratio(med(w, num), med(w, den))

    for w in ISSUE14_WORKLOADS:
        if w not in summ:
            continue
        r = ratio(w, fcgi_uwsgi, native)
        what = f"{w}: {fcgi_uwsgi} vs {native}"
        if r is None:
            rows.append(f"| {what} | - | ≥ 1.2x | not measured |")
        else:
            gap = "" if r >= 1.2 else f"NO (gap {abs(r / 1.2 - 1) * 100:.0f}%)"
            rows.append(f"| {what} | {r:.2f}x | ≥ 1.2x | {gap or 'yes'} |")
        for num, den in ((fcgi_uwsgi, fcgi), (fcgi_scgi, fcgi), (native, uwsgi_fcgi)):
            shown = _fmt_ratio(ratio(w, num, den))
            den_name = f"{den} (fastcgi_pass)"
            rows.append(f"| {w}: {num} vs {den_name} | {shown} | - | informative |")
    return rows


def _fit(points: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    """Least-squares line y = a + b·x over the points; returns (a, b, r²)."""
    pts = [(p["x"], p[key]) for p in points if p.get(key) is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    syy = sum((y - my) ** 2 for _, y in pts)
    if sxx == 0:
        return None
    b = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy else 1.0
    return my - b * mx, b, r2


def render_markdown(data: dict[str, Any]) -> str:
    summ = summarize(data)
    m, s = data["machine"], data["settings"]
    lines = [
        "# fcgi benchmark results",
        "",
        "Generated by `python -m bench` (see `bench/README.md`); re-measured beside fcgi in "
        "every run.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; nginx {m['nginx']}, "
        f"wrk {m['wrk']}, Python {m['python']}, uWSGI {m['uwsgi']}, flup {m['flup']}, "
        f"fcgisgi {m['fcgisgi']}, "
        + "".join(
            f"{k} {m[k]}, "
            for k in ("uvicorn", "uvloop", "httptools", "granian", "gunicorn", "hypercorn")
            if k in m
        )
        + f"fcgi {m['fcgi']}; {m['date']}.",
        "",
        f"**Settings:** {s['rounds']} alternating round(s) x {s['duration']} s per run, "
        f"{s['workers']} processes per backend, {s['connections']} connections "
        f"(`wrk -t1 -c{s['connections']}` via nginx with 1 worker, or `fcgiload` direct); "
        f"fcgi command: {s.get('fcgi_command') or '-'}; wall time {s.get('wall_seconds', '?')} s.",
        "",
    ]
    if data["unavailable"]:
        lines += ["**Not measured:**", ""]
        for key, why in data["unavailable"].items():
            lines.append(f"- {_label(data, key)}: {why}")
        lines.append("")
    if data.get("notes"):
        lines += ["**Notes:**", "", *(f"- {note}" for note in data["notes"]), ""]

    # compact matrix
    names: list[str] = []
    for t in data["targets"]:
        if t["name"] not in names:
            names.append(t["name"])
    wl = {w["key"]: w["label"] for w in data["workloads"]}
    lines += [
        "## Median req/s",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for wkey, per in summ.items():
        cells = [_fmt_num(per[n]["median"]) if n in per else "" for n in names]
        lines.append(f"| {wl.get(wkey, wkey)} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += [
        "## All rows",
        "",
        "req/s: median of the rounds [min-max]. Latency: median over rounds of each run's p50 "
        "and p99 (for the mixed workload: of the fast requests only). CPU: backend processes' "
        "utime+stime per 1,000 requests (from /proc). Ratios are median req/s against the same "
        "workload's flup, uWSGI and C-responder rows, and against the best HTTP peer: the "
        "faster of uvicorn and granian in that workload. The HTTP peers are always reached "
        "through nginx's keepalive upstream (proxy_pass, HTTP/1.1). The `(uwsgi_pass)` and "
        "`(scgi_pass)` rows go through `include uwsgi_params` / `include scgi_params` and a new "
        "connection per request (neither protocol keeps one); the rest are FastCGI.",
        "",
        "| workload | backend | req/s | min-max | p50 ms | p99 ms | CPU s/1k req | x flup "
        "| x uWSGI | x C | x best HTTP | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wkey, per in summ.items():
        best = best_http(data, per)
        for name, r in per.items():
            refs = [
                _ratio(r["median"], per.get(REFS[k], {}).get("median"))
                for k in ("flup", "uwsgi", "c")
            ]
            refs.append(_ratio(r["median"], best[1]) if best else None)
            err = str(r["errors"])
            if r["failures"]:
                err += " (failed: " + r["failures"][0][:80].replace("|", "/") + ")"
            if r["stalled"]:
                err += f"; {r['stalled']}/16 conns stalled"
            if r["reconnects"]:
                err += f"; {r['reconnects']} backend closes of kept conns"
            lines.append(
                f"| {wl.get(wkey, wkey)} | {name} | {_fmt_num(r['median'])} | "
                f"{_fmt_num(r['min'])}-{_fmt_num(r['max'])} | {_fmt_ms(r['p50_us'])} | "
                f"{_fmt_ms(r['p99_us'])} | {_fmt_num(r['cpu_per_1k'], 3)} | "
                + " | ".join(_fmt_ratio(x) for x in refs)
                + f" | {err} |"
            )
    lines.append("")

    if "mixed" in summ:
        lines += [
            "## Mixed latency: 1% of requests wait 50 ms",
            "",
            "`bench/build/httpload` (16 keep-alive connections, closed loop like wrk) sends "
            "every 100th request to `/slow` (the app sleeps 50 ms: blocking in WSGI, awaited in "
            "ASGI) and the rest to `/hello`, and times each request from its first byte written "
            "to its last byte read. The fast requests' p50/p99 show how long a quick request "
            "waits behind slow ones: in a worker busy with a slow request, or on a connection "
            "nginx parked there. Medians over rounds.",
            "",
            "| backend | req/s | fast p50 ms | fast p99 ms | slow p50 ms | fast / slow requests "
            "| x best HTTP (fast p99) | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        per = summ["mixed"]
        best = best_http(data, per)
        best_p99 = per[best[0]]["p99_us"] if best else None
        for name, r in per.items():
            lines.append(
                f"| {name} | {_fmt_num(r['median'])} | {_fmt_ms(r['p50_us'])} | "
                f"{_fmt_ms(r['p99_us'])} | {_fmt_ms(r['slow_p50_us'])} | "
                f"{r['fast']:,} / {r['slow']:,} | {_fmt_ratio(_ratio(r['p99_us'], best_p99))} | "
                f"{r['errors']} |"
            )
        lines += [
            "",
            "`x best HTTP (fast p99)` is this row's fast p99 over the best HTTP peer's (the "
            "faster of uvicorn and granian by req/s): below 1 is better.",
            "",
        ]

    lines += [
        "## Memory",
        "",
        "VmRSS per worker process (mean), after start and after all runs; peak = the "
        "largest worker VmHWM during the 1 MiB uploads (VmHWM reset before each upload run).",
        "",
        "| backend | processes | workers | RSS/worker idle MiB | after MiB | "
        "1 MiB upload peak/worker MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, mem in data["memory"].items():
        after = mem.get("rss_worker_after_kib")
        peak = mem.get("upload_peak_kib")
        lines.append(
            f"| {_label(data, key)} | {mem['processes']} | {mem['workers']} | "
            f"{mem['rss_worker_kib'] / 1024:.1f} | "
            f"{'-' if after is None else f'{after / 1024:.1f}'} | "
            f"{'-' if peak is None else f'{peak / 1024:.1f}'} |"
        )
    lines.append("")

    if "fcgi" in data["memory"]:
        lines += [
            "## fcgi against the targets of issue 12",
            "",
            "Best HTTP peer = the faster of uvicorn and granian in that workload of this run.",
            "",
            "| target | measured | required | met |",
            "|---|---:|---:|---|",
            *issue12_checks(data, summ),
            "",
        ]

    if any(k in data["memory"] for k in ISSUE14):
        lines += [
            "## fcgi against the targets of issue 14",
            "",
            "fcgi and uWSGI on the uwsgi protocol (`include uwsgi_params; uwsgi_pass`), fcgi on "
            "SCGI (`include scgi_params; scgi_pass`), through the same nginx as the FastCGI "
            "rows, each with a new backend connection per request. Informative rows set a "
            "protocol against FastCGI on the same server (fcgi, or uWSGI's `--fastcgi-socket`).",
            "",
            "| target | measured | required | met |",
            "|---|---:|---:|---|",
            *issue14_checks(data, summ),
            "",
        ]

    checks = target_checks(data, summ)
    lines += ["## fcgi against the targets of issue 5", ""]
    if "fcgi" in data["memory"]:
        lines += ["| target | measured | required | met |", "|---|---:|---:|---|", *checks]
    else:
        lines.append("fcgi was not measured in this run (see *Not measured* above).")
    lines.append("")

    if data["curve"]:
        lines += [
            "## Cost curve",
            "",
            "Direct (fcgiload, 16 connections, new connection per request). "
            "`cpu µs/req` is backend CPU per request from /proc; the fit is a least-squares "
            "line over the points.",
            "",
        ]
        titles = {
            "response_bytes": "response body bytes (`/size/N`)",
            "request_bytes": "request body bytes (POST `/post`)",
            "headers": "request headers (`/hello` + N headers)",
        }
        for series, title in titles.items():
            keys = [k for k in data["curve"] if series in data["curve"][k]]
            if not keys:
                continue
            lines += [
                f"### vs {title}",
                "",
                "| N | " + " | ".join(f"{_label(data, k)} req/s | cpu µs/req" for k in keys) + " |",
                "|---:|" + "---:|---:|" * len(keys),
            ]
            xs = [p["x"] for p in data["curve"][keys[0]][series]]
            for i, x in enumerate(xs):
                cells = []
                for k in keys:
                    p = data["curve"][k][series][i]
                    bad = f" ({p['errors']} err)" if p["errors"] else ""
                    cells.append(f"{_fmt_num(p['rps'])}{bad} | {_fmt_num(p['cpu_us_per_req'], 1)}")
                lines.append(f"| {x:,} | " + " | ".join(cells) + " |")
            for k in keys:
                fit = _fit(data["curve"][k][series], "cpu_us_per_req")
                if fit:
                    a, b, r2 = fit
                    unit, scale = ("KiB", 1024) if series != "headers" else ("header", 1)
                    lines.append(
                        f"\n{_label(data, k)}: cpu µs/req ≈ {a:.1f} + "
                        f"{b * scale:.3f} per {unit} (r² = {r2:.3f})"
                    )
            lines.append("")
    lines += ["## Backends", "", "| backend | command | note |", "|---|---|---|"]
    for b in data["backends"].values():
        lines.append(f"| {b['label']} | `{b['argv'] or '-'}` | {b['note']} |")
    lines.append("")
    lines.append("![results](results.png)")
    lines.append("")
    return "\n".join(lines)


def render_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(data)
    names: list[str] = []
    for t in data["targets"]:
        if t["name"] not in names:
            names.append(t["name"])
    wkeys = list(summ)
    has_curve = bool(data["curve"])
    has_mixed = "mixed" in summ
    nrows = 1 + has_curve + has_mixed
    fig = plt.figure(figsize=(14, 4.5 + 4 * (nrows - 1)))
    grid = fig.add_gridspec(nrows, 3, height_ratios=[1.3] + [1] * (nrows - 1))
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / max(1, len(names))
    ref = REFS["c"]
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, w in enumerate(wkeys):
            r = summ[w].get(name)
            base = summ[w].get(ref, {}).get("median")
            if not r or not base:
                continue
            xs.append(j + (i - (len(names) - 1) / 2) * width)
            ys.append(r["median"] / base)
            lo.append((r["median"] - r["min"]) / base)
            hi.append((r["max"] - r["median"]) / base)
        ax.bar(xs, ys, width, yerr=[lo, hi], label=name, capsize=2)
    labels = {w["key"]: w["label"] for w in data["workloads"]}
    ticks = []
    for w in wkeys:
        base = summ[w].get(ref, {}).get("median")
        text = labels.get(w, w).replace(", ", ",\n").replace(" via", "\nvia")
        ticks.append(f"{text}\n(C: {base:,.0f}/s)" if base else text)
    ax.set_xticks(range(len(wkeys)))
    ax.set_xticklabels(ticks, fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_ylabel("req/s relative to the C responder (median, min-max)")
    ax.set_title(
        f"FastCGI, uwsgi and SCGI backends and HTTP peers behind one nginx, "
        f"{data['settings']['workers']} "
        f"processes each ({data['machine']['date']})"
    )
    ax.legend(fontsize=7, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    if has_curve:
        series = [
            ("response_bytes", "response body bytes"),
            ("request_bytes", "request body bytes"),
            ("headers", "request headers"),
        ]
        for i, (key, title) in enumerate(series):
            cax = fig.add_subplot(grid[1, i])
            for bkey, per in data["curve"].items():
                pts = [p for p in per.get(key, []) if p.get("cpu_us_per_req") is not None]
                cax.plot(
                    [p["x"] for p in pts],
                    [p["cpu_us_per_req"] for p in pts],
                    "o-",
                    label=data["backends"].get(bkey, {}).get("label", bkey),
                )
            cax.set_xlabel(title)
            cax.set_ylabel("backend CPU µs / request")
            if key != "headers":
                cax.set_xscale("log", base=2)
                cax.set_yscale("log")
            cax.grid(alpha=0.3)
            cax.legend(fontsize=7)
    if has_mixed:
        _mixed_panel(fig.add_subplot(grid[nrows - 1, :]), summ["mixed"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mixed_panel(ax: Any, per: dict[str, dict[str, Any]]) -> None:
    """Fast requests' p50 and p99 (ms) per row of the mixed-latency workload."""
    names = [n for n, r in per.items() if r.get("p50_us") is not None]
    ys = range(len(names))
    p50 = [per[n]["p50_us"] / 1000 for n in names]
    p99 = [per[n]["p99_us"] / 1000 for n in names]
    ax.barh([y + 0.2 for y in ys], p99, 0.4, label="p99")
    ax.barh([y - 0.2 for y in ys], p50, 0.4, label="p50")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("fast requests' latency, ms (log scale)")
    ax.set_title("hello + 1% /slow (50 ms) via nginx: latency of the fast requests")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)


def write(data: dict[str, Any], md_path: Path, png_path: Path) -> str:
    md = render_markdown(data)
    md_path.write_text(md)
    try:
        render_png(data, png_path)
    except ImportError as exc:
        print(f"[bench] no chart: {exc}", file=sys.stderr)
    return md


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).parent / "out" / "results.json"
    data = json.loads(src.read_text())
    here = Path(__file__).parent
    write(data, here / "RESULTS.md", here / "results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
