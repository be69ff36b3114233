"""The GPU pass's report: rows per step with ratios to the same-run baselines, the goals, Markdown.

Split from ``gpu_pass.py`` (which runs the steps); ``derive``, ``goals`` and ``render_markdown``
take the pass's JSON report, so a report can be re-rendered without a GPU. The planned calls each
write a report; ``combine`` (or ``python benches/gpu_pass_report.py A/gpu_pass.json B/gpu_pass.json
--out DIR``) joins them, and a ratio between two steps is taken only where both ran on the same card.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_pass_steps as steps  # noqa: E402

# (title, step-name prefixes, columns: (row key, header, format)); a ratio "x_*" is derived below.
SECTIONS = [
    ("Tests", ("tests_",), [("suite", "suite", ""), ("passed", "passed", ""), ("failed", "failed", ""),
                            ("skipped", "skipped", ""), ("deselected", "deselected", ""), ("errors", "errors", ""),
                            ("seconds", "s", ""), ("failures", "failures", "")]),
    ("Baselines of the card", ("device",), [("what", "what", ""), ("value", "value", ""), ("unit", "unit", "")]),
    ("InfoNCE fwd+bwd (τ = 0.1; baseline: eager PyTorch in the same run)", ("info_nce_",),
     [("N", "N = M", ""), ("D", "D", ""), ("provider", "provider", ""), ("status", "status", ""), ("ms", "ms", ".3f"),
      ("x_eager", "× eager", ".2f"), ("x_compile", "× compile", ".2f"), ("peak_extra_gb", "peak extra GB", ".2f"),
      ("tflops", "TFLOP/s", ".1f"), ("note", "note", "")]),
    ("Attention pooling fwd+bwd (baselines: eager PyTorch; the card's copy bandwidth)", ("attention_pool_",),
     [("shape", "B×C×H×W", ""), ("hidden", "hidden", ""), ("provider", "provider", ""), ("status", "status", ""),
      ("ms", "ms", ".3f"), ("x_eager", "× eager", ".2f"), ("x_compile", "× compile", ".2f"),
      ("gb_per_s", "GB/s", ".0f"), ("pct_of_copy", "% of copy", ".0f"), ("pct_of_hbm", "% of HBM (nominal)", ".0f"),
      ("tflops", "TFLOP/s", ".1f"), ("pct_of_roofline", "% of roofline", ".0f"), ("note", "note", "")]),
    ("torch.compile of the references (one shape per op, compile time excluded from ms)", ("compile_kernels",),
     [("op", "op", ""), ("N", "N = M", ""), ("shape", "B×C×H×W", ""), ("hidden", "hidden", ""),
      ("status", "status", ""), ("ms", "ms", ".3f"), ("compile_s", "compile s", ".1f"), ("tflops", "TFLOP/s", ".1f"),
      ("pct_of_roofline", "% of roofline", ".0f"), ("note", "note", "")]),
    ("Data written for the loader steps", ("frame_store", "video_corpus"), None),
    ("Loader, pairs/s (frame store: torch ÷ DALI on the same card, × the CPU path where it ran; video: × the "
     "PyAV worker path)",
     ("loader_store", "video_"), [("candidate", "candidate", ""), ("device", "device", ""), ("status", "status", ""),
                                  ("pairs_per_s", "pairs/s", ".0f"), ("x_dali", "torch ÷ DALI", ".2f"),
                                  ("x_baseline", "× baseline", ".2f"), ("gpu_ms_per_pair", "GPU ms/pair", ".3f"),
                                  ("gpu_busy_pct", "GPU busy %", ".0f"), ("batch", "batch", ""),
                                  ("includes", "includes", ""), ("note", "note", "")]),
    ("Video decoders against PyAV (issue 26): the choice's trials on each corpus's first samples",
     ("decoder_trials",), [("corpus", "corpus", ""), ("decoder", "decoder", ""), ("status", "status", ""),
                           ("pairs_per_s", "pairs/s, one stream", ".0f"), ("cpu_ms_per_pair", "CPU ms/pair", ".2f"),
                           ("min_luma_psnr_db", "min luma PSNR dB", ".1f"), ("chosen", "chosen", ""),
                           ("note", "why not", "")]),
    ("Video decoders through the loader (issue 26): other processes on the host's cores, or held to 4 cores; "
     "× PyAV at the same load, same card", ("decoder_rates",),
     [("corpus", "corpus", ""), ("decoder", "decoder", ""), ("host_cores", "host cores", ""),
      ("busy_cores", "cores kept busy", ""), ("status", "status", ""), ("pairs_per_s", "pairs/s", ".0f"),
      ("x_pyav", "× PyAV", ".2f"), ("cpu_ms_per_pair", "host CPU ms/pair", ".2f"),
      ("nvdec_busy_pct", "NVDEC busy %", ".0f"), ("nvdec_ms_per_pair", "NVDEC ms/pair", ".3f"),
      ("sm_busy_pct", "SM busy %", ".0f"), ("gpu_ms_per_pair", "trainer GPU ms/pair", ".3f"),
      ("fallbacks", "fallbacks", ""), ("start_s", "start s", ".1f"), ("note", "note", "")]),
    ("Training step (baselines: the eager step; the DALI-fed step for the torch-fed one, on the same card)",
     ("train_",),
     [("provider", "provider", ""), ("backend", "backend", ""), ("arch", "arch", ""), ("size", "px", ""),
      ("batch", "pairs/step", ""), ("pairs_per_s", "pairs/s", ".0f"), ("x_eager", "× eager", ".2f"),
      ("x_dali", "torch ÷ DALI", ".2f"), ("data_wait_pct", "data wait %", ".1f"), ("peak_gb", "peak GB", ".1f")]),
    ("sm_90 compile report beside the measured times", ("compile_report",), None),
]


def card(device: dict) -> str:
    """What tells one card from another: its UUID, else its name."""
    return device.get("uuid") or device.get("name") or "?"


def combine(reports: Sequence[dict]) -> dict:
    """The reports of several passes (the planned calls') as one: their steps in order, each tagged
    with the card it ran on; a step name met again is renamed "<name>@<n>" (n: its report's place,
    from 1). Ratios between two steps (``derive``) are taken only where both ran on the same card."""
    steps_seen, steps_joined, cards = set(), [], []
    for place, report in enumerate(reports, 1):
        device = report.get("device") or {}
        cards.append({"report": place, "card": card(device), "name": device.get("name", "device not probed")})
        for record in report["steps"]:
            name = record["name"] if record["name"] not in steps_seen else f"{record['name']}@{place}"
            steps_seen.add(record["name"])
            steps_joined.append(dict(record, name=name, card=card(device)))
    device = dict(reports[0].get("device") or {})
    optional = {}
    for report in reports:  # a part that any of the passes had counts as used
        for label, state in ((report.get("device") or {}).get("optional") or {}).items():
            if label not in optional or (state.get("available") and not optional[label].get("available")):
                optional[label] = state
    device["optional"] = optional
    return {"command": " + ".join(f"`{report['command']}`" for report in reports), "joined": len(reports),
            "dry_run": any(report["dry_run"] for report in reports), "date": reports[0]["date"],
            "budget_s": sum(report["budget_s"] for report in reports),
            "elapsed_s": sum(report.get("elapsed_s", 0) for report in reports), "device": device, "cards": cards,
            "steps": steps_joined}


def derive(report: dict) -> Dict[str, List[dict]]:
    """Rows per step, with the ratios to the baselines measured in the same run on the same card."""
    rows = {record["name"]: [dict(row) for row in record.get("rows", [])] for record in report["steps"]}
    cards = {record["name"]: record.get("card") for record in report["steps"]}  # None: one report, one card

    def ok(row, key):
        return row.get("status", "ok") == "ok" and isinstance(row.get(key), (int, float)) and row[key] > 0

    def first(step, key, **match):
        """``key`` of the first ok row of ``step`` that matches, with the card it ran on."""
        value = next((r[key] for r in rows.get(step, [])
                      if ok(r, key) and all(r.get(k) == v for k, v in match.items())), None)
        return value, cards.get(step)

    def ratio(value, base):
        """value ÷ base where the base was measured on the value's card, else None."""
        (number, value_card), (denominator, base_card) = value, base
        return number / denominator if number and denominator and value_card == base_card else None

    # torch.compile runs late in the pass (step compile_kernels), one shape per op.
    compiled = {(r.get("N"), r.get("shape"), r.get("hidden")): r["ms"]
                for r in rows.get("compile_kernels", []) if ok(r, "ms")}
    compile_card = cards.get("compile_kernels")
    for name, step_rows in rows.items():
        if name.startswith("info_nce_"):
            base = {row["provider"]: row["ms"] for row in step_rows if ok(row, "ms")}
            for row in filter(lambda r: ok(r, "ms"), step_rows):
                row["x_eager"] = base["eager"] / row["ms"] if "eager" in base else None
                compile_ms = compiled.get((row["N"], None, None))
                row["x_compile"] = ratio((compile_ms, compile_card), (row["ms"], cards[name]))
        elif name.startswith("attention_pool_"):
            base = {(r["shape"], r["hidden"]): r["ms"] for r in step_rows if r["provider"] == "eager" and ok(r, "ms")}
            for row in filter(lambda r: ok(r, "ms"), step_rows):
                eager = base.get((row["shape"], row["hidden"]))
                compile_ms = compiled.get((None, row["shape"], row["hidden"]))
                row["x_eager"] = eager / row["ms"] if eager else None
                row["x_compile"] = ratio((compile_ms, compile_card), (row["ms"], cards[name]))
    # The frame store's CPU path: DALI on the host's cores (step loader_store_cpu; loader_store's own
    # CPU row in older reports).
    store_cpu = first("loader_store_cpu" if "loader_store_cpu" in rows else "loader_store", "pairs_per_s",
                      device="cpu")
    pyav = first("video_pyav", "pairs_per_s")
    for name in [n for n in rows if n.startswith(("loader_store", "video_"))]:
        base = store_cpu if name.startswith("loader_store") else pyav
        for row in filter(lambda r: ok(r, "pairs_per_s"), rows[name]):
            row["x_baseline"] = ratio((row["pairs_per_s"], cards[name]), base)
    for torch_step, dali_step, match in (("loader_store_torch", "loader_store", "device"),
                                         ("train_loader_torch", "train_loader", None)):
        for row in filter(lambda r: ok(r, "pairs_per_s"), rows.get(torch_step, [])):
            dali = first(dali_step, "pairs_per_s", **({match: row.get(match)} if match else {}))
            row["x_dali"] = ratio((row["pairs_per_s"], cards[torch_step]), dali)
    eager = first("train_eager", "pairs_per_s")
    for name in [n for n in rows if n.startswith("train_")]:
        for row in filter(lambda r: ok(r, "pairs_per_s"), rows[name]):
            row["x_eager"] = ratio((row["pairs_per_s"], cards[name]), eager)
    # issue #26's step holds two tables: the trials against PyAV, and the decoders through the loader
    for name in [n for n in rows if n.startswith("decoder_rates")]:
        rows[name.replace("decoder_rates", "decoder_trials", 1)] = [r for r in rows[name] if r.get("kind") == "trial"]
        rows[name] = [r for r in rows[name] if r.get("kind") != "trial"]
    return rows


STORE_GOAL = 5000  # pairs/s per GPU, every augmentation (issues #16, #25)
BACKEND_STEPS = (("DALI", "loader_store", "train_loader"), ("torch", "loader_store_torch", "train_loader_torch"))


def goals(rows: Dict[str, List[dict]]) -> List[tuple]:
    """(goal, measured, met) for the figures the pass checks (issues #16, #23, #25); None where not
    measured. The frame store and training from it: one verdict per device stage (DALI, torch)."""
    def pick(step, key, **match):
        return next((r.get(key) for r in rows.get(step, []) if all(r.get(k) == v for k, v in match.items())
                     and r.get("status", "ok") == "ok"), None)

    def judged(text, value, unit, test):
        return (text, "not measured" if value is None else f"{value:.3g}{unit}",
                None if value is None else bool(test(value)))

    ours_pools = [r for s in rows if s.startswith("attention_pool_") for r in rows[s]
                  if r.get("provider") == "ours" and r.get("status", "ok") == "ok"]
    # Linear pools only move bytes: judged on HBM. The MLP pools' GEMMs bound them on the tensor
    # cores (benches/bench_compile.py: their HBM share cannot pass 28-38 %): judged on the roofline.
    linear = [r["pct_of_hbm"] for r in ours_pools if r.get("hidden") == 0 and r.get("pct_of_hbm") is not None]
    mlp = [r["pct_of_roofline"] for r in ours_pools if r.get("hidden") and r.get("pct_of_roofline") is not None]
    video = [r["pairs_per_s"] for s in rows if s.startswith("video_") and s != "video_corpus" for r in rows[s]
             if r.get("pairs_per_s")]
    verdicts = [
        judged("InfoNCE 16k: ours ≥ 3× eager", pick("info_nce_16k", "x_eager", provider="ours"), "×", lambda v: v >= 3),
        judged("InfoNCE 16k: ours ≥ 1.5× torch.compile", pick("info_nce_16k", "x_compile", provider="ours"), "×",
               lambda v: v >= 1.5),
        judged("InfoNCE 64k: ours ≤ 22 ms", pick("info_nce_64k", "ms", provider="ours"), " ms", lambda v: v <= 22),
        judged("InfoNCE 64k: ours ≤ 1.5 GB extra", pick("info_nce_64k", "peak_extra_gb", provider="ours"), " GB",
               lambda v: v <= 1.5),
        judged("linear attention pooling ≥ 60 % of HBM (worst shape)", min(linear) if linear else None, " %",
               lambda v: v >= 60),
        judged("MLP attention pooling ≥ 50 % of its roofline (worst shape)", min(mlp) if mlp else None, " %",
               lambda v: v >= 50),
    ]
    verdicts += [judged(f"frame store ≥ 5,000 pairs/s, every augmentation ({label})",
                        pick(store, "pairs_per_s", device="gpu"), " pairs/s", lambda v: v >= STORE_GOAL)
                 for label, store, _ in BACKEND_STEPS]
    verdicts.append(judged("direct video ≥ 2,500 pairs/s (best candidate)", max(video) if video else None,
                           " pairs/s", lambda v: v >= 2500))
    held = [r["pairs_per_s"] for r in rows.get("decoder_rates", []) if r.get("status", "ok") == "ok"
            and r.get("pairs_per_s") and r.get("device") == "gpu" and r.get("host_cores") == 4
            and "256p" in str(r.get("corpus"))]  # decoder_rates measures verified decoders only
    verdicts.append(judged("direct video ≥ 2,500 pairs/s per GPU on ≤ 4 host cores, frames verified (256p GOP-16, "
                           "best decoder)", max(held) if held else None, " pairs/s", lambda v: v >= 2500))
    for label, _, train in BACKEND_STEPS:
        verdicts += [judged(f"training from real data ≥ 2,500 pairs/s ({label})", pick(train, "pairs_per_s"),
                            " pairs/s", lambda v: v >= 2500),
                     judged(f"training from real data: data wait ≤ 5 % ({label})", pick(train, "data_wait_pct"), " %",
                            lambda v: v <= 5)]
    return verdicts


def _cell(value, fmt: str = "") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float) and fmt:
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(columns, rows) -> List[str]:
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |" for row in rows]
    return lines


DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _compile_section(rows: Dict[str, List[dict]], report: dict) -> List[str]:
    """The report's roofline beside the measured times, and the sm_90 variants that launched them."""
    sizes = steps.TOY if report["dry_run"] else steps.GPU
    dtype = DTYPE_NAMES[sizes.dtype]
    chip = "H200" if "H200" in (report.get("device") or {}).get("name", "") else "H100"
    ours = {}  # (N, D) or (shape, hidden) -> ms; and the bench_compile case names -> ms
    for name in rows:
        for row in rows[name]:
            if row.get("status") != "ok" or not str(row.get("provider", "")).startswith("ours"):
                continue
            if name.startswith("info_nce_"):
                dk = "" if "without grad" in row["provider"] else " dk"
                ours[f"info_nce {dtype} N=M={row['N']} D={row['D']}{dk}"] = row["ms"]
                if dk:
                    ours[(row["N"], row["D"])] = row["ms"]
            elif name.startswith("attention_pool_"):
                ours[f"attention_pool {dtype} {row['shape'].replace('x', '×')} hidden={row['hidden']}"] = row["ms"]
                ours[(row["shape"], row["hidden"])] = row["ms"]
    roofline, variants = [], []
    for row in rows.get("compile_report", []):
        if row.get("kind") == "roofline":
            found = re.search(r"InfoNCE N=M=(\d+)k D=(\d+)", row.get("what", ""))
            pool = re.search(r"B=(\d+) (\d+)×(\d+)×(\d+) hidden=(\d+)", row.get("what", ""))
            key = ((int(found[1]) * 1024, int(found[2])) if found else
                   (f"{pool[1]}x{pool[2]}x{pool[3]}x{pool[4]}", int(pool[5])) if pool else None)
            measured = ours.get(key)
            predicted = row.get(f"{chip}_ms")
            roofline.append({**row, "measured": measured,
                             "ratio": measured / predicted if measured and predicted else None})
        elif row.get("kind") == "variant":
            matched = [f"{case.split(' ', 1)[1]}: {ours[case]:.3f} ms" for case in row.get("cases", []) if case in ours]
            if matched:
                variants.append({**row, "measured": "; ".join(matched), "smem_kb": row.get("smem_bytes", 0) / 1024})
    lines = _table([("what", "goal shape", ""), ("floor_ms", "floor ms", ".3g"), ("H100_ms", "roofline H100 ms", ".3g"),
                    ("H200_ms", "roofline H200 ms", ".3g"), ("measured", "ours fwd+bwd ms (this run)", ".3f"),
                    ("ratio", f"ours ÷ {chip} roofline", ".2f")], roofline)
    variant_columns = [("variant", "variant", ""), ("registers", "registers", ""), ("spill_bytes", "spills B", ""),
                       ("smem_kb", "smem KB", ".1f"), ("ctas_per_sm", "CTAs/SM", ""), ("wgmma", "wgmma", ""),
                       ("wgmma_expected", "expected", ""), ("measured", "launched by (fwd+bwd, this run)", "")]
    lines += [""] + (_table(variant_columns, variants) if variants else
                     ["No compiled variant belongs to a shape timed here (toy sizes in a dry run)."])
    others = sum(row.get("kind") == "variant" for row in rows.get("compile_report", [])) - len(variants)
    return lines + [f"\n{others} more variants (other dtypes and shapes) are in gpu_pass.json."]


