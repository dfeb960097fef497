"""Fully connected CRF post-processing and its parameter search (DeepLab v1/v2)."""

from deeplab_core.crf.densecrf import CRFParams, dense_crf
from deeplab_core.crf.search import (coarse_to_fine_search, evaluate_configs, full_grid_search,
                                     load_cache_item, make_synthetic_cache, write_cache_item)

__all__ = ["CRFParams", "dense_crf", "coarse_to_fine_search", "evaluate_configs",
           "full_grid_search", "load_cache_item", "make_synthetic_cache", "write_cache_item"]
