"""The sampling and stopping options shared by ``generate`` and ``chat`` (one definition each).

Each is a ``typing.Annotated`` type for a Typer parameter; the default value is the function
parameter's (``= 0.8``). :func:`sampling_params` turns them into a validated
:class:`llmcli.sampling.SamplingParams`.
"""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from llmcli.errors import UsageError

MaxTokensOpt = Annotated[int, typer.Option(
    "-n", "--max-tokens",
    help="Most tokens to generate; -1 = until end of sequence or the context is full (as "
         "llama.cpp's -n -1).")]
TempOpt = Annotated[float, typer.Option("--temp", "--temperature", help="Temperature; 0 = greedy.")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).")]
TopPOpt = Annotated[float, typer.Option(
    "--top-p", help="Keep the smallest set with this much probability (1 = off).")]
MinPOpt = Annotated[float, typer.Option(
    "--min-p", help="Drop tokens below min_p × the top probability (0 = off).")]
RepeatPenaltyOpt = Annotated[float, typer.Option(
    "--repeat-penalty", help="Penalise tokens already seen (1 = off).")]
SeedOpt = Annotated[Optional[int], typer.Option(
    "-s", "--seed", help="Random seed (same seed and options → same text).", show_default=False)]
StopOpt = Annotated[Optional[List[str]], typer.Option(
    "--stop", help="Stop when this text is generated (repeatable; not printed).", show_default=False)]
StatsOpt = Annotated[bool, typer.Option("--stats", help="Print timings to stderr.")]


def sampling_params(temp: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
                    seed: int | None, max_tokens: int):
    """The validated :class:`~llmcli.sampling.SamplingParams` of the options.

    Raises:
        UsageError: a value out of range (the message names the option).
    """
    from llmcli.sampling import SamplingParams

    params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, seed=seed)
    params.validate()
    if max_tokens < -1:
        raise UsageError(f"-n/--max-tokens: must be >= 0, or -1 for no limit (until end of sequence "
                         f"or the context is full), got {max_tokens}")
    return params
