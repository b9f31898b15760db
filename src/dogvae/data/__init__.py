"""Files -> decoded, cached uint8 images -> PyTorch batches.

`scan` finds images and labels, `decode` turns one file into pixels, `cache` decodes a whole
data set once into a memory-mapped array, `split` and `loader` feed it to training, and
`report` summarises it for `dogvae inspect`.
"""
