"""Helpers shared by the layer methods (bitnet, reslora, mole) and the demo: target matching
(:mod:`~lmops.common.targets`), atomic files (:mod:`~lmops.common.files`), freezing and restoring
``requires_grad`` (:mod:`~lmops.common.params`), progress bars for terminals and logs
(:mod:`~lmops.common.progress`)."""
