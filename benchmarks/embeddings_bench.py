"""DashCLIP benchmarks: training and precompute speed on a world, and stage 1 on real grocery photos.

    python -m benchmarks.embeddings_bench speed   [--data data/demo] [--config experiments/configs/embeddings/demo.yaml]
    python -m benchmarks.embeddings_bench grocery [--config ...] [--epochs 6]

speed: stage-1 and stage-2 training examples/s from the difference of two runs of the real training loop (k1 and
k2 steps), so loading the catalog and building the model do not count; precompute products/s (the multimodal
product encoder over the whole catalog) and the wall time of a whole precompute (products + queries + writing).
grocery: the Grocery Store Dataset sample in ../shared/data/grocery_store_dataset (81 products, real photos and
catalogue pictures; skipped when absent) written as a products table (title = product name + the first sentence of
its description, aisle = coarse class, validation photos created after the training window so that they are held
out), stage 1 trained on it, then on the validation photos: coarse-category accuracy of a linear probe on the image
embeddings and zero-shot fine-class accuracy (the nearest product title by ITC cosine), before and after stage 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import record  # noqa: E402
from embeddings import train  # noqa: E402
from experiments.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROCERY = ROOT.parent / "shared" / "data" / "grocery_store_dataset"


def _timed_steps(cfg, data: Path, stage: int, steps: int, ckpt: Path) -> float:
    run_cfg = dataclasses.replace(cfg, max_steps=steps, checkpoints=str(ckpt), checkpoint_every=10**9, eval_every=0)
    shutil.rmtree(ckpt / f"stage{stage}.state", ignore_errors=True)
    started = time.perf_counter()
    try:
        (train.train_stage1 if stage == 1 else train.train_stage2)(run_cfg, data, progress=False)
    except train.StopTraining:
        pass
    return time.perf_counter() - started


def speed(args) -> int:
    from embeddings.evaluate import embed_products
    from embeddings.model import build_model, load_tokenizer, save_checkpoint
    from embeddings.precompute import precompute

    cfg = load_config(train.EmbeddingConfig, args.config)
    train.set_threads(cfg.threads)
    work = Path(tempfile.mkdtemp(prefix="emb-bench-"))
    try:
        # stage 2 starts from a stage-1 checkpoint; its speed does not depend on the weights
        save_checkpoint(build_model(cfg.model, seed=cfg.seed), cfg.model, work / "stage1", extra_json={"stage": 1})
        k1, k2 = args.steps
        for stage, batch in ((1, cfg.stage1.batch_size), (2, cfg.stage2.batch_size)):
            t1, t2 = _timed_steps(cfg, args.data, stage, k1, work), _timed_steps(cfg, args.data, stage, k2, work)
            record("embeddings", f"stage{stage}_train_examples_per_s", round((k2 - k1) * batch / (t2 - t1), 1),
                   "examples/s", cfg.name, batch_size=batch, steps=[k1, k2], seconds=[round(t1, 2), round(t2, 2)],
                   threads=torch.get_num_threads())
        from embeddings.data import load_catalog
        from embeddings.model import load_checkpoint

        model, _ = load_checkpoint(work / "stage1")
        catalog = load_catalog(args.data, cfg.model.image_size)
        started = time.perf_counter()
        embed_products(model, catalog, load_tokenizer(cfg.model), cfg.model.max_title_len)
        seconds = time.perf_counter() - started
        record("embeddings", "precompute_products_per_s", round(len(catalog) / seconds, 1), "products/s", cfg.name,
               products=len(catalog), threads=torch.get_num_threads())
        started = time.perf_counter()
        precompute(args.data, work / "stage1", version="bench-tmp", progress=False)
        record("embeddings", "precompute_all_seconds", round(time.perf_counter() - started, 2), "s", cfg.name)
        shutil.rmtree(Path(args.data) / "embeddings" / "bench-tmp", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# the grocery store photos


def grocery_world(out: Path, image_size: int) -> dict:
    """Write the grocery sample as products / queries / relevance tables (+ world.json with a training window).
    Returns {"fine": [N] fine class ids, "val": [N] bool, "titles": [81] class titles}."""
    import pandas as pd
    from PIL import Image

    from experiments.images import encode_png
    from feature_store.schema import write_table

    root = GROCERY / "dataset"
    classes = pd.read_csv(root / "classes.csv")
    classes.columns = ["name", "fine", "coarse_name", "coarse", "iconic", "description"]

    def title_of(row) -> str:
        text = (root / row.description.lstrip("/")).read_text(errors="replace").strip().split(". ")[0]
        return f"{row['name'].replace('-', ' ')} {text[:80]}".strip()

    classes["title"] = [title_of(r) for _, r in classes.iterrows()]
    present = set((GROCERY / "included_train_images.txt").read_text().split())
    rows = [(f"dataset{r.iconic}", int(r.fine), False) for r in classes.itertuples()]  # catalogue pictures
    for split in ("train", "val"):
        for line in (root / f"{split}.txt").read_text().splitlines():
            rel, fine, _ = [x.strip() for x in line.split(",")]
            if split == "train" and f"dataset/{rel}" not in present:
                continue
            rows.append((f"dataset/{rel}", int(fine), split == "val"))

    def png(path: str) -> bytes:
        with Image.open(GROCERY / path) as im:
            return encode_png(np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)))

    fine = np.array([r[1] for r in rows])
    val = np.array([r[2] for r in rows])
    start, end = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-02-01", tz="UTC")
    by_fine = classes.set_index("fine")
    products = pd.DataFrame({
        "product_id": np.arange(1, len(rows) + 1, dtype=np.int64),
        "title": by_fine.title.loc[fine].to_numpy(),
        "aisle": by_fine.coarse_name.loc[fine].to_numpy(),
        "brand": "grocery", "store_id": np.int64(1), "price": np.float32(1.0),
        "image": [png(r[0]) for r in rows],
        "created_ts": np.where(val, end + pd.Timedelta(days=1), start),  # validation photos: after the window
    })
    products["created_ts"] = pd.to_datetime(products.created_ts, utc=True)
    raw = out / "raw"
    write_table("products", products, raw / "products")
    queries = pd.DataFrame({"query_id": np.arange(1, 82, dtype=np.int64),
                            "query_text": classes.sort_values("fine").name.str.replace("-", " ").str.lower()})
    write_table("queries", queries, raw / "queries")
    train_rows = np.flatnonzero(~val)
    coarse = by_fine.coarse.loc[fine].to_numpy()
    other = (fine + 40) % 81
    relevance = pd.DataFrame({
        "query_id": np.concatenate([fine[train_rows] + 1, other[train_rows] + 1]).astype(np.int64),
        "product_id": np.concatenate([train_rows + 1, train_rows + 1]).astype(np.int64),
        "label": np.concatenate([np.full(len(train_rows), 2), np.where(coarse[train_rows] == by_fine.coarse.loc[other[train_rows]].to_numpy(), 1, 0)]).astype(np.int8),
        "source": "class",
    })
    write_table("relevance", relevance, raw / "relevance")
    (out / "world.json").write_text(json.dumps({"splits": {"train": [start.isoformat(), end.isoformat()]}}))
    return {"fine": fine, "val": val, "coarse": coarse, "titles": classes.sort_values("fine").title.tolist()}


@torch.no_grad()
def grocery_scores(model, cfg, data: Path, info: dict) -> dict:
    from embeddings.data import load_catalog
    from embeddings.evaluate import linear_probe
    from embeddings.model import load_tokenizer, tokenize

    model.eval()
    cat = load_catalog(data, cfg.model.image_size)
    image_feat = torch.cat([model.encode_image(cat.pixels[s : s + 128])[1] for s in range(0, len(cat), 128)]).numpy()
    tok = load_tokenizer(cfg.model)
    ids, mask = tokenize(tok, info["titles"], cfg.model.max_title_len)
    title_feat = model.encode_text(ids, mask)[1].numpy()  # [81, D]
    val, coarse, fine = info["val"], info["coarse"], info["fine"]
    probe = linear_probe(image_feat[~val], coarse[~val], image_feat[val])
    zero_shot = (image_feat[val] @ title_feat.T).argmax(1)
    return {"image_category_acc": float((probe == coarse[val]).mean()),
            "zero_shot_fine_acc": float((zero_shot == fine[val]).mean())}


def grocery(args) -> int:
    if not (GROCERY / "dataset" / "classes.csv").is_file():
        print(f"skipped: {GROCERY} is not present")
        return 0
    from embeddings.model import build_model, load_checkpoint

    base = load_config(train.EmbeddingConfig, args.config)
    cfg = dataclasses.replace(base, name=f"{base.name}-grocery", heldout_product_share=0.0, eval_every=0,
                              stage1=dataclasses.replace(base.stage1, epochs=args.epochs, batch_size=32),
                              model=dataclasses.replace(base.model, image_size=args.image_size))
    train.set_threads(cfg.threads)
    work = Path(tempfile.mkdtemp(prefix="emb-grocery-"))
    try:
        started = time.perf_counter()
        info = grocery_world(work / "grocery", args.image_size)
        cfg = dataclasses.replace(cfg, checkpoints=str(work / "ckpt"))
        before = grocery_scores(build_model(cfg.model, seed=cfg.seed), cfg, work / "grocery", info)
        final = train.train_stage1(cfg, work / "grocery", progress=False)
        after = grocery_scores(load_checkpoint(final)[0], cfg, work / "grocery", info)
        seconds = time.perf_counter() - started
        n_val = int(info["val"].sum())
        for metric in before:
            record("embeddings_grocery", f"offshelf/{metric}", round(before[metric], 4), "accuracy", cfg.name,
                   val_photos=n_val)
            record("embeddings_grocery", f"stage1/{metric}", round(after[metric], 4), "accuracy", cfg.name,
                   val_photos=n_val, train_products=int((~info["val"]).sum()), epochs=args.epochs,
                   seconds=round(seconds, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embeddings_bench", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("speed", "grocery", "all"), nargs="?", default="all")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "embeddings" / "demo.yaml")
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25), metavar=("K1", "K2"))
    parser.add_argument("--epochs", type=int, default=8, help="grocery: stage-1 epochs")
    parser.add_argument("--image-size", type=int, default=64, help="grocery: picture side in pixels")
    args = parser.parse_args(argv)
    if args.what in ("speed", "all"):
        if not (args.data / "raw" / "products").is_dir():
            print(f"speed: no world at {args.data} (python -m experiments.simulate ... --out {args.data})")
            return 1
        speed(args)
    if args.what in ("grocery", "all"):
        grocery(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
