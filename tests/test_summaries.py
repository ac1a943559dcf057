"""The TensorBoard pieces: the conv1 kernel grid in the layout of the paper's Figure 3."""

import numpy as np

from keras_alexnet import summaries


def test_kernel_grid_is_figure_3_layout():
  kernels = np.random.default_rng(0).normal(size=(11, 11, 3, 96)).astype(np.float32)
  grid = summaries.kernel_grid(kernels)
  zoom = summaries.KERNEL_ZOOM
  assert grid.shape == (1, (8 * 12 + 1) * zoom, (12 * 12 + 1) * zoom, 3)
  assert grid.min() >= 0 and grid.max() <= 1
  # Kernel 13 (row 1, column 1) sits at pixel (1 + 12, 1 + 12), scaled by its own max |w|.
  k = kernels[..., 13]
  np.testing.assert_allclose(grid[0, 13 * zoom, 13 * zoom], 0.5 + 0.5 * k[0, 0] / np.abs(k).max(),
                             rtol=1e-6)
