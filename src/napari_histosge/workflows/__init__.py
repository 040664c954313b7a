"""Workflows: the steps of the package chained into what a user runs.

- :mod:`.pipeline` — one slide: features, training, prediction, maps (``histosge run``);
- :mod:`.superres` — the super-resolved maps, their uncertainty, domains and cells;
- :mod:`.export` — writing maps, positions and predictions into the store;
- :mod:`.sections` — one model trained on several sections (``histosge train``);
- :mod:`.batch` and :mod:`.batch_predict` — many slides on dask.distributed, trained per slide
  or predicted by one model (``histosge batch``);
- :mod:`.whole_slide` — features and maps of whole-slide images in bounded memory.
"""
