"""The encoder and its files.

* :mod:`~facesearch.model.config`: ``ModelConfig`` (``model.json``) and the training defaults;
  :mod:`~facesearch.model.records`: its typed ``calibration`` and ``training`` records.
* :mod:`~facesearch.model.files`: a model directory's layout, the built-in models, the model key, and
  ``resolve(spec)``, the one place a model spec (``default``, ``builtin:NAME``, a directory) is resolved.
* :mod:`~facesearch.model.backbones`: the trunks, in a ``REGISTRY`` a new backbone is added to.
* :mod:`~facesearch.model.encoder`: the ``Encoder``; build, save, load, embed, resolve_device.
* :mod:`~facesearch.model.inference`: faster CPU inference (batch norms folded, thread count tuned).

Importing this package, ``config``, ``records``, ``files`` or ``inference`` imports no torch;
``backbones`` and ``encoder`` do.
"""
