"""Fully connected CRF post-processing and its parameter search (DeepLab v1/v2).

``densecrf`` (the CRF and its parameters), ``grid`` (the papers' coarse grid), ``cache`` (the
search's cache of softmax probabilities), ``evaluator`` (configs scored on a cache in worker
processes, with a resumable results journal), ``search`` (full grid and coarse-to-fine search),
``plots``. The package imports none of them, so that reading the grid defaults costs nothing.
"""
