"""Training on an archive: :class:`~habactl.training.dataset.HabaDataset` (an archive as
a torch ``Dataset``), the training recipe it records (``recipe``) and the DSA
augmentation that recipe applies (``augment``)."""
