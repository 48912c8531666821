"""The encoder and its files: typed config (``model.json``), weights, backbones and inference.

Importing this package imports no torch; :mod:`facesearch.model.encoder` does.
"""
