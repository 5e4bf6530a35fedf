"""Images in, splits and folds out: datasets by name, ``.npz`` files and ImageFolders are read
into :class:`ImageDataset` (uint8 images, int labels, class names) and split into train,
validation and test. Imports nothing of BioTune's but its errors and settings."""

from .dataset import ImageDataset as ImageDataset
from .dataset import SplitData as SplitData
from .dataset import load_dataset as load_dataset
from .dataset import preprocess as preprocess
from .dataset import split_dataset as split_dataset
