"""Check an Olive workflow config the way `olive run` will read it, and fail where Olive would only warn.

olive-ai ignores unknown pass keys, unknown TrainingArguments fields and unknown text-generation options with a
warning, then trains with defaults; it also prunes a ModelBuilder precision the execution provider cannot run.
This builds each pass's config with Olive's own machinery for the configured accelerator and turns those
warnings into errors, so a typo costs seconds instead of a GPU run.

    python fine-tuning/check_config.py [fine-tuning/olive-config.json]
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import project  # noqa: E402

IGNORED_MARKERS = ("Ignoring", "not part of", "is not a field of")
# olive-ai 0.13 overwrites target_modules with every 4-bit linear layer in these passes
QUANTIZED_LORA = ("qlora", "loftq")


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if any(marker in message for marker in IGNORED_MARKERS):
            self.messages.append(message)


def _accelerator_specs(run_config):
    from olive.hardware.accelerator import AcceleratorSpec, Device

    target = run_config.engine.target or run_config.engine.host
    accelerators = target.config.accelerators or []
    specs = []
    for accelerator in accelerators:
        for provider in accelerator.execution_providers or []:
            specs.append(AcceleratorSpec(accelerator_type=Device(accelerator.device), execution_provider=provider))
    if not specs:
        raise ValueError("the target system names no accelerator/execution provider")
    return specs


def check(config_path: Path) -> list[str]:
    """Return the problems found; an empty list means Olive reads every key."""
    from olive.common.config_utils import validate_config
    from olive.data.component.text_generation import TextGenParams
    from olive.package_config import OlivePackageConfig
    from olive.workflows.run.config import RunConfig

    collector = _Collector()
    olive_logger = logging.getLogger("olive")
    olive_logger.addHandler(collector)
    problems: list[str] = []
    try:
        # a JSON mistake in one line (ConfigError), before Olive's longer account of it
        raw = project.load_config(config_path, flag="")
        run_config = RunConfig.parse_file_or_obj(str(config_path))
        package_config = OlivePackageConfig.load_default_config()

        # Olive adds model_name/task/trust_remote_code itself; only the user's keys are checked here.
        for data_config in raw.get("data_configs", []):
            params = dict(data_config.get("pre_process_data_config") or {})
            params.pop("type", None)
            validate_config(params, TextGenParams, warn_unused_keys=True)

        for spec in _accelerator_specs(run_config):
            for name, pass_configs in (run_config.passes or {}).items():
                for pass_config in pass_configs:
                    if pass_config.type.lower() in QUANTIZED_LORA and "target_modules" in pass_config.config:
                        problems.append(
                            f"passes.{name}.target_modules: olive-ai's {pass_config.type} adapts every quantized "
                            "linear layer and ignores this key; remove it"
                        )
                    pass_cls = package_config.import_pass_module(pass_config.type)
                    built = pass_cls.generate_config(spec, pass_config.config, {}, True)
                    if not pass_cls.validate_config(built, spec):
                        problems.append(
                            f"passes.{name}: Olive prunes this {pass_config.type} config for {spec} "
                            "(e.g. fp16 needs the CUDA provider); it would produce no model"
                        )
                    training_args = getattr(built, "training_args", None)
                    if isinstance(training_args, dict):
                        problems.extend(_unparsed_training_args(name, pass_cls, spec, training_args))
                    elif training_args is not None:
                        problems.extend(_wrong_types(name, training_args.extra_args))
                        _build_training_args(training_args)
    finally:
        olive_logger.removeHandler(collector)
    problems.extend(f"Olive would ignore a setting: {message}" for message in collector.messages)
    return problems


def _unparsed_training_args(pass_name: str, pass_cls, spec, values: dict) -> list[str]:
    """Why Olive kept training_args as a plain dict: its type is a union with dict, so one value of the wrong JSON
    type (a quoted learning rate) makes pydantic keep the dict, and `olive run` later fails on an attribute."""
    import typing

    from pydantic import BaseModel, ValidationError

    union = pass_cls._default_config(spec)["training_args"].type_
    model = next(t for t in typing.get_args(union) if isinstance(t, type) and issubclass(t, BaseModel))
    problems = []
    try:
        model.model_validate(values, strict=True)
    except ValidationError as error:
        for found in error.errors():
            where = ".".join(str(part) for part in found["loc"])
            problems.append(
                f"passes.{pass_name}.training_args.{where}: {json.dumps(found['input'], default=str)}: "
                f"{found['msg']}{_quote_hint(found['input'])}"
            )
    # Olive has already moved the keys that are not its own fields into extra_args
    extra = dict(values.get("extra_args") or {})
    extra.update({key: value for key, value in values.items() if key not in model.model_fields})
    return problems + _wrong_types(pass_name, extra)


def _wrong_types(pass_name: str, extra_args: dict | None) -> list[str]:
    """Values of the wrong JSON type for TrainingArguments' number and switch fields.

    Neither Olive nor transformers converts them: "false" turns a switch such as bf16 or use_liger_kernel on,
    and "4" as a batch size fails only when training starts, after the model has loaded."""
    import typing

    import transformers

    hints = typing.get_type_hints(transformers.TrainingArguments)
    problems = []
    for key, value in (extra_args or {}).items():
        hint = hints.get(key)
        allowed = set(typing.get_args(hint) or (hint,)) - {type(None)}
        if value is None or not allowed:
            continue
        if allowed == {bool}:
            ok, want = isinstance(value, bool), "true or false"
        elif allowed == {int}:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif allowed <= {int, float}:
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            problems.append(
                f"passes.{pass_name}.training_args.{key}: {json.dumps(value)} is not {want}{_quote_hint(value)}"
            )
    return problems


def _quote_hint(value) -> str:
    """'; remove the quotes' for a quoted number or true/false."""
    try:
        unquoted = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return ""
    return "; remove the quotes" if isinstance(unquoted, (bool, int, float)) else ""


def _build_training_args(training_args) -> None:
    """Build the TrainingArguments, which rejects unknown fields, from a copy without the GPU-only settings:
    whether this machine can run bf16 or Liger is setup/check_env.py's question, not the config's.

    Building them with torch_compile also switches TF32 on through torch's new fp32_precision API; Olive's pass
    later reads the legacy allow_tf32 flag, which torch refuses once the two disagree, so a check run in Olive's
    process (setup/benchmark_train.py) puts it back."""
    import torch

    args = training_args.model_copy(deep=True)
    project.drop_gpu_only(args.extra_args)
    saved = getattr(torch.backends, "fp32_precision", None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args.output_dir = tmp
            args.create_training_args()
    finally:
        if saved is not None:
            torch.backends.fp32_precision = saved


def main(argv=None) -> int:
    default = Path(__file__).resolve().parent / "olive-config.json"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=default, help="Olive workflow config (JSON)")
    args = parser.parse_args(argv)
    try:
        problems = check(args.config)
    except project.ConfigError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - any parse error is the user's config, say it in one line
        print(f"ERROR: {args.config}: Olive cannot read it: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"ERROR: {args.config}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"OK: {args.config}: every pass, training argument and data option is read by Olive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
