"""The benchmark's table and its targets (PASS / MISS; exactly-once checks OK / FAIL)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any

import envelope_lookup

# The performance targets (docs/performance.md).
RELAY_VS_HAND_WRITTEN_MIN = 0.90
RELAY_TARGET_BATCHES = (1_000, 5_000)
OUTBOX_ADDED_MAX_MS = 0.2
OUTBOX_VS_DIRECT_MIN = 5.0
KICK_P50_MAX_S = 0.25
KICK_P99_MAX_S = 0.5
RSS_DRIFT_MAX_MB = 20.0
LOAD_P99_MAX_MS = 100.0

VARIANT_LABELS = {
    "none": "no event (create user only)",
    "outbox": "outbox: + publish()",
    "direct": "old way: + direct ClickHouse INSERT",
    "use_case": "CreateUser use case (outbox)",
    "outbox_kick": "outbox + on-commit kick (Redis)",
    "select_1": "+ SELECT 1 (one more round trip)",
}


def _range(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def _status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(target: str, measured: str, status: str) -> None:
        rows.append({"target": target, "measured": measured, "status": status})

    if "throughput" in results:
        for c in results["throughput"]["comparisons"]:
            # The target is one relay against one hand-written relay. Two of each on two
            # cores are CPU-bound: there the ratio is that of the CPU time per event, and
            # the relay's guarantees (seal, chain digests) cost CPU (section 2, info).
            # Scored on the median of the rounds' ratios: each pairs two runs made seconds
            # apart, which a change of the machine's speed between rounds does not skew.
            if c["batch_size"] in RELAY_TARGET_BATCHES and c["workers"] == 1:
                paired = median(c["ratios_by_round"])
                add(
                    f"relay >= 90% of the hand-written relay, batch {c['batch_size']:,}, 1 relay",
                    f"{paired:.1%} median of {len(c['ratios_by_round'])} paired rounds; "
                    f"{c['ratio']:.1%} median over median ({c['relay_events_per_s']:,.0f} vs "
                    f"{c['hand_written_events_per_s']:,.0f} ev/s)",
                    _status(paired >= RELAY_VS_HAND_WRITTEN_MIN),
                )
        relay_runs = [r for r in results["throughput"]["runs"] if r["kind"] == "relay"]
        bad = [r for r in relay_runs if not r["exactly_once"]]
        add(
            "exactly once after every real-relay run",
            f"{len(relay_runs) - len(bad)}/{len(relay_runs)} runs",
            "FAIL" if bad else "OK",
        )
    if "chain" in results:
        v = results["chain"]["verification"]
        add(
            "event_log_verify finds nothing after a clean drain",
            f"{v['findings']} findings over {v['events']:,} events ({v['entries']:,} entries)",
            _status(v["clean"]),
        )
    if "publish" in results:
        p = results["publish"]
        add(
            "outbox adds <= 0.2 ms median to a transaction",
            f"{p['outbox_added_median_ms']:+.3f} ms (pass A; SELECT 1 adds "
            f"{p['select_1_added_median_ms']:+.3f} ms)",
            _status(p["outbox_added_median_ms"] <= OUTBOX_ADDED_MAX_MS),
        )
        add(
            "outbox >= 5x faster than the direct insert",
            f"{p['direct_added_over_outbox_added']:.1f}x the added cost "
            f"({p['direct_over_outbox']:.1f}x per transaction, pass B)",
            _status(p["direct_added_over_outbox_added"] >= OUTBOX_VS_DIRECT_MIN),
        )
    if "latency" in results:
        lat = results["latency"]["kick"]["latency"]
        rate = results["latency"]["rate"]
        add(
            f"kick: p50 <= 0.25 s at {rate:.0f} events/s",
            f"{lat['p50_s'] * 1000:.0f} ms",
            _status(lat["p50_s"] <= KICK_P50_MAX_S),
        )
        add(
            f"kick: p99 <= 0.5 s at {rate:.0f} events/s",
            f"{lat['p99_s'] * 1000:.0f} ms",
            _status(lat["p99_s"] <= KICK_P99_MAX_S),
        )
        phases = [results["latency"]["kick"], results["latency"]["beat"]]
        bad_phases = [ph["name"] for ph in phases if not ph["exactly_once"]]
        add(
            "exactly once through the Celery worker",
            ", ".join(bad_phases) if bad_phases else "kick and Beat phases",
            "FAIL" if bad_phases else "OK",
        )
    if "memory" in results:
        m = results["memory"]
        drift = max(m["max_minus_start_mb"], m["start_minus_min_mb"])
        add(
            f"relay RSS within +/-20 MB over {m['events']:,} events",
            f"start {m['start_mb']:.0f} MiB, max {m['max_mb']:.0f}, end {m['end_mb']:.0f} "
            f"(drift {drift:.1f} MiB)",
            _status(drift <= RSS_DRIFT_MAX_MB),
        )
        add(
            f"memory drain delivered every event once ({m['events']:,})",
            m["check"],
            "OK" if m["exactly_once"] else "FAIL",
        )
        if "without_release" in m:
            off = m["without_release"]
            add(
                "memory drain with the release off delivered every event once",
                off["check"],
                "OK" if off["exactly_once"] else "FAIL",
            )
    if "fsync" in results:
        f = results["fsync"]
        add(
            "fsync on insert: both tables hold every row once",
            f"{f['batches']} INSERTs of {f['rows_per_batch']:,} rows each",
            "OK" if f["exactly_once"] else "FAIL",
        )
    if "lookup" in results:
        lookup = results["lookup"]
        add(
            "envelope lookups find the same rows with and without the skip indexes",
            ", ".join(
                f"{name} {entry['indexed']['rows_found_total']}"
                for name, entry in lookup["lookups"].items()
            ),
            "OK" if all(entry["same_rows"] for entry in lookup["lookups"].values()) else "FAIL",
        )
    if "load" in results:
        load = results["load"]
        outage = load.get("outage")
        if outage:
            before, during = outage["before"], outage["during"]
            add(
                "load: request p99 < 100 ms while ClickHouse is away (50 % rate)",
                f"{during['p99_ms']:.0f} ms (before: {before['p99_ms']:.0f} ms), "
                f"{during['errors']} errors",
                _status(during["p99_ms"] < LOAD_P99_MAX_MS and during["errors"] == 0),
            )
        if "exactly_once" in load:
            add(
                "load: every event of the run in ClickHouse exactly once",
                f"{load['exactly_once']['clickhouse_rows']:,} rows for "
                f"{load['exactly_once']['users_created']:,} users",
                "OK" if load["exactly_once"]["ok"] else "FAIL",
            )
    return rows


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"Event log benchmark — {results['mode']} run, {results['started_at'][:19]}Z, "
        f"{results['duration_s'] / 60:.1f} min",
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB; Python {m['python']}, "
        f"Django {m['django']}, PostgreSQL {m['postgresql']}, ClickHouse {m['clickhouse']} "
        f"({results['settings']['clickhouse']})",
        f"source {results.get('source', 'unknown')}; "
        f"load average (1 min) at the start of each section: {_loads(results)}",
    ]
    if "publish" in results:
        p = results["publish"]
        rows = []
        for pass_, stats in (("A", p["variants"]), ("B", p["direct_pass"])):
            base = stats["none"]["median_ms"]
            rows += [
                [
                    pass_,
                    VARIANT_LABELS[name],
                    f"{v['median_ms']:.3f}",
                    f"{v['p99_ms']:.3f}",
                    f"{v['median_ms'] - base:+.3f}",
                    f"{v['median_ms'] / base:.2f}x",
                ]
                for name, v in stats.items()
            ]
        out += [
            "",
            f"1. Publish overhead — one business transaction; pass A {p['rounds']:,} samples per "
            f"variant, pass B (ClickHouse client in the process) {p['rounds_direct_pass']:,}",
            table(
                ["pass", "transaction", "median ms", "p99 ms", "added ms", "vs no event"],
                rows,
                {2, 3, 4, 5},
            ),
            f"outbox adds {p['outbox_added_median_ms']:.3f} ms (median, pass A), "
            f"{p['outbox_added_over_select_1_added']:.2f}x what one SELECT 1 adds; in pass B the "
            f"direct insert adds {p['direct_added_median_ms']:.3f} ms and the outbox "
            f"{p['direct_pass_outbox_added_median_ms']:.3f} ms "
            f"({p['direct_added_over_outbox_added']:.1f}x); a direct-insert transaction takes "
            f"{p['direct_over_outbox']:.1f}x an outbox one",
        ]
        if "statements" in p:
            labels = {
                "select_1": "SELECT 1 (the floor)",
                "insert_client_binding": "outbox INSERT, Django cursor (values bound in Python)",
                "insert_server_binding": "outbox INSERT, values sent apart (psycopg Cursor)",
                "publish": "publish() (the INSERT above, plus its own work)",
            }
            out += [
                "",
                "1b. Publish, statement by statement, inside an open transaction (no commit)",
                table(
                    ["statement", "median us", "p90 us", "x SELECT 1"],
                    [
                        [
                            labels[name],
                            f"{v['median_us']:.1f}",
                            f"{v['p90_us']:.1f}",
                            f"{v['over_select_1']:.2f}x",
                        ]
                        for name, v in p["statements"].items()
                    ],
                    {1, 2, 3},
                ),
            ]
    if "throughput" in results:
        t = results["throughput"]
        runs = {(r["kind"], r["batch_size"], r["workers"]): r for r in t["runs"]}
        rows = []
        for c in t["comparisons"]:
            relay = runs[("relay", c["batch_size"], c["workers"])]
            hand = runs[("hand_written", c["batch_size"], c["workers"])]
            rows.append(
                [
                    f"{c['batch_size']:,}",
                    str(c["workers"]),
                    str(c["rounds"]),
                    f"{c['relay_events_per_s']:,.0f} ({_range(c['relay_range'])})",
                    f"{c['hand_written_events_per_s']:,.0f} ({_range(c['hand_written_range'])})",
                    f"{c['ratio']:.1%}",
                    f"{relay['inserts']:,}",
                    f"{hand['inserts']:,}",
                    "OK" if c["exactly_once"] else "FAIL",
                ]
            )
        out += [
            "",
            f"2. Relay throughput — draining a backlog of {t['backlog']:,} events (hand-written: "
            "COPY (DELETE ... RETURNING) + one TabSeparated INSERT per batch, no guarantees)",
            table(
                [
                    "batch",
                    "relays",
                    "rounds",
                    "relay ev/s (range)",
                    "hand-written ev/s (range)",
                    "relay/hand-written",
                    "relay inserts",
                    "hand-written inserts",
                    "exactly once",
                ],
                rows,
                {0, 1, 2, 3, 4, 5, 6, 7},
            ),
            "ev/s are medians of the interleaved rounds; every run's figures are in the JSON",
        ]
        step_rows = []
        for c in t["comparisons"]:
            if c["workers"] != 1:
                continue
            for kind, label in (("relay", "relay"), ("hand_written", "hand-written")):
                steps = c["steps_ms_per_batch"][kind]
                total = sum(v["ms"] for v in steps.values())
                wall = c.get("wall_ms_per_batch", {}).get(kind, total)
                cpu = c.get("cpu_ms_per_batch", {}).get(kind, {})
                cores = c.get("cpu_cores", {}).get(kind)
                step_rows.append(
                    [
                        f"{c['batch_size']:,}",
                        label,
                        f"{wall:.2f}",
                        " + ".join(f"{v:.1f}" for v in cpu.values()) or "-",
                        f"{cores:.2f}" if cores is not None else "-",
                        f"{total:.2f}",
                        "  ".join(
                            f"{name} {v['ms']:.2f} ({v['share']:.0%})" for name, v in steps.items()
                        ),
                    ]
                )
        out += [
            "",
            "2b. Where a batch's time goes, 1 relay (ms per batch, median of the rounds)",
            table(
                [
                    "batch",
                    "relay",
                    "wall ms/batch",
                    "CPU ms/batch (process + PostgreSQL)",
                    "cores busy",
                    "steps ms/batch",
                    "steps: ms (share)",
                ],
                step_rows,
                {0, 2, 3, 4, 5},
            ),
            "the relay's steps overlap (its second connection seals the next batch and finishes"
            " the one before while one is inserted), so they add up to more than its wall time;"
            " CPU: the drainer's process (embedded engine included) and all of PostgreSQL",
        ]
    if "latency" in results:
        lat = results["latency"]
        rows = []
        for label, phase in (
            ("on-commit kick + worker", lat["kick"]),
            (f"Beat every {lat['beat_interval']:g} s + worker", lat["beat"]),
        ):
            q = phase["latency"]
            rows.append(
                [
                    label,
                    f"{phase['load']['rate']:.0f}",
                    f"{q['p50_s'] * 1000:.0f}",
                    f"{q['p90_s'] * 1000:.0f}",
                    f"{q['p99_s'] * 1000:.0f}",
                    f"{q['max_s'] * 1000:.0f}",
                    f"{q['n']:,}",
                    "OK" if phase["exactly_once"] else "FAIL",
                ]
            )
        trickle = lat["kick"]["trickle"]
        q = trickle["latency"]
        rows.append(
            [
                f"idle: 1 event every {trickle['gap_s']:g} s, kick",
                f"{trickle['events'] / (trickle['events'] * trickle['gap_s']):.0f}",
                f"{q['p50_s'] * 1000:.0f}",
                f"{q['p90_s'] * 1000:.0f}",
                f"{q['p99_s'] * 1000:.0f}",
                f"{q['max_s'] * 1000:.0f}",
                f"{q['n']:,}",
                "OK" if lat["kick"]["exactly_once"] else "FAIL",
            ]
        )
        out += [
            "",
            f"3. Latency — commit to outbox row gone (= in ClickHouse), "
            f"{lat['rate']:.0f} events/s for {lat['seconds']:g} s from {lat['producers']} threads, "
            "real Celery worker",
            table(
                ["mode", "ev/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "events", "exactly once"],
                rows,
                {1, 2, 3, 4, 5, 6},
            ),
        ]
    economy = _economy_rows(results)
    if economy:
        out += [
            "",
            "4. Insert economy — ClickHouse INSERTs per 10,000 events",
            table(["situation", "events", "inserts", "per 10k events"], economy, {1, 2, 3}),
        ]
    if "memory" in results:
        mem = results["memory"]
        out += [
            "",
            f"5. Memory — one relay process draining {mem['events']:,} events "
            f"(batch {mem['batch_size']:,}, RSS sampled {len(mem['samples'])} times)",
            table(
                [
                    "before engine",
                    "start",
                    "max",
                    "min",
                    "end",
                    "max-min",
                    "VmHWM",
                    "ev/s",
                    "exactly once",
                ],
                [
                    [
                        f"{mem['rss_engine_open_mb']:.0f} MiB",
                        f"{mem['start_mb']:.0f} MiB",
                        f"{mem['max_mb']:.0f} MiB",
                        f"{mem['min_mb']:.0f} MiB",
                        f"{mem['end_mb']:.0f} MiB",
                        f"{mem['max_minus_min_mb']:.1f} MiB",
                        f"{mem['vm_hwm_mb']:.0f} MiB",
                        f"{mem['events_per_s']:,.0f}",
                        "OK" if mem["exactly_once"] else "FAIL",
                    ]
                ],
                set(range(8)),
            ),
            f"from event {mem['steady_from_events']:,} on (after the first tenth): "
            f"{mem['steady_min_mb']:.0f}-{mem['steady_max_mb']:.0f} MiB "
            f"(range {mem['steady_max_mb'] - mem['steady_min_mb']:.1f} MiB), "
            f"drift to the end {mem['steady_drift_mb']:+.1f} MiB; median of the first tenth "
            f"{mem['first_tenth_median_mb']:.0f} MiB, of the last tenth "
            f"{mem['last_tenth_median_mb']:.0f} MiB (trend {mem['trend_mb']:+.1f} MiB)",
        ]
        off = mem.get("without_release")
        if off:
            out.append(
                f"same drain with the engine memory release off: start {off['start_mb']:.0f} "
                f"MiB, max {off['max_mb']:.0f}, end {off['end_mb']:.0f}, max-start "
                f"{off['max_minus_start_mb']:.1f} MiB, VmHWM {off['vm_hwm_mb']:.0f} MiB, trend "
                f"{off['trend_mb']:+.1f} MiB, {off['events_per_s']:,.0f} ev/s, exactly once "
                f"{'OK' if off['exactly_once'] else 'FAIL'}"
            )
    if "fsync" in results:
        f = results["fsync"]
        out += [
            "",
            f"6. fsync on insert — {f['batches']} INSERTs of {f['rows_per_batch']:,} rows into "
            "each table, alternately",
            table(
                ["table", "median ms", "p90 ms", "max ms", "ev/s"],
                [
                    [
                        label,
                        f"{f[key]['median_ms']:.1f}",
                        f"{f[key]['p90_ms']:.1f}",
                        f"{f[key]['max_ms']:.1f}",
                        f"{f[key]['events_per_s']:,.0f}",
                    ]
                    for key, label in (
                        ("on", "fsync_after_insert = 1, fsync_part_directory = 1"),
                        ("off", "fsync_after_insert = 0, fsync_part_directory = 0"),
                    )
                ],
                {1, 2, 3, 4},
            ),
            f"fsync on takes {f['median_ratio']:.2f}x the time per INSERT "
            f"({f['added_median_ms']:+.1f} ms, medians)",
        ]
    if "load" in results:
        out += ["", *load_lines(results["load"])]
    if "lookup" in results:
        out += ["", "8. envelope lookups", *envelope_lookup.render(results["lookup"])]
    if "chain" in results:
        c = results["chain"]
        v = c["verification"]
        out += [
            "",
            f"9. Batch chain — draining {c['backlog']:,} events in batches of "
            f"{c['batch_size']:,} with and without it; one verification",
            table(
                ["relays", "with chain ev/s", "without ev/s", "with/without"],
                [
                    [
                        str(k["workers"]),
                        f"{k['chain_events_per_s']:,.0f}",
                        f"{k['no_chain_events_per_s']:,.0f}",
                        f"{k['ratio']:.1%}",
                    ]
                    for k in c["comparisons"]
                ],
                {0, 1, 2, 3},
            ),
            f"event_log_verify over {v['events']:,} events in {v['batches']:,} batches: "
            f"{v['seconds']:.1f} s ({v['rows_per_s']:,.0f} rows/s), peak RSS "
            f"+{v['peak_rss_growth_mb']:.0f} MB, {v['findings']} findings (the delivery "
            f"records' check alone: {v['delivery_records_seconds']:.1f} s)",
        ]
    if results.get("targets"):
        out += [
            "",
            "Targets",
            table(
                ["target", "measured", "status"],
                [[t["target"], t["measured"], t["status"]] for t in results["targets"]],
                set(),
            ),
        ]
    return "\n".join(out)


def _economy_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []

    def add(label: str, events: int, inserts: int) -> None:
        per = inserts / events * 10_000 if events else float("nan")
        rows.append([label, f"{events:,}", f"{inserts:,}", f"{per:,.1f}"])

    if "throughput" in results:
        for r in results["throughput"]["runs"]:
            if r["kind"] == "relay" and r["workers"] == 1 and r.get("round", 1) == 1:
                add(f"backlog, batch {r['batch_size']:,}, 1 relay", r["events"], r["inserts"])
    if "latency" in results:
        lat = results["latency"]
        add(
            f"steady {lat['rate']:.0f} ev/s, kick",
            lat["kick"]["events"],
            lat["kick"]["inserts_steady"],
        )
        add(
            f"steady {lat['rate']:.0f} ev/s, Beat {lat['beat_interval']:g} s",
            lat["beat"]["events"],
            lat["beat"]["inserts_steady"],
        )
        trickle = lat["kick"]["trickle"]
        add(
            f"idle trickle, 1 event / {trickle['gap_s']:g} s, kick",
            trickle["events"],
            trickle["inserts"],
        )
    if "memory" in results:
        mem = results["memory"]
        add(
            f"backlog, batch {mem['batch_size']:,} (default), 1 relay",
            mem["events"],
            mem["batches"],
        )
    return rows


def _loads(results: dict[str, Any]) -> str:
    parts = []
    for section in (
        "publish",
        "throughput",
        "latency",
        "memory",
        "fsync",
        "load",
        "lookup",
        "chain",
    ):
        load = results.get(section, {}).get("loadavg_before")
        if load:
            parts.append(f"{section} {load[0]:.2f}")
    return ", ".join(parts) or "n/a"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"  # NaN: no sample


def _cores(cpu: dict[str, float], name: str) -> str:
    return f"{cpu[name]:.2f}" if name in cpu else "n/a"


def load_lines(load: dict[str, Any]) -> list[str]:
    """Section 7: the ramp, the 50 % / 90 % holds, the outage, the comparison."""
    cfg = load["config"]
    out = [
        f"7. Load held — gunicorn + Celery worker (solo) + Beat as deployed, POST /api/users "
        f"open-loop; ramp steps {cfg['step_seconds']:g} s, holds {cfg['hold_seconds']:g} s",
        table(
            ["offered req/s", "ok", "errors", "p50 ms", "p99 ms", "outbox max", "growing", "held"],
            [
                [
                    f"{r['rate']:,.0f}",
                    f"{r['ok']:,}",
                    f"{r['errors']:,}",
                    _ms(r["p50_ms"]),
                    _ms(r["p99_ms"]),
                    f"{r['outbox_depth_max']:,}",
                    "yes" if r["outbox_growing"] else "no",
                    "yes" if r["sustained"] else "no",
                ]
                for r in load.get("ramp", [])
            ],
            {0, 1, 2, 3, 4, 5},
        ),
        f"highest rate held (p99 < {load['p99_max_ms']:g} ms, outbox not growing): "
        f"{load.get('sustained_rate', 0):,.0f} req/s",
    ]
    holds = load.get("holds", {})
    if holds:
        rows = []
        for share, h in holds.items():
            c = h["commit_to_clickhouse"]
            cpu = h["cpu_cores"]
            rows.append(
                [
                    f"{share} % ({h['rate']:,.0f}/s)",
                    _ms(h["p50_ms"]),
                    _ms(h["p99_ms"]),
                    _ms(c["p50_ms"]),
                    _ms(c["p99_ms"]),
                    _cores(cpu, "web"),
                    _cores(cpu, "worker"),
                    _cores(cpu, "postgres"),
                    _cores(cpu, "load"),
                ]
            )
        out += [
            table(
                [
                    "hold",
                    "req p50 ms",
                    "req p99 ms",
                    "to CH p50 ms",
                    "to CH p99 ms",
                    "web cores",
                    "worker cores",
                    "postgres cores",
                    "generator cores",
                ],
                rows,
                {1, 2, 3, 4, 5, 6, 7, 8},
            )
        ]
    outage = load.get("outage")
    if outage:
        out += [
            table(
                ["outage run", "req/s", "p50 ms", "p99 ms", "errors", "outbox max"],
                [
                    [
                        name,
                        f"{w['achieved_per_s']:,.1f}",
                        _ms(w["p50_ms"]),
                        _ms(w["p99_ms"]),
                        f"{w['errors']:,}",
                        f"{w['outbox_depth_max']:,}",
                    ]
                    for name, w in (
                        ("before", outage["before"]),
                        (f"worker down {outage['outage_seconds']:.0f} s", outage["during"]),
                        ("after", outage["after"]),
                    )
                ],
                {1, 2, 3, 4, 5},
            ),
            f"backlog at restart {outage['backlog_at_restart']:,} events; back to the "
            f"pre-outage depth ({outage.get('pre_outage_depth_max', 0):,}) "
            f"{outage['drain_seconds']:.1f} s after the worker was started again "
            "(its start included)",
        ]
    if "exactly_once" in load:
        out.append(f"exactly once over the whole run: {load['exactly_once']['detail']}")
    comp = load.get("comparison")
    if comp:
        out.append(
            "vs Namastack outbox's published ~10,000 records/s, p99 0.35 s on 4 instances "
            f"(other machine, other transport): {comp['records_per_s_ratio']:.3f}x the rate, "
            f"{comp['records_per_s_per_instance_ratio']:.3f}x per instance, "
            f"{comp['p99_ratio']:.2f}x the p99 (commit to ClickHouse at 90 %)"
        )
    return out
