"""``medsaga benchmark``: every tuning method on the same data, each in a fresh process, side by side.

- :mod:`.variants`: the ``--methods`` syntax (methods, options, ``@speed``/``@bf16``/``@ckpt``/``@cache``/...
  flags); an entry runs as ``finetune`` runs its method by default (:func:`.run.entry_config`);
- :mod:`.slices`: a few real slices, cut once by the parent through finetune's data path;
- :mod:`.launch` and :mod:`.worker`: one process per entry, printing one JSON record;
- :mod:`.flops`: the encoder's FLOPs and the matmul peaks its rate is held against;
- :mod:`.run`: the parent (checks, workers, ratios, outputs); :mod:`.report`: ratios and tables;
- :mod:`.chart`: the bar-chart PNG (matplotlib); :mod:`.font`: a bitmap font left for
  ``medsaga select``'s cohort map until it moves to matplotlib too.

Nothing is imported here: ``python -m medsaga.benchmark.launch`` must stay a bare interpreter.
"""
