"""Where the bundled default model lives (no torch import)."""

from __future__ import annotations

from pathlib import Path

from llmcli.errors import LLMCLIError

DEFAULT_MODEL_NAME = "shakespeare"


def default_model_dir() -> Path:
    """The bundled model directory.

    In a built wheel the model is packaged as ``llmcli/_models/<name>``; in a clone (editable
    install) it is ``models/<name>`` at the repository root.

    Raises:
        LLMCLIError: neither location holds the model.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_models" / DEFAULT_MODEL_NAME, here.parent / "models" / DEFAULT_MODEL_NAME):
        if (candidate / "config.json").is_file():
            return candidate
    raise LLMCLIError(f"the bundled model '{DEFAULT_MODEL_NAME}' is not installed; pass -m MODEL_DIR")
