"""``medsaga plan``: the device memory a training run will need, predicted before it starts (see :mod:`.run`)."""
