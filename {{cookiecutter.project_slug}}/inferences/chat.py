"""Chat with what the workflow made: the LoRA adapter, the merged model, or the ONNX Runtime GenAI model.

    python inferences/chat.py --backend onnx --prompt "How do I reset my password?"
    python inferences/chat.py --backend merged          # interactive; an empty line or Ctrl-D quits

Prompts are formatted with the chat format the model was trained with (setup/project.json).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import project  # noqa: E402

BACKENDS = ("adapter", "merged", "onnx")


class MissingModel(RuntimeError):
    """A backend's model does not exist yet; the message names the command that makes it."""


def default_paths(gen_dir: Path | None = None) -> dict[str, Path]:
    """Where fine-tuning/run.py recorded each model (gen-model/outputs.json), else where it would put it."""
    gen_dir = gen_dir or project.GEN_MODEL
    paths = {name: gen_dir / name for name in BACKENDS}
    record = gen_dir / "outputs.json"
    if record.is_file():
        paths.update({name: Path(path) for name, path in json.loads(record.read_text(encoding="utf-8")).items()})
    paths["base"] = project.ROOT / project.load()["model_dir"]
    return paths


def _require(path: Path, marker: str, what: str) -> None:
    if not (path / marker).is_file():
        raise MissingModel(
            f"{path}: no {what} yet; make it with `python fine-tuning/run.py` "
            "(or `python setup/smoke.py` for the offline smoke run)"
        )


class TorchBackend:
    def __init__(self, kind: str, paths: dict[str, Path]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if kind == "adapter":
            _require(paths["adapter"], "adapter_config.json", "LoRA adapter")
            _require(paths["base"], "config.json", "base model (download it into model-cache/, see README.md)")
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=dtype)
            model = PeftModel.from_pretrained(model, paths["adapter"])
            tokenizer_dir = paths["base"]
        else:
            _require(paths["merged"], "config.json", "merged model")
            model = AutoModelForCausalLM.from_pretrained(paths["merged"], dtype=dtype)
            tokenizer_dir = paths["merged"]
        self.torch = torch
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def generate(self, prompt: str, max_new_tokens: int, on_text=None) -> list[int]:
        from transformers.generation.streamers import BaseStreamer

        tokenizer = self.tokenizer

        class Streamer(BaseStreamer):
            def __init__(self):
                self.ids: list[int] = []
                self.first = True

            def put(self, value):
                if self.first:  # the prompt
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    self.ids.append(int(token))
                    if on_text:
                        on_text(tokenizer.decode([token], skip_special_tokens=True))

            def end(self):
                pass

        streamer = Streamer()
        inputs = tokenizer(prompt, return_tensors="pt").to(self.device)
        with self.torch.no_grad():
            self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                streamer=streamer,
                eos_token_id=stop_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        return streamer.ids


class OnnxBackend:
    def __init__(self, paths: dict[str, Path], provider: str | None = None):
        import onnxruntime_genai as og

        _require(paths["onnx"], "genai_config.json", "ONNX model")
        config = og.Config(str(paths["onnx"]))
        provider = provider or project.load()["execution_provider"]
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        self.og = og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)

    def generate(self, prompt: str, max_new_tokens: int, on_text=None) -> list[int]:
        og = self.og
        input_ids = self.tokenizer.encode(prompt)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(input_ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(input_ids)
        stream = self.tokenizer.create_stream()
        ids: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            ids.append(token)
            if on_text:
                on_text(stream.decode(token))
        return ids


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(project.end_token())}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


def load_backend(kind: str, paths: dict[str, Path] | None = None, provider: str | None = None):
    paths = paths or default_paths()
    if kind == "onnx":
        return OnnxBackend(paths, provider)
    return TorchBackend(kind, paths)


def answer(backend, question: str, max_new_tokens: int = 256, stream=True) -> list[int]:
    def on_text(text):
        print(text, end="", flush=True)

    ids = backend.generate(project.prompt_text(question), max_new_tokens, on_text if stream else None)
    if stream:
        print(flush=True)
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="onnx", help="which model answers (default: onnx)")
    parser.add_argument("--prompt", help="answer this one question and exit; without it, chat interactively")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--gen-dir", type=Path, help="folder holding adapter/, merged/, onnx/ (default gen-model/)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), help="ONNX execution provider (default: project's)")
    args = parser.parse_args(argv)
    try:
        started = time.perf_counter()
        backend = load_backend(args.backend, default_paths(args.gen_dir), args.provider)
        print(f"[{args.backend} model loaded in {time.perf_counter() - started:.1f} s]", file=sys.stderr)
    except MissingModel as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    if args.prompt is not None:
        answer(backend, args.prompt, args.max_new_tokens)
        return 0
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        print("model> ", end="", flush=True)
        answer(backend, question, args.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
