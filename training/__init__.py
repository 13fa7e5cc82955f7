"""Training-side code: data pipeline, model, training and evaluation."""
