"""The worker: KV cache tensors, the model runner (StepPlan -> forward -> sampled ids) and the sampler."""
