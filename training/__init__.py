"""Training side of datgpt: config schema, data, tokenizer, train loop, tracking, distributed helpers."""
