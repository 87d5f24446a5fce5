"""Chat with what the workflow made: the LoRA adapter, the merged model, or the ONNX Runtime GenAI model.

    python inferences/chat.py --backend onnx --prompt "How do I reset my password?"
    python inferences/chat.py --backend merged          # interactive; an empty line or Ctrl-D quits

Prompts are formatted with the chat format the model was trained with (setup/project.json). Each question is
answered on its own, as the model was trained on single question/answer pairs; Ctrl-C stops an answer. On CPU,
both runtimes use one thread per physical core this process may run on (--threads to change it).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import env_facts  # noqa: E402
import onnx_cuda_env  # noqa: E402
import project  # noqa: E402

BACKENDS = ("adapter", "merged", "onnx")


class Unavailable(RuntimeError):
    """A backend cannot answer here; the message says what to do."""


class MissingModel(Unavailable):
    """A backend's model does not exist yet; the message names the command that makes it."""


def default_threads() -> int:
    """Physical cores this process may run on: the intra-op thread count for answering one prompt at a time.

    onnxruntime-genai 0.14 otherwise takes half the logical CPUs, which is 1 on a 2-core VM without SMT:
    measured there with a Phi-3-mini-sized int4 model, 2 threads decode about 1.9x faster and halve the time to
    the first token. A second thread on the same physical core only competes for its execution units. When
    other work keeps the cores busy, fewer threads (--threads 1) can be faster.
    """
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows: no affinity API
        return _physical_cores_fallback()
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text(encoding="utf-8").strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, min(len(cores), _cgroup_cpu_limit() or len(cores)))


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16); Linux only, else False."""
    return bool(env_facts.cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def default_torch_dtype(device: str) -> str:
    """bfloat16 on a GPU and on a CPU with bf16 instructions, float32 on other CPUs.

    Measured on a 2-core Xeon with AMX and a Phi-3-mini-sized model: bf16 decoded 1.53 tokens/s at a 7.5 GiB
    peak, float32 1.32 tokens/s at 21.2 GiB (loading the bf16 checkpoint into float32 doubles it, and more).
    Where the CPU lacks bf16 instructions, torch has no fast bf16 matmul, so float32 stays.
    """
    return "bfloat16" if device == "cuda" or cpu_has_bf16() else "float32"


def _physical_cores_fallback() -> int:
    try:
        import psutil  # installed with accelerate

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return max(1, os.cpu_count() or 1)


def _cgroup_cpu_limit() -> int | None:
    """A container's CPU quota (cgroup v2 cpu.max), which the affinity mask does not show."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no limit
        return None


