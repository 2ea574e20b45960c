"""vlkit's own CPU kernels, compiled at first use (see :mod:`vlkit.kernels.build`).

``int4_ops()`` returns ``torch.ops.vlkit_kernels`` when the int4 kernels are built and loaded
on this machine, else ``None`` (and callers fall back to PyTorch's kernels).
"""

from vlkit.kernels.build import cpu_flags, int4_ops, kernel_status

__all__ = ["cpu_flags", "int4_ops", "kernel_status"]
