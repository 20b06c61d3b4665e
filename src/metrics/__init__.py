"""Evaluation metrics, shared by the training callbacks and the evaluation script."""