def genai_default_threads() -> int:
    """What onnxruntime-genai 0.14 picks without intra_op_num_threads: half the logical CPUs, 1 to 16."""
    return max(1, min(16, (os.cpu_count() or 2) // 2))


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_paths(gen_dir: Path | None = None) -> dict[str, Path]:
    """Where fine-tuning/run.py recorded each model (gen-model/outputs.json), else where it would put it. The
    base model is model-cache/'s unless the record names the one the adapter was trained on (the smoke run's).
    run.py records paths relative to the record's folder, so a moved or copied project finds its own models."""
    gen_dir = gen_dir or project.GEN_MODEL
    paths = {name: gen_dir / name for name in BACKENDS}
    paths["base"] = project.ROOT / project.load()["model_dir"]
    record = gen_dir / "outputs.json"
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
            if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
                raise ValueError("not an object of paths")
        except (OSError, ValueError) as error:
            raise Unavailable(
                f"{record}: unreadable ({error}); run python fine-tuning/run.py again, or delete the file to use "
                f"the models' default places under {gen_dir}"
            ) from error
        paths.update({name: gen_dir / path for name, path in recorded.items()})  # an absolute path stays as it is
    return paths


def context_length(kind: str, paths: dict[str, Path]) -> int | None:
    """The model's context in tokens (prompt and answer together), read from its config; None if unreadable."""
    try:
        if kind == "onnx":
            config = json.loads((paths["onnx"] / "genai_config.json").read_text(encoding="utf-8"))
            return int(config["model"]["context_length"])
        folder = paths["base"] if kind == "adapter" else paths["merged"]
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return int(config["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ContextFull(RuntimeError):
    """The prompt leaves no room for an answer in the model's context."""


def room_for(prompt_tokens: int, max_new_tokens: int, context: int | None, exact: bool = False) -> int:
    """How many new tokens fit after the prompt: max_new_tokens, or fewer where the context ends first.

    Raises ContextFull when the prompt fills the context, or, with exact (benchmarks), when the answer would
    have to be cut. Past the context a torch model runs on with positions it was never trained for, and
    onnxruntime-genai refuses to start."""
    if context is None:
        return max_new_tokens
    room = context - prompt_tokens
    if room < 1 or (exact and room < max_new_tokens):
        raise ContextFull(
            f"the prompt is {prompt_tokens} tokens{f' + {max_new_tokens} new' if exact else ''}; the model's "
            f"context is {context} tokens: ask a shorter question"
        )
    return min(max_new_tokens, room)


# what each backend loads: (path name, file that must exist there, what it is)
REQUIRED = {
    "adapter": [("adapter", "adapter_config.json", "LoRA adapter"), ("base", "config.json", "base model")],
    "merged": [("merged", "config.json", "merged model")],
    "onnx": [("onnx", "genai_config.json", "ONNX model")],
}
MAKE_BASE = "download it with `python model-cache/download.py`"
MAKE_MODEL = (
    "make it with `python fine-tuning/run.py`; for the offline smoke run's models (`python setup/smoke.py`) "
    "add --gen-dir gen-model/smoke"
)
MAKE_SMOKE = "make it with `python setup/smoke.py`"


def never_made(kind: str) -> str | None:
    """Why this project's workflow makes no model of this kind, with the backend to use; None if it makes one."""
    facts = project.load()
    if kind in ("adapter", "merged") and facts["finetune_method"] == "none":
        return "this project converts the base model without fine-tuning (finetune_method none); use the onnx backend"
    if kind == "onnx" and facts["onnx_precision"] == "none":
        return "this project makes no ONNX model (onnx_precision none); use the merged or adapter backend"
    return None


def check_model(kind: str, paths: dict[str, Path]) -> None:
    """Raise MissingModel, naming the command that makes it, when a file the backend loads is missing."""
    for name, marker, what in REQUIRED[kind]:
        if not (paths[name] / marker).is_file():
            if name != "base" and never_made(kind):
                raise MissingModel(f"{paths[name]}: no {what}: {never_made(kind)}")
            smoke = (project.GEN_MODEL / "smoke").resolve() in paths[name].resolve().parents
            make = MAKE_SMOKE if smoke else MAKE_BASE if name == "base" else MAKE_MODEL
            raise MissingModel(f"{paths[name]}: no {what} yet; {make}")


class TextStream:
    """Token ids in, new text out, for a transformers tokenizer. It decodes the whole answer so far and hands on
    what is new: a token decoded alone loses its leading space in Phi-3's tokenizer, and a character spread over
    several byte tokens would come out as U+FFFD."""

    def __init__(self, tokenizer, on_text):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.shown = 0

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._show(final=False)

    def end(self) -> None:
        self._show(final=True)

    def _show(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # the rest of the character is still to come
            return
        if len(text) > self.shown:
            self.on_text(text[self.shown :])
            self.shown = len(text)


class TorchBackend:
    def __init__(self, kind: str, paths: dict[str, Path], threads: int = 0, dtype: str | None = None):
        check_model(kind, paths)  # before the slow imports
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads() if self.device == "cpu" else None
        dtype = getattr(torch, dtype or default_torch_dtype(self.device))
        self.dtype = str(dtype).removeprefix("torch.")
        if kind == "adapter":
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=dtype)
            model = PeftModel.from_pretrained(model, paths["adapter"])
            tokenizer_dir = paths["base"]
        else:
            model = AutoModelForCausalLM.from_pretrained(paths["merged"], dtype=dtype)
            tokenizer_dir = paths["merged"]
        self.torch = torch
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.context = context_length(kind, paths)

    def generate(
        self, prompt: str | list[int], max_new_tokens: int, on_text=None, on_token=None, ignore_eos=False
    ) -> list[int]:
        """Greedy answer to a text prompt (or prompt token ids); on_token(id) is called as each token arrives.

        ignore_eos makes every answer exactly max_new_tokens long (benchmarks): end tokens are masked.
        """
        from transformers.generation.streamers import BaseStreamer

        tokenizer = self.tokenizer

        class Streamer(BaseStreamer):
            def __init__(self):
                self.ids: list[int] = []
                self.first = True
                self.text = TextStream(tokenizer, on_text) if on_text else None

            def put(self, value):
                if self.first:  # the prompt
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    self.ids.append(int(token))
                    if on_token:
                        on_token(int(token))
                    if self.text:
                        self.text.add(int(token))

            def end(self):
                if self.text:
                    self.text.end()

        streamer = Streamer()
        if isinstance(prompt, str):
            inputs = tokenizer(prompt, return_tensors="pt").to(self.device)
        else:
            input_ids = self.torch.tensor([prompt], device=self.device)
            inputs = {"input_ids": input_ids, "attention_mask": self.torch.ones_like(input_ids)}
        max_new_tokens = room_for(inputs["input_ids"].shape[-1], max_new_tokens, self.context, ignore_eos)
        # transformers has no "ignore EOS": min_new_tokens masks the end tokens until the length is reached
        extra = {"min_new_tokens": max_new_tokens} if ignore_eos else {}
        with self.torch.no_grad():
            self.model.generate(
                **inputs,
                **extra,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                streamer=streamer,
                eos_token_id=stop_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        return streamer.ids


class OnnxBackend:
    def __init__(self, paths: dict[str, Path], provider: str | None = None, threads: int = 0):
        check_model("onnx", paths)
        provider = onnx_provider(provider, paths["onnx"])
        if provider == "cuda":
            reason = onnx_cuda_env.unusable_reason()
            if reason:
                raise Unavailable(f"onnx on CUDA: {onnx_cuda_env.fix(reason)}")
        import onnxruntime_genai as og

        config = og.Config(str(paths["onnx"]))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        if threads > 0:
            # a runtime overlay of genai_config.json's session options; the model folder stays as built
            # (dict() rather than nested braces: this file is rendered by Jinja, which reads two closing braces)
            overlay = dict(model=dict(decoder=dict(session_options=dict(intra_op_num_threads=threads))))
            config.overlay(json.dumps(overlay))
        self.threads = threads if threads > 0 else genai_default_threads()
        self.provider = provider
        self.og = og
        try:
            self.model = og.Model(config)
        except Exception as error:
            if provider == "cpu":
                raise
            # e.g. a CPU-only onnxruntime-genai: "Cuda interface not available"
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if provider == "cuda" and onnx_cuda_env.running_in() and onnx_cuda_env.genai_cuda_library() is None:
                # the environment made for ONNX on CUDA holds a genai without CUDA: that environment is the fix
                raise Unavailable(f"onnx on CUDA: {onnx_cuda_env.fix(reason)}") from error
            raise Unavailable(
                f"onnx on {provider}: {reason}. Answer on the CPU with --provider cpu, or install what "
                f"setup/requirements.txt pins ({project.PIP_INSTALL}); python setup/check_env.py says what is missing"
            ) from error
        self.tokenizer = og.Tokenizer(self.model)
        self.context = context_length("onnx", paths)

    def generate(
        self, prompt: str | list[int], max_new_tokens: int, on_text=None, on_token=None, ignore_eos=False
    ) -> list[int]:
        og = self.og
        input_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        params = og.GeneratorParams(self.model)
        max_length = len(input_ids) + room_for(len(input_ids), max_new_tokens, self.context, ignore_eos)
        # genai has no "ignore EOS" either: min_length masks the end tokens until the length is reached
        extra = {"min_length": max_length} if ignore_eos else {}
        params.set_search_options(max_length=max_length, do_sample=False, **extra)
        generator = og.Generator(self.model, params)
        generator.append_tokens(input_ids)
        stream = self.tokenizer.create_stream()
        ids: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            ids.append(token)
            if on_token:
                on_token(token)
            if on_text:
                on_text(stream.decode(token))
        return ids


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(project.end_token())}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


def built_for(onnx_dir: Path) -> str | None:
    """The provider the ONNX model was built for, from its genai_config.json ("cpu" when it names none), or
    None when that cannot be read. setup/smoke.py builds for the CPU on a machine without a CUDA GPU."""
    try:
        config = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
        options = config["model"]["decoder"]["session_options"]["provider_options"]
        names = [name for entry in options for name in entry]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return names[0] if names else "cpu"


def onnx_provider(provider: str | None, onnx_dir: Path | None = None) -> str:
    """The ONNX execution provider asked for, else the one the model was built for, else the project's."""
    return provider or (onnx_dir and built_for(onnx_dir)) or project.load()["execution_provider"]


def onnx_python(provider: str | None, onnx_dir: Path | None = None) -> Path:
    """The interpreter that runs the onnx backend: .venv-onnx-cuda's on CUDA when it was made (see
    setup/onnx_cuda_env.py), else this one."""
    env = onnx_cuda_env.env_python() if onnx_provider(provider, onnx_dir) == "cuda" else None
    return env if env and not onnx_cuda_env.running_in() else Path(sys.executable)


def load_backend(
    kind: str,
    paths: dict[str, Path] | None = None,
    provider: str | None = None,
    threads: int | None = None,
    dtype: str | None = None,
):
    """threads: intra-op threads on CPU; None: default_threads(); 0: the library's own default."""
    paths = paths or default_paths()
    threads = default_threads() if threads is None else threads
    if kind == "onnx":
        return OnnxBackend(paths, provider, threads)
    return TorchBackend(kind, paths, threads, dtype)


def clean_text(text: str) -> str:
    """Bytes that are not UTF-8 (Python keeps them as lone surrogates) become U+FFFD: the tokenizers refuse them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def answer(backend, question: str, max_new_tokens: int = 256, stream=True) -> list[int]:
    def on_text(text):
        print(text, end="", flush=True)

    ids = backend.generate(project.prompt_text(question), max_new_tokens, on_text if stream else None)
    if stream:
        print(flush=True)
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", choices=BACKENDS, help="which model answers (default: onnx, or merged in a project without ONNX)"
    )
    parser.add_argument("--prompt", help="answer this one question and exit; without it, chat interactively")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--gen-dir", type=Path, help="folder holding adapter/, merged/, onnx/ (default gen-model/)")
    parser.add_argument(
        "--provider", choices=("cpu", "cuda"), help="ONNX execution provider (default: the one the model was built for)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores; 0: the library's default)")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="adapter/merged weights (default: bfloat16 on a GPU or a CPU with bf16, else float32)",
    )
    args = parser.parse_args(argv)
    args.backend = args.backend or ("merged" if project.load()["onnx_precision"] == "none" else "onnx")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty; leave it out to chat interactively")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be 0 (the library's default) or more")
    usable = env_facts.usable_cpus()
    if args.threads and args.threads > usable:
        # more threads than CPUs only wait on each other: with 5000 on 2 CPUs, a tiny model had not answered in 2 min
        parser.error(f"--threads {args.threads}: this machine has {usable} CPUs for this process; use at most that")
    if args.dtype and args.backend == "onnx":
        parser.error("--dtype is for the adapter and merged backends; the ONNX model has its own precision")
    try:
        paths = default_paths(args.gen_dir)
    except Unavailable as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    python = onnx_python(args.provider, paths["onnx"]) if args.backend == "onnx" else Path(sys.executable)
    if python != Path(sys.executable):
        print(f"[onnx on CUDA: running in {onnx_cuda_env.ENV_DIR.name}]", file=sys.stderr, flush=True)
        command = [str(python), str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        os.execve(python, command, onnx_cuda_env.child_environ())
    try:
        started = time.perf_counter()
        backend = load_backend(args.backend, paths, args.provider, args.threads, args.dtype)
        where = f" on {backend.provider}" if args.backend == "onnx" else ""
        print(f"[{args.backend} model{where} loaded in {time.perf_counter() - started:.1f} s]", file=sys.stderr)
    except Unavailable as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    if args.prompt is not None:
        try:
            answer(backend, clean_text(args.prompt), args.max_new_tokens)
        except ContextFull as error:
            print(f"ERROR: --prompt: {error}", file=sys.stderr)
            return 1
        return 0
    print(
        "[each question is answered on its own; an empty line or Ctrl-D quits, Ctrl-C stops an answer]", file=sys.stderr
    )
    while True:
        try:
            question = clean_text(input("you> ")).strip()
        except EOFError:
            break
        if not question:
            break
        print("model> ", end="", flush=True)
        try:
            answer(backend, question, args.max_new_tokens)
        except KeyboardInterrupt:
            print(" [stopped]", flush=True)
        except ContextFull as error:
            print(flush=True)
            print(f"ERROR: {error}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (chat.py ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
