"""The ``--quant`` option shared by the commands that load a model (generate, chat, logits,
topk, trace, embeddings, perplexity).

Declared once here; a command adds ``quant: QuantOpt = None`` to its parameters and nothing
else: the option's callback puts the value where :func:`llmcli.weights.load_model` looks
(:func:`llmcli.quant.requested`, a context variable) for the duration of the command, so
the commands' own code does not carry it. It is checked when given (an unknown name is a
usage error before anything loads); load_model resolves it. Importing this module does not
import torch.
"""

from __future__ import annotations

import contextvars
from typing import Annotated, Optional

import typer

#: Keep in sync with llmcli.quant.CHOICES (that module imports torch; this one must not).
CHOICES = ("none", "q8_0", "q4_0", "q4_1", "int8", "int4")

#: The running command's --quant value (None outside a command or when not given).
REQUESTED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("llmcli_quant", default=None)


def _remember(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
    if value is not None and value.strip().lower() not in CHOICES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(CHOICES)}")
    token = REQUESTED.set(value)
    ctx.call_on_close(lambda: REQUESTED.reset(token))
    return value


QuantOpt = Annotated[Optional[str], typer.Option(
    "--quant", metavar="TYPE", callback=_remember,
    help="Compute with quantized weights (llama.cpp's block types): q8_0 (int8), q4_0 (int4) or "
         "q4_1, blocks of 32 with float16 scales, the output matrix in q8_0; none: float. "
         "Default: as the model is stored (float, or the blocks `llmcli convert --quant keep` "
         "kept). CPU only.", show_default=False)]
