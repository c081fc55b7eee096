"""Local training: models (byte GPT, Hugging Face), LoRA, tokenizers, data, the inner trainer,
differential privacy, and how many inner steps fit in a round. Plain torch; never the network."""
