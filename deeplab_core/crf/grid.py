"""The papers' coarse grid of CRF parameters (DeepLab v1 Sec. 4, v2 Sec. 4.1): w1 in {3..6},
sigma_alpha in {30, 40, ..., 100}, sigma_beta in {3..6}, with w2 = 3 and sigma_gamma = 3 fixed.

The one source of these defaults: the search functions and the ``crf_search`` section of the
configuration read them from here (this module imports nothing, so the configuration stays light).
"""

PAPER_W1_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PAPER_SIGMA_ALPHA_GRID: tuple[float, ...] = tuple(float(v) for v in range(30, 101, 10))
PAPER_SIGMA_BETA_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PAPER_W2: float = 3.0
PAPER_SIGMA_GAMMA: float = 3.0
PAPER_ITERATIONS: int = 10
