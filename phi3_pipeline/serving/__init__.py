"""The scoring code a deployment runs, as files: `score.py` (the entry script the Azure ML inference server
loads) and `chat_model.py` (the MLflow model's code, which the registry copies into each model)."""

from pathlib import Path

SERVING_DIR = Path(__file__).resolve().parent
SCORE_SCRIPT = SERVING_DIR / "score.py"
CHAT_MODEL_CODE = SERVING_DIR / "chat_model.py"
