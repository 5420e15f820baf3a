"""The dataset stage at full ultrachat size, against the tutorial's own loop on the same source.

    python bench/dataset_scale.py --source /tmp/ultrachat.parquet --split train_sft [--rows 207865]

`--rows N` first writes N synthetic ultrachat-shaped rows (4 to 8 turns, about 5 KB each) to the source
(.parquet or .jsonl). The project's `split_and_write` and the tutorial's loop (`load_dataset` ->
`train_test_split(0.2)` -> `json.dump` per record) then run, each in a fresh subprocess with an empty
`datasets` cache, so neither gains from the other. The last line is one JSON object:
{"rows", "project_s", "project_peak_rss_mb", "tutorial_s", "tutorial_peak_rss_mb", "speedup"}.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Like ultrachat's text: paragraphs (newlines), quotes, now and then a backslash or a tab, some non-ASCII.
WORDS = ("model data train test chat answer question token learning rate azure endpoint deploy phi small "
         "language the a of to and in is that for it with as on be by this are an or at from caf\u00e9 "
         "na\u00efve \u201cquoted\u201d \"said\" .\n\n 1.\n 2.\n path\\to \tcode").split(" ")
BATCH_ROWS = 5_000


def _text(rng: random.Random, corpus: str, size: int) -> str:
    start = rng.randrange(len(corpus) - size)
    return corpus[start:start + size]


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """N ultrachat-shaped rows (prompt, prompt_id, messages of 4 to 8 turns, about 5 KB a row), in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    corpus = " ".join(rng.choice(WORDS) for _ in range(400_000))
    message = pa.struct([("content", pa.string()), ("role", pa.string())])
    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", pa.list_(message))])
    writer = pq.ParquetWriter(path, schema) if path.suffix == ".parquet" else None
    with (open(path, "w", encoding="utf-8") if writer is None else writer) as out:
        for first in range(0, rows, BATCH_ROWS):
            batch = []
            for index in range(first, min(rows, first + BATCH_ROWS)):
                turns = rng.randint(4, 8)
                prompt = _text(rng, corpus, rng.randint(80, 300))
                messages = [{"content": prompt if turn == 0 else _text(rng, corpus, 5000 // turns),
                             "role": "user" if turn % 2 == 0 else "assistant"} for turn in range(turns)]
                batch.append({"prompt": prompt, "prompt_id": f"{index:064x}", "messages": messages})
            if writer is None:
                out.writelines(json.dumps(row) + "\n" for row in batch)
            else:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))


PROJECT = """
from pathlib import Path
from phi3_pipeline.config.settings import DatasetSettings
from phi3_pipeline.chat_data.split_files import split_and_write
split = split_and_write(DatasetSettings(source={source!r}, split={split!r}), Path({out!r}))
print(split.train_rows + split.test_rows)
"""

TUTORIAL = """
import json
from datasets import load_dataset
loader = {{".parquet": "parquet"}}.get(Path({source!r}).suffix, "json")
dataset = load_dataset(loader, data_files={{{split!r}: {source!r}}}, split={split!r}, cache_dir={out!r} + "/hf")
dataset = dataset.train_test_split(test_size=0.2, seed=42)
for part, name in (("train", "train_data.jsonl"), ("test", "test_data.jsonl")):
    with open({out!r} + "/" + name, "w") as handle:
        for record in dataset[part]:
            json.dump(record, handle)
            handle.write("\\n")
print(len(dataset["train"]) + len(dataset["test"]))
"""

MEASURED = """
import resource, sys, time
from pathlib import Path
started = time.perf_counter()
{body}
print("MEASURED", time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      file=sys.stderr)
"""


def measure(body: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of the code in a fresh interpreter, its imports included."""
    with tempfile.TemporaryDirectory() as scratch:
        code = MEASURED.format(body=body.format(out=scratch, **ARGS))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"error: {done.stderr.strip().splitlines()[-1]}")
    peak_mb = float(done.stderr.split("MEASURED")[-1].split()[1])
    return seconds, peak_mb


ARGS: dict = {}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--split", default="train_sft")
    parser.add_argument("--rows", type=int, help="first write this many synthetic rows to --source")
    args = parser.parse_args()
    if args.rows:
        started = time.perf_counter()
        generate(args.source, args.rows)
        print(f"wrote {args.rows} rows ({args.source.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    ARGS.update(source=str(args.source.resolve()), split=args.split)
    project_s, project_mb = measure(PROJECT)
    tutorial_s, tutorial_mb = measure(TUTORIAL)
    import pyarrow.parquet as pq

    rows = (pq.ParquetFile(args.source).metadata.num_rows if args.source.suffix == ".parquet"
            else sum(1 for _ in args.source.open(encoding="utf-8")))
    print(json.dumps({"rows": rows, "project_s": round(project_s, 1), "project_peak_rss_mb": round(project_mb),
                      "tutorial_s": round(tutorial_s, 1), "tutorial_peak_rss_mb": round(tutorial_mb),
                      "speedup": round(tutorial_s / project_s, 2)}))
