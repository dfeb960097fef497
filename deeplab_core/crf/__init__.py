"""Fully connected CRF post-processing and its parameter search (DeepLab v1/v2).

``densecrf`` (the CRF and its parameters), ``cache`` (the search's cache of softmax probabilities;
``deeplab_core.engine.probability_cache`` fills one from a model), ``evaluator`` (configs scored
on a cache in worker processes, with a resumable results journal), ``search`` (full grid and
coarse-to-fine search), ``plots``. The papers' coarse grid is the ``crf_search`` default in
``deeplab_core.config``. The package imports none of its modules, and none of them imports the
engine.
"""
