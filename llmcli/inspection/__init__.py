"""Looking inside next-token prediction: pure computations that return plain data.

Every function here returns dataclasses holding Python ints, floats, strings and lists (no
rich, no printing); :mod:`llmcli.render` turns them into tables, plain text or JSON, and
:mod:`llmcli.cli.inspect` wires them to commands.

* :mod:`llmcli.inspection.tokens` — tokenize / detokenize (sentencepiece only, never torch);
* :mod:`llmcli.inspection.info` — a model directory's config, tensors and tokenizer, read from
  the safetensors headers (never torch);
* :mod:`llmcli.inspection.tensors` — embeddings, logits, top-k, trace (runs the model).
* :mod:`llmcli.inspection.perplexity` — perplexity of a whole text, window by window
  (Hugging Face's sliding window or llama-perplexity's chunks);
* :mod:`llmcli.inspection.score` — every token's logprob, rank and entropy (a generator).

This ``__init__`` imports nothing, so that ``llmcli tokenize`` never pays for torch.
"""
