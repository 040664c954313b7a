"""The base layer: helpers every step uses, importing nothing else of the package.

Progress events and cancellation (:mod:`.progress`), argument checks (:mod:`.validation`), the
torch device (:mod:`.device`), atomic JSON files (:mod:`.json_io`) and writes that a Ctrl-C
cannot cut in half (:mod:`.interrupts`).
"""
