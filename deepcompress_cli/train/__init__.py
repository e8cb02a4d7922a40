"""Retraining in numpy: reverse-mode gradients over the interpreter's graph, and the SGD loops
that prune -> retrain and fine-tune shared centroids (the paper's trained quantization).

- `grads.py`: the backward rule (vector-Jacobian product) of each differentiable op;
- `network.py`: a model's forward pass that records what backward needs, the backward pass,
  and the loss (cross-entropy on the logits, or distillation to the original model's logits);
- `retrain.py`: training data, masked SGD with momentum, centroid training, evaluation, early
  stop on --val, gradient clipping and recovery from divergence;
- `augment.py`: `--augment`, random flips and crops of image inputs.
"""
