"""Draw ``docs/insert_tumour.png``: synthetic tumours inserted by ``RandInsertTumour`` into a synthetic CT.

The scan is a tumour-free full-size case of ``lung-tumor synth`` (seed 0, case 2; no real CT goes into
the repository). Each panel is the axial slice through one inserted tumour's centre, in the lung
window, with its label outlined: solid inside the lung, solid against the lung's border (pleural),
and ground glass.

Usage: python scripts/picture_insert_tumour.py [--out docs/insert_tumour.png]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.data import MetaTensor

from lung_tumor.data.synth import synthesize_case
from lung_tumor.transforms import RandInsertTumour
from lung_tumor.visualize import save_figure

PANELS = (
    ("solid, inside the lung", {"location": "inside", "diameter_mm": (15.0, 30.0)}, 1),
    ("solid, pleural-based", {"location": "pleural", "diameter_mm": (15.0, 30.0)}, 2),
    ("ground glass", {"location": "inside", "diameter_mm": (15.0, 30.0), "ground_glass_prob": 1.0}, 3),
)
HALF_WIDTH_MM = 45.0
log = logging.getLogger("picture_insert_tumour")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/insert_tumour.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    case = synthesize_case(2, seed=0, size="full", with_tumour=False)
    image = MetaTensor(torch.from_numpy(case.image[None]), affine=torch.from_numpy(case.affine))
    spacing = np.array(case.spacing)
    figure = Figure(figsize=(12, 4.4))
    for column, (title, options, seed) in enumerate(PANELS):
        insert = RandInsertTumour(**options)
        insert.set_random_state(seed=seed)
        started = time.perf_counter()
        out, label = insert(image)
        log.info("%s: %.1f s on %s voxels", title, time.perf_counter() - started, tuple(image.shape[1:]))
        tumour = insert.tumours[0]
        x, y, z = tumour.centre
        half = (HALF_WIDTH_MM / spacing[:2]).astype(int)
        window = (slice(max(x - half[0], 0), x + half[0]), slice(max(y - half[1], 0), y + half[1]), z)
        ax = figure.add_subplot(1, 3, column + 1)
        # x points to the patient's left and y backwards: transposed, the picture is as a radiologist reads it
        ax.imshow(out[0][window].numpy().T, cmap="gray", vmin=-1350, vmax=150, interpolation="nearest")
        ax.contour(label[0][window].numpy().T, levels=[0.5], colors="tab:red", linewidths=0.8)
        ax.set_title(f"{title}\n{tumour.diameter_mm:.0f} mm, mean {tumour.mean_hu:.0f} HU", fontsize=10)
        ax.set_axis_off()
    figure.suptitle("RandInsertTumour on a tumour-free synthetic CT (lung window, label in red)", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(figure, Path(args.out))


if __name__ == "__main__":
    main()
