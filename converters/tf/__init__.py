"""TensorFlow checkpoints without TensorFlow, the same four rooms as ``converters.caffe``.

``reader`` knows the checkpoint formats (V2 TensorBundle, V1 TensorSlice) and nothing about
DeepLab; ``rules`` maps TF(-slim) variable names onto the reference models' state dicts (as
data, with the layout steps) given as a model or its state-dict ``signatures`` (stored per
architecture, so a streamed conversion needs no torch); ``convert`` joins them with the release
manifests' checks.
"""
