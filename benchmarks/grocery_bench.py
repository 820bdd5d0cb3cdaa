"""DashCLIP stage 1 on real grocery photos: category accuracy from embeddings, trained vs untrained encoder.

    python -m benchmarks.grocery_bench [--data-root DIR] [--image-size 32] [--epochs 20]
                                       [--config experiments/configs/embeddings/demo.yaml] [--classes N]

--data-root: the Grocery Store Dataset sample (default DEFAULT_DATA, grocery_store_dataset in the shared data
folder beside the repository; 81 fine classes in 42 coarse ones; see PROVENANCE.md in the data folder). It becomes
the project's raw tables in a temporary folder (never in the repository):
- training catalog (`<tmp>/train/raw/products`): one product per training photo present (648) plus one per iconic
  catalogue picture (81). title = class name + the first sentence of its English description, aisle = coarse class
  name; the picture is padded (white) to a square and resized to --image-size, stored as PNG. Constant columns:
  brand "grocery-store-dataset", store_id 1, price 1.0, created_ts 2024-01-01 UTC (no world.json, so nothing is
  held out by date, and heldout_product_share=0 trains on every product). queries / relevance, which stage 1 reads
  but does not train on: one query per class (its name) and a label-2 pair for each product of that class.
- evaluation catalog (`<tmp>/val/raw/products`): the 296 validation photos, same columns, never trained on.

Stage 1 (embeddings.train.train_stage1, the project's own loop) trains from scratch on the training catalog. Then
the trained checkpoint ("stage1") and the same model before training ("offshelf": build_model with the same seed,
exactly stage 1's starting weights) embed both catalogs, a logistic-regression probe (embeddings.metrics.
linear_probe) is fitted on the training products and scored on the validation photos, for the coarse (42) and fine
(81) class. Features:
- product (headline, `grocery_<level>_acc_<encoder>`): the projected multimodal product embedding, every product
  (training and validation) encoded with the same neutral title NEUTRAL_TITLE. Every photo of a class shares its
  class title, so with real titles the probe would read the class off the title; with one title for all, what is
  left is what the image contributes through the image-grounded encoder.
- image (`..._image`): the unimodal ITC image feature.
- titled (`..._titled`): the product embedding with each product's real class title: a lookup ceiling (the title
  names the class), reported to show how much the title alone carries, not as a vision measure.
Also recorded: stage-1 wall time and training examples/s (epochs x training products / seconds of train_stage1,
which includes decoding the catalog and building the model), the whole benchmark's wall time, the 1-minute load
average, and with each accuracy the majority-class accuracy (`majority_acc`: always the most common training
class). Skipped (exit 0, reason printed) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from benchmarks.common import record  # noqa: E402
from core.config import load_config  # noqa: E402
from embeddings.checkpoint import load_checkpoint  # noqa: E402
from embeddings.config import EmbeddingConfig, set_threads  # noqa: E402
from embeddings.data import Catalog, load_catalog  # noqa: E402
from embeddings.encode import embed_products  # noqa: E402
from embeddings.metrics import linear_probe  # noqa: E402
from embeddings.model import DashClip, build_model  # noqa: E402
from embeddings.pretrained import load_tokenizer  # noqa: E402
from embeddings.train import train_stage1  # noqa: E402
from experiments.images import encode_png  # noqa: E402
from feature_store.schema import write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "grocery_store_dataset"
DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "embeddings" / "demo.yaml"
NEUTRAL_TITLE = "a grocery product"
CREATED_TS = pd.Timestamp("2024-01-01", tz="UTC")
VAL_ID_OFFSET = 1_000_000  # validation product ids: 1_000_001.. (training ones start at 1)


@dataclasses.dataclass
class GroceryClass:
    fine: int  # Class ID, 0..80
    name: str  # e.g. "Golden-Delicious"
    coarse: int  # Coarse Class ID, 0..41
    coarse_name: str  # e.g. "Apple": the aisle
    iconic: Path  # catalogue picture
    title: str


@dataclasses.dataclass
class GroceryTables:
    """Where the converted tables are and the labels of every product id."""
    train_dir: Path  # <out>/train: raw/products, raw/queries, raw/relevance
    val_dir: Path  # <out>/val: raw/products
    fine: dict[int, int]  # product_id -> fine class id (training and validation products)
    coarse: dict[int, int]  # product_id -> coarse class id
    classes: list[GroceryClass]
    n_train: int
    n_val: int


def first_sentence(text: str) -> str:
    """The text up to and including its first '.', '!' or '?' followed by whitespace (or all of it)."""
    text = " ".join(text.split())
    return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]


def read_classes(data_root: Path) -> list[GroceryClass]:
    """dataset/classes.csv with each class's title: name + first sentence of *_Description.txt (the Title line of
    *_Information.txt when the description is empty)."""
    root = data_root / "dataset"
    table = pd.read_csv(root / "classes.csv", skipinitialspace=True)
    expected = ["Class Name (str)", "Class ID (int)", "Coarse Class Name (str)", "Coarse Class ID (int)",
                "Iconic Image Path (str)", "Product Description Path (str)"]
    if list(table.columns) != expected:
        raise ValueError(f"{root / 'classes.csv'}: expected columns {expected}, found {list(table.columns)}")
    classes = []
    for name, fine, coarse_name, coarse, iconic, description in table.itertuples(index=False):
        desc_path = root / description.lstrip("/")
        text = first_sentence(desc_path.read_text(encoding="utf-8", errors="replace"))
        if not text:
            info = desc_path.with_name(desc_path.name.replace("_Description.txt", "_Information.txt"))
            lines = info.read_text(encoding="utf-8", errors="replace").splitlines() if info.is_file() else []
            text = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Title:")), "")
        classes.append(GroceryClass(int(fine), name, int(coarse), coarse_name, root / iconic.lstrip("/"),
                                    f"{name.replace('-', ' ')} {text}".strip()))
    return classes


def pick_classes(classes: list[GroceryClass], n: int | None) -> list[GroceryClass]:
    """All classes, or n of them evenly spaced over the class ids (so a small subset spans several aisles)."""
    if n is None or n >= len(classes):
        return classes
    if n < 2:
        raise ValueError(f"--classes must be at least 2 (a probe needs two categories), got {n}")
    picked = np.unique(np.linspace(0, len(classes) - 1, n).round().astype(int))
    return [classes[i] for i in picked]


def square_png(path: Path, image_size: int) -> bytes:
    """The picture padded with white to a square (catalogue pictures are not square; the photos are) and resized
    to image_size x image_size, as PNG bytes."""
    with Image.open(path) as im:
        square = ImageOps.pad(im.convert("RGB"), (image_size, image_size), method=Image.BICUBIC,
                              color=(255, 255, 255))
    return encode_png(np.asarray(square))


def _split_photos(data_root: Path, split: str, fines: set[int]) -> list[tuple[Path, int]]:
    """(photo path, fine id) of `split`.txt for the chosen classes; training photos only where present
    (included_train_images.txt)."""
    root = data_root / "dataset"
    present = None
    if split == "train":
        present = set((data_root / "included_train_images.txt").read_text().split())
    out = []
    for n, line in enumerate((root / f"{split}.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [x.strip() for x in line.split(",")]
        if len(parts) != 3:
            raise ValueError(f"{root / f'{split}.txt'} line {n}: expected 'path, fine_id, coarse_id', got {line!r}")
        rel, fine = parts[0], int(parts[1])
        if fine not in fines or (present is not None and f"dataset/{rel}" not in present):
            continue
        out.append((root / rel, fine))
    return out


def _products(rows: list[tuple[Path, int]], first_id: int, by_fine: dict[int, GroceryClass],
              image_size: int) -> pd.DataFrame:
    fine = [f for _, f in rows]
    return pd.DataFrame({
        "product_id": np.arange(first_id, first_id + len(rows), dtype=np.int64),
        "title": [by_fine[f].title for f in fine],
        "aisle": [by_fine[f].coarse_name for f in fine],
        "brand": "grocery-store-dataset",
        "store_id": np.int64(1),
        "price": np.float32(1.0),
        "image": [square_png(p, image_size) for p, _ in rows],
        "created_ts": pd.Series([CREATED_TS] * len(rows), dtype="datetime64[us, UTC]"),
    })


def convert(data_root: Path, out: Path, image_size: int, n_classes: int | None = None) -> GroceryTables:
    """Write the dataset (or n_classes of its classes) as raw tables under out/train and out/val."""
    classes = pick_classes(read_classes(data_root), n_classes)
    by_fine = {c.fine: c for c in classes}
    train_rows = [(c.iconic, c.fine) for c in classes] + _split_photos(data_root, "train", set(by_fine))
    val_rows = _split_photos(data_root, "val", set(by_fine))
    train = _products(train_rows, 1, by_fine, image_size)
    val = _products(val_rows, VAL_ID_OFFSET + 1, by_fine, image_size)
    write_table("products", train, out / "train" / "raw" / "products")
    write_table("products", val, out / "val" / "raw" / "products")
    # stage 1 reads (but does not train on) queries and relevance: one query per class, its products label 2
    queries = pd.DataFrame({"query_id": np.array([c.fine + 1 for c in classes], dtype=np.int64),
                            "query_text": [c.name.replace("-", " ").lower() for c in classes]})
    write_table("queries", queries, out / "train" / "raw" / "queries")
    relevance = pd.DataFrame({"query_id": np.array([f + 1 for _, f in train_rows], dtype=np.int64),
                              "product_id": train.product_id.to_numpy(),
                              "label": np.int8(2), "source": "class"})
    write_table("relevance", relevance, out / "train" / "raw" / "relevance")
    ids = np.concatenate([train.product_id.to_numpy(), val.product_id.to_numpy()])
    fines = [f for _, f in train_rows] + [f for _, f in val_rows]
    return GroceryTables(out / "train", out / "val", dict(zip(ids.tolist(), fines)),
                         {int(p): by_fine[f].coarse for p, f in zip(ids, fines)}, classes, len(train), len(val))


# ----------------------------------------------------------------------------------------------------------------
# embeddings and probes


@torch.no_grad()
def features(model: DashClip, catalog: Catalog, tokenizer, max_len: int,
             batch_size: int = 128) -> dict[str, np.ndarray]:
    """{"product": [N, D] product embedding with NEUTRAL_TITLE, "image": [N, D] ITC image feature,
    "titled": [N, D] product embedding with the real titles}."""
    model.eval()
    neutral = dataclasses.replace(catalog, titles=[NEUTRAL_TITLE] * len(catalog))
    image = torch.cat([model.encode_image(catalog.pixels[s : s + batch_size])[1]
                       for s in range(0, len(catalog), batch_size)])
    return {"product": embed_products(model, neutral, tokenizer, max_len), "image": image.numpy(),
            "titled": embed_products(model, catalog, tokenizer, max_len)}


def probe_accuracies(train_feats: dict, val_feats: dict, tables: GroceryTables, train_ids: np.ndarray,
                     val_ids: np.ndarray) -> dict[str, float]:
    """{"<level>_acc[_<feature>]": val accuracy} of a probe fitted on the training products, per feature and
    level (coarse, fine)."""
    out = {}
    for level, labels in (("coarse", tables.coarse), ("fine", tables.fine)):
        y_train = np.array([labels[int(p)] for p in train_ids])
        y_val = np.array([labels[int(p)] for p in val_ids])
        for name in train_feats:
            predicted = linear_probe(train_feats[name], y_train, val_feats[name])
            key = f"{level}_acc" + ("" if name == "product" else f"_{name}")
            out[key] = float((predicted == y_val).mean())
    return out


def majority_accuracy(tables: GroceryTables, train_ids: np.ndarray, val_ids: np.ndarray) -> dict[str, float]:
    """{level: val accuracy of always predicting the most common training class}: the floor a probe must beat."""
    out = {}
    for level, labels in (("coarse", tables.coarse), ("fine", tables.fine)):
        values, counts = np.unique([labels[int(p)] for p in train_ids], return_counts=True)
        out[level] = float(np.mean([labels[int(p)] == values[counts.argmax()] for p in val_ids]))
    return out


def run(data_root: Path, config: Path, image_size: int, epochs: int, n_classes: int | None) -> dict:
    """Convert, train stage 1, probe both encoders; returns the measurements (nothing recorded)."""
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="grocery-bench-"))
    try:
        tables = convert(data_root, work / "tables", image_size, n_classes)
        convert_s = time.perf_counter() - started
        base = load_config(EmbeddingConfig, config)
        # warm-up: at most a tenth of the run (the demo config's 20 steps would be most of a small one)
        steps = -(-tables.n_train // base.stage1.batch_size) * epochs
        cfg = load_config(EmbeddingConfig, config, overrides=[
            f"name={base.name}-grocery", f"model.image_size={image_size}", f"stage1.epochs={epochs}",
            f"stage1.warmup_steps={max(1, min(base.stage1.warmup_steps, steps // 10))}",
            "heldout_product_share=0.0", "eval_every=0", f"checkpoints={work / 'checkpoints'}"])
        set_threads(cfg.threads)
        t0 = time.perf_counter()
        final = train_stage1(cfg, tables.train_dir, progress=False)
        train_s = time.perf_counter() - t0

        tokenizer = load_tokenizer(cfg.model)
        train_cat = load_catalog(tables.train_dir, image_size)
        val_cat = load_catalog(tables.val_dir, image_size)
        encoders = {"offshelf": build_model(cfg.model, seed=cfg.seed), "stage1": load_checkpoint(final)[0]}
        accuracy = {}
        for name, model in encoders.items():
            accs = probe_accuracies(features(model, train_cat, tokenizer, cfg.model.max_title_len),
                                    features(model, val_cat, tokenizer, cfg.model.max_title_len),
                                    tables, train_cat.product_ids, val_cat.product_ids)
            accuracy[name] = accs
        m = cfg.model
        return {
            "accuracy": accuracy, "majority": majority_accuracy(tables, train_cat.product_ids, val_cat.product_ids),
            "config": cfg.name, "train_products": tables.n_train, "val_photos": tables.n_val,
            "classes": len(tables.classes), "coarse_classes": len({c.coarse for c in tables.classes}),
            "image_size": image_size, "epochs": epochs, "batch_size": cfg.stage1.batch_size,
            "model": f"vit {m.vision_layers}x{m.vision_hidden} patch {m.patch_size}, text {m.text_layers}x"
                     f"{m.text_hidden}, embed {m.embed_dim}, init {m.init}",
            "threads": torch.get_num_threads(), "convert_seconds": round(convert_s, 1),
            "train_seconds": round(train_s, 1),
            "train_examples_per_s": round(epochs * tables.n_train / train_s, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grocery_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="the grocery_store_dataset folder")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="an EmbeddingConfig YAML (model sizes)")
    parser.add_argument("--image-size", type=int, default=32, help="picture side in pixels (multiple of the patch)")
    parser.add_argument("--epochs", type=int, default=20, help="stage-1 epochs (20: about 100 s on 2 cores)")
    parser.add_argument("--classes", type=int, default=None, help="use only this many fine classes (tests)")
    args = parser.parse_args(argv)
    if not (args.data_root / "dataset" / "classes.csv").is_file():
        print(f"grocery_bench skipped: {args.data_root / 'dataset' / 'classes.csv'} not found (the Grocery Store "
              f"Dataset sample is not present)")
        return 0
    out = run(args.data_root, args.config, args.image_size, args.epochs, args.classes)
    common = {k: out[k] for k in ("train_products", "val_photos", "classes", "coarse_classes", "image_size",
                                  "epochs", "batch_size", "model", "threads")}
    load = round(os.getloadavg()[0], 2)
    for encoder, accs in out["accuracy"].items():
        for key, value in accs.items():
            level, _, feature = key.partition("_acc")
            record("grocery", f"grocery_{level}_acc_{encoder}{feature}", round(value, 4), "accuracy", out["config"],
                   majority_acc=round(out["majority"][level], 4), load_avg=load, **common)
    record("grocery", "grocery_stage1_train_examples_per_s", out["train_examples_per_s"], "examples/s",
           out["config"], load_avg=load, train_seconds=out["train_seconds"], **common)
    record("grocery", "grocery_wall_seconds", out["wall_seconds"], "s", out["config"], load_avg=load,
           convert_seconds=out["convert_seconds"], train_seconds=out["train_seconds"], **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
