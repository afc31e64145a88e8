"""The model as a phone runs it: NumPy alone, no torch, `tokenizers` or `safetensors`.

`tensorfile` reads and writes safetensors bytes (models, updates: `federated.wire` uses it
too); `tokenizer` reads the `tokenizer.json` that `model.tokenizer` writes and splits text
into the same ids; `checkpoint` reads and writes the float and int8 model files; `lstm` is the
LSTM's forward and backward passes; `train` the local training loop (the same batches,
optimiser, clipping and loss as `model.train`); `scorer` gives suggestions their
log-probabilities. `model/` keeps the PyTorch reference that the server, the benchmarks and
the pre-training use; tests hold both to the same numbers.
"""
