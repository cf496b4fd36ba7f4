"""Fields every image classifier shares; the task fills them in from the data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAX_IMAGE_SIZE = 512  # the deployed graph resizes any input to image_size; beyond this training runs out of memory


@dataclass
class ClassifierConfig:
    in_chans: int = 1  # (int) image channels the network sees: 1 grey, 3 RGB
    num_classes: int = 10  # (int) number of output classes K
    image_size: int = 16  # (int) side of the square input the network is built for

    def __post_init__(self):
        """Sizes are whole numbers >= 1 (every int field, and every int of a list field: widths,
        blocks, hidden layers, heads), dropout in [0, 1), image_size at most MAX_IMAGE_SIZE."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ints = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in ints):
                raise ValueError(f"{f.name} must be >= 1, got {value}")
            if f.name == "dropout" and not 0 <= value < 1:
                raise ValueError(f"dropout must be in [0, 1), got {value}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be <= {MAX_IMAGE_SIZE}, got {self.image_size}")
