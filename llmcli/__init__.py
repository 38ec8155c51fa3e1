"""llmcli: load Llama-family safetensors checkpoints, stream generated text, and look inside
every step of next-token prediction."""

__version__ = "0.1.0"
