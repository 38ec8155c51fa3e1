"""Training a small Llama from text files (``llmcli train``): data, tokenizer, loop."""
