"""The engine core: scheduler, paged KV blocks, model runner, sampler, detokenizer.

`LLMEngine` is the step-by-step API the server drives; `LLM` is the offline API."""
