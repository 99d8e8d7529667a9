"""The model runner: KV cache tensors, StepPlan -> forward -> sampled ids, the sampler, CUDA decode graphs."""
