"""Caffe without Caffe: read ``.caffemodel`` / ``.prototxt`` files into numpy arrays.

``reader`` knows the file format and nothing about DeepLab; ``topology`` knows the
official DeepLab v2 network definitions; ``passes`` turns Caffe's layer blobs into
named arrays (folding Caffe's BatchNorm + Scale pair); ``rules`` maps those names
onto the reference models' state dicts.
"""
