"""The next-word model: tokenizer, LSTM, checkpoints, training, prediction, evaluation."""
