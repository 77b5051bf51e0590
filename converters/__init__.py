"""Readers for foreign weight files, rename tables and writers for our models.

Data flows one way: a reader turns a source file into plain named numpy arrays
plus layer metadata; named passes fix each framework quirk; a rename table maps
the source names onto a reference model's state dict; a writer saves it with a
provenance record. See ``converters/caffe2torch.py`` for the command line.
"""

__version__ = "0.1.0"
