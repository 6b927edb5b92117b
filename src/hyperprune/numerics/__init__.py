"""Pure numerics below the methods: input statistics, least squares and refits, masked training,
gradients and end-to-end helpers. Tensors in, tensors out; no I/O and no layer loop."""
