"""Dataset records, readers (CVUSA, CVACT), input specs and the tf.data pipeline."""
