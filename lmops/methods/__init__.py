"""The papers' methods, one package per paper, each on the lmops layers and talking to language models
only through :mod:`lmops.llm`.

Every package has the same file roles (after peft's tuner folders): ``config.py`` (dataclasses
validated in ``__post_init__``), the algorithm in one or a few modules named for what they do,
``data.py`` (records as dataclasses, JSONL I/O), ``cli.py`` (its ``lmops`` verb) and ``examples/``
(the small data of its offline demo).

- :mod:`lmops.methods.se2`: Se2, sequential example selection for in-context learning.
- :mod:`lmops.methods.glan`: GLAN, instruction data generated from a taxonomy of human knowledge.
- :mod:`lmops.methods.hd_eval`: HD-Eval, LLM evaluators aligned by hierarchical criteria decomposition.
- :mod:`lmops.methods.domain_rc`: ETRC, domain adaptation through extended-text reading comprehension.
- :mod:`lmops.methods.trec`: TREC, text diffusion with Reinforced Conditioning.
- :mod:`lmops.methods.reason_distill`: tailored reasoning distillation from a teacher LLM, in rounds.
- :mod:`lmops.methods.visionprefer`: VisionPrefer, MLLM-annotated image preferences, the VP-Score reward
  model, and text-to-image alignment (ReFL, Diffusion-DPO, PPO).
"""
