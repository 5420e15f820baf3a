"""The local target's training job on a CPU or a GPU, outside the pipeline: seconds and losses of two jobs.

    python bench/training_job.py DIR             # in the project's venv: writes DIR (data, specs, run.sh)
    bash DIR/run.sh PYTHON                       # on any machine whose PYTHON has torch, transformers, peft, trl

`small` is the default run (the built-in sample's 192 training conversations, 8 epochs, batch 16); `large`
is 3,200 conversations, 2 epochs, batch 64, 256 tokens. Each job builds its own tiny base model first. The
job needs only torch, transformers, peft and trl (with datasets and accelerate): DIR holds the modules it imports
in a package of their own, so the GPU machine needs none of the project's other dependencies.
One JSON line per job.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phi3_pipeline.chat_data.split_files import split_and_write  # noqa: E402
from phi3_pipeline.config.settings import BUILTIN_BASE_MODEL, DatasetSettings, PipelineSettings  # noqa: E402

JOBS = {"small": (240, {}),
        "large": (4000, {"epochs": 2, "batch_size": 64, "max_seq_length": 256, "base_pretrain_steps": 300})}

RUN_SH = r'''#!/usr/bin/env bash
set -euo pipefail
PY=$1; HERE=$(cd "$(dirname "$0")" && pwd); W=$(mktemp -d)
for job in small large; do
  J="$W/jobs/$job"; mkdir -p "$J"
  sed "s#@DATA@#$HERE#g; s#@JOB@#$J#g" "$HERE/$job.json" > "$J/spec.json"
  start=$(date +%s.%N)
  (cd "$HERE" && "$PY" -m phi3_pipeline.targets.local.training_job "$J" > "$J/job.log" 2>&1) || { tail -20 "$J/job.log"; exit 1; }
  end=$(date +%s.%N)
  "$PY" -c 'import json, sys; m = json.load(open(sys.argv[1] + "/job_metrics.json")); print(json.dumps({"job": sys.argv[2], "wall_s": round(float(sys.argv[4]) - float(sys.argv[3]), 1), "fine_tune_s": m["seconds"], "fine_tune_steps": m["fine_tune_steps"], "eval_loss_before": round(m["eval_loss_before"], 3), "eval_loss_after": round(m["eval_loss_after"], 3)}))' "$J" "$job" "$start" "$end"
done
'''
# The project's modules the training job imports, copied into a package of their own with a one-line settings
# module, so that a machine with only torch, transformers, peft and trl runs the job.
JOB_MODULES = ("config/errors.py", "locks.py", "targets/workspace.py", "targets/local/machine.py",
               "targets/local/training_job.py")


def write_job_package(folder: Path, modules: tuple[str, ...] = JOB_MODULES) -> None:
    """`folder/phi3_pipeline`: `modules` at their own paths, empty `__init__`s, and the built-in model's name as
    the only setting."""
    package = folder / "phi3_pipeline"
    for module in modules:
        (package / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "phi3_pipeline" / module, package / module)
    for directory in (package, *{(package / module).parent for module in modules}):
        while directory != folder:
            (directory / "__init__.py").touch()
            directory = directory.parent
    (package / "config" / "settings.py").write_text(f"BUILTIN_BASE_MODEL = {BUILTIN_BASE_MODEL!r}\n")


def prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, overrides) in JOBS.items():
        split = split_and_write(DatasetSettings(sample_size=size), folder / f".split-{name}")
        for part in ("train", "test"):
            shutil.copy(getattr(split, f"{part}_file"), folder / f"{name}_{part}.jsonl")
        shutil.rmtree(folder / f".split-{name}")
        spec = {**PipelineSettings().training.model_dump(), **overrides, "seed": 42, "base_cache_dir": "@JOB@/base",
                "train_file": f"@DATA@/{name}_train.jsonl", "test_file": f"@DATA@/{name}_test.jsonl"}
        (folder / f"{name}.json").write_text(json.dumps(spec))
    write_job_package(folder)
    (folder / "run.sh").write_text(RUN_SH)
    print(f"prepared {folder}: run `bash {folder}/run.sh PYTHON`")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    prepare(Path(sys.argv[1]))
