"""SAM construction, checkpoint formats and the prompt-free multi-class head.

Modules (import them directly; this package imports nothing heavy, so ``medsaga --help`` stays fast):

* :mod:`~medsaga.model.sam_import`: segment-anything's model code without torchvision.
* :mod:`~medsaga.model.registry`: one :class:`ModelType` entry per model type (vit_b, vit_l, vit_h,
  tiny, litemedsam): its encoder, backbone protocol, default size, pixel statistics, checkpoint
  signature, packaged weights, profiled sizes. Adding a model type is one ``register`` call.
* :mod:`~medsaga.model.load`: ``load_segmenter(model_type, checkpoint, ...)``, what every command
  loads its model with (one rule for weights and the default input size).
* :mod:`~medsaga.model.build`: ``build_sam(model_type, num_classes=, image_size=)`` for any
  registered type at any multiple of 16 pixels.
* :mod:`~medsaga.model.checkpoint`: read official / MedSAM checkpoints safely, detect their type,
  load them strictly (``load_checkpoint``, ``build_sam_from_checkpoint``).
* :mod:`~medsaga.model.resize`: pos_embed (bicubic) and rel-pos (linear) resampling.
* :mod:`~medsaga.model.mask_heads`: fitting the decoder's per-mask heads to ``num_classes + 1``.
* :mod:`~medsaga.model.segmenter`: ``SamSegmenter`` (images → ``C + 1`` logits), labels.
* :mod:`~medsaga.model.weights`: the published checkpoint files and ``verify_weights``.
"""
