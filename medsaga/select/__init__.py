"""Which scans to label: embed a cohort with the frozen pretrained encoder and pick the K that stand for it.

- :mod:`.embed`: one descriptor per scan, cached by file content;
- :mod:`.pick`: the selection rules (k-medoids, the default, and greedy k-center) on the descriptors' distances;
- :mod:`.cohort_map`: the cohort on its first two principal components, picks marked (PNG);
- :mod:`.case_list`: the picks read back for ``medsaga finetune --cases``;
- :mod:`.run`: ``medsaga select`` end to end.
"""
