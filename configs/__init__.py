"""YAML presets of the model configurations (loaded by `runtime.config.load_config`)."""
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
