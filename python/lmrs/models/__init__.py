"""Model files: configs, GGUF / safetensors loaders, tokenizer, chat templates, conversion."""
