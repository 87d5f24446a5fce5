"""Check that this machine can run the project: NVIDIA driver and GPU, packages, ONNX Runtime, disk.

    python setup/check_env.py            # every check; imports torch, onnxruntime, bitsandbytes (seconds)
    python setup/check_env.py --fast     # standard library only, well under a second (the generation hook)
    python setup/check_env.py --json     # one JSON object on stdout: {"ok": ..., "checks": [...]}

One line per check: ✓ ok, ! warning, ✗ problem (its fix on the next line), – not needed for this project.
Exits 1 when there is a problem, else 0. It never raises: a machine with nothing installed gets a report.

This file runs the checks and prints the report; env_facts.py gathers what the checks look at,
env_checks.py holds the --fast checks and env_probes.py the full-mode ones that import the packages.
"""

import argparse
import contextlib
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import project  # noqa: E402
from env_checks import FAST_CHECKS, check_torch_package  # noqa: E402
from env_facts import METHOD_NAMES, Check, Env, Gpu, gather  # noqa: E402
from env_probes import error_text, probe_bitsandbytes, probe_genai, probe_onnxruntime, probe_torch  # noqa: E402

ASCII_MARKS = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
MARKS = {"ok": "\u2713", "warn": "!", "fail": "\u2717", "skip": "\u2013"}


def _safe(check, env: Env) -> Check:
    try:
        return check(env)
    except Exception as error:  # noqa: BLE001 - one broken check must not hide the others
        name = re.sub(r"^(check|probe)_", "", check.__name__).replace("_", " ")
        return Check(name, "fail", f"the check itself failed: {error_text(error)}", "report this with the output above")


def run_checks(fast: bool) -> tuple[Env, list[Check]]:
    env = gather()
    if fast:
        return env, [_safe(check, env) for check in FAST_CHECKS]
    # ORT and genai first: torch loads its own CUDA and cuDNN libraries into this process, which would
    # hide a missing libcudnn from the session check (inferences/chat.py runs ONNX without torch)
    late = [_safe(probe_onnxruntime, env), _safe(probe_genai, env)]
    torch_check = _safe(probe_torch, env)
    late.append(_safe(probe_bitsandbytes, env))
    info = env.torch
    if not env.gpus and info.get("available"):
        # nvidia-smi failed or is missing, yet torch reaches a GPU: judge memory and bf16 on that
        env.gpus = [Gpu(info["device"], info["total_gib"], info["free_gib"], info["capability"], "unknown")]
        env.gpus_from_torch = True
    checks = [torch_check if check is check_torch_package else _safe(check, env) for check in FAST_CHECKS]
    return env, checks + late


# ---------------------------------------------------------------- report


def plan(env: Env) -> str:
    facts, steps = env.facts, []
    if env.method in METHOD_NAMES:
        where = "" if env.trains_here else " (on Azure ML)"
        steps.append(f"{METHOD_NAMES[env.method]} training of {facts.get('base_model')}{where}")
    if facts.get("onnx_precision", "none") != "none":
        steps.append(f"the {facts.get('onnx_precision')} ONNX model on {facts.get('execution_provider')}")
    return ", ".join(steps) or "nothing to run"


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def summary(checks: list[Check], env: Env, fast: bool, standalone: bool = False) -> str:
    """The last line of the table; `standalone` (JSON) names the checks instead of pointing above."""
    problems = [check.name for check in checks if check.status == "fail"]
    warned = sum(check.status == "warn" for check in checks)
    note = f", {_counted(warned, 'warning')}" if warned else ""
    tail = " (--fast: torch, onnxruntime, bitsandbytes not imported; run `python setup/check_env.py`)" * fast
    if problems and standalone:
        return (
            f"{_counted(len(problems), 'problem')}{note}: {', '.join(problems)}; apply the fix of each, then run "
            f"`python setup/check_env.py` again.{tail}"
        )
    if problems:
        return f"{_counted(len(problems), 'problem')}{note}: fix each one above, then run this again.{tail}"
    return f"Ready{note}: {plan(env)}.{tail}"


def _marks(stream) -> dict:
    try:
        "".join(MARKS.values()).encode(stream.encoding or "ascii")
        return MARKS
    except (LookupError, UnicodeEncodeError):
        return ASCII_MARKS


def render(checks: list[Check], env: Env, fast: bool, marks: dict) -> str:
    width = max(len(check.name) for check in checks)
    mark_width = max(len(mark) for mark in marks.values())
    lines = [f"Environment check{' (--fast)' if fast else ''} for {project.ROOT.name}"]
    for check in checks:
        lines.append(f"  {marks[check.status].ljust(mark_width)}  {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status in ("fail", "warn"):
            lines.append(f"  {' ' * mark_width}  {' ' * width}  Fix: {check.fix}")
    lines.append(summary(checks, env, fast))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="standard library only: no torch/onnxruntime imports")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # a GPU name or path the console cannot show is no crash
    env, checks = run_checks(args.fast)
    ok = not any(check.status == "fail" for check in checks)
    if args.json:
        payload = {
            "ok": ok,
            "mode": "fast" if args.fast else "full",
            "summary": summary(checks, env, args.fast, standalone=True),
            "checks": [asdict(check) for check in checks],
        }
        text = json.dumps(payload, indent=2, ensure_ascii=True)
    else:
        text = render(checks, env, args.fast, _marks(sys.stdout))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: the reader left, nothing to report to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
