"""Files -> decoded, cached uint8 images -> PyTorch batches.

`scan` finds images and labels, `decode` turns one file into pixels, `cache` decodes a whole
data set once into a memory-mapped array, `split` and `loader` feed it to training, and
`report` summarises it for `dogvae inspect`.

The PyTorch side (`CachedImages`, `make_loader`, `set_epoch`) lives in `dogvae.data.loader` and
is not re-exported here, so `dogvae inspect` never imports torch.
"""

from dogvae.data.cache import ImageSet, load_images
from dogvae.data.decode import MAX_PIXELS, decode_file, load_photo, open_rgb, to_square
from dogvae.data.report import format_report, inspect_dataset
from dogvae.data.scan import Catalog, ImageRecord, Skip, scan
from dogvae.data.split import stratified_split

__all__ = [
    "MAX_PIXELS",
    "Catalog",
    "ImageRecord",
    "ImageSet",
    "Skip",
    "decode_file",
    "format_report",
    "inspect_dataset",
    "load_images",
    "load_photo",
    "open_rgb",
    "scan",
    "stratified_split",
    "to_square",
]