def local_roofline() -> List[dict]:
    """The roofline rows of benches/bench_compile.py, computed here (arithmetic, no compilation) when
    the pass did not run the compile report (CPU work, left out of the planned calls)."""
    try:
        import bench_compile
    except Exception:  # no Triton here: the section says the report is not available
        return []
    return [{"kind": "roofline", **row} for row in bench_compile.roofline()]


def render_markdown(report: dict, summary_only: bool = False) -> str:
    device = report.get("device") or {}
    title = "GPU pass (dry run: toy sizes on the CPU, reference paths)" if report["dry_run"] else "GPU pass"
    lines = [f"# {title}: {device.get('name', 'device not probed')}", "",
             f"{report['date']}; `{report['command']}`; Python {device.get('python', '?')}, torch "
             f"{device.get('torch', '?')}, Triton {device.get('triton', '?')}, CUDA {device.get('cuda', '?')}; "
             f"budget {report['budget_s']:.0f} s, took {report.get('elapsed_s', 0):.0f} s.", ""]
    if report.get("cards"):
        distinct = {entry["card"] for entry in report["cards"]}
        lines += [f"{report['joined']} reports joined, on {len(distinct)} card{'s' * (len(distinct) > 1)}: "
                  + "; ".join(f"report {entry['report']}: {entry['name']} ({entry['card']})"
                              for entry in report["cards"])
                  + (". Ratios only between steps on the same card." if len(distinct) > 1 else "."), ""]
    lines += _table([("name", "step", ""), ("status", "status", ""), ("seconds", "s", ""), ("limit_s", "limit s", ""),
                     ("reason", "reason", ""), ("left_behind", "processes left behind", "")], report["steps"])
    optional = []
    for label, state in (device.get("optional") or {}).items():
        skipped = []
        for record in report["steps"]:  # in pass order: a step skipped for a step skipped for the part
            reason = record.get("reason", "") if record["status"] == "skipped" else ""
            if label in reason or any(f"needs step {name} " in reason for name in skipped):
                skipped.append(record["name"])
        optional.append({"part": label, "state": f"used ({state['version']})" if state["available"]
                         else f"skipped: {state['reason']}", "steps skipped for it": ", ".join(skipped)})
    if optional:
        lines += ["", "Optional parts:", ""] + _table(
            [("part", "part", ""), ("state", "state", ""), ("steps skipped for it", "steps skipped for it", "")],
            optional)
    if summary_only:
        return "\n".join(lines)
    rows, claimed = derive(report), set()
    if not rows.get("compile_report"):
        rows["compile_report"] = local_roofline()
    for title, prefixes, columns in SECTIONS:
        names = [name for name in rows if name.startswith(prefixes) and name not in claimed and rows[name]]
        claimed.update(names)
        section = [dict(row, step=name) for name in names for row in rows[name]]
        if title.startswith("sm_90"):
            record = next((r for r in report["steps"] if r["name"] == "compile_report"), None)
            lines += ["", f"## {title}", ""] + (_compile_section(rows, report) if section else [
                f"Compile report not available: {record.get('reason') or record['status'] if record else 'not run'}."])
            if section and record is None:
                lines.append("Roofline computed when the report was written; the variants' registers and spills: "
                             "`python benches/bench_compile.py --triton-path DIR` with the host's Triton.")
            continue
        if not section:
            continue
        if columns is None:  # every key, in order of first appearance
            keys = list(dict.fromkeys(key for row in section for key in row))
            columns = [(key, key, "") for key in keys]
        lines += ["", f"## {title}", ""] + _table(columns, section)
    lines += ["", "## Goals", ""]
    if report["dry_run"]:
        lines.append("Not judged in a dry run (toy sizes on a CPU).")
    else:
        lines += _table([(0, "goal", ""), (1, "measured", ""), (2, "met", "")],
                        [{0: goal, 1: measured, 2: "–" if met is None else ("yes" if met else "NO")}
                         for goal, measured, met in goals(rows)])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Join the planned calls' reports: gpu_pass.json and gpu_pass.md of them all in ``--out``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("reports", nargs="+", type=Path, help="gpu_pass.json of each call, in call order")
    parser.add_argument("--out", type=Path, required=True, help="folder for the joined gpu_pass.json and .md")
    args = parser.parse_args(argv)
    joined = combine([json.loads(path.read_text()) for path in args.reports])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pass.json").write_text(json.dumps(joined, indent=1))
    (args.out / "gpu_pass.md").write_text(render_markdown(joined))
    print(f"gpu_pass_report: joined {len(args.reports)} reports into {args.out / 'gpu_pass.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
