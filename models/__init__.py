"""Transferlab's ML core: datasets, backbones, bottleneck cache, heads, evaluation, ensembles.

No Flask in here. TensorFlow/Keras are imported lazily, only by the modules that run models
(`backbones`, `efficientnet_lite`, `classifier`), so reading datasets, resolving weights or
rendering a report never pays for importing TensorFlow.
"""
