"""Fields every image classifier shares; the task fills them in from the data."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClassifierConfig:
    in_chans: int = 1  # (int) image channels the network sees: 1 grey, 3 RGB
    num_classes: int = 10  # (int) number of output classes K
    image_size: int = 16  # (int) side of the square input the network is built for
