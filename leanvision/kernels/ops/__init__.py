"""One package per kernel op: ``ref.py`` (the torch reference, the CPU path and the oracle),
``triton.py`` (the GPU kernel) and ``op.py`` (the ``torch.library`` custom op and its dispatch).
The public functions are re-exported by :mod:`leanvision.kernels`."""
