"""Images in, splits and folds out: datasets by name, ``.npz`` files, ImageFolders (split folders under
any of their names), label tables, archives and Hugging Face datasets are listed and checked
(:class:`Listing`, read as :class:`ReadOptions` say), decoded once into a uint8 store and read as
:class:`ImageDataset` (uint8 images, int labels, class names, groups), then split into train,
validation and test. Imports nothing of BioTune's but its errors and settings."""

from .dataset import ImageDataset as ImageDataset
from .dataset import SplitData as SplitData
from .dataset import load_dataset as load_dataset
from .dataset import preprocess as preprocess
from .dataset import split_dataset as split_dataset
from .listing import Listing as Listing
from .listing import ReadOptions as ReadOptions
from .sources import list_source as list_source
