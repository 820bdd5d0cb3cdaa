"""DashCLIP losses as small pure functions (open_clip style): ITC, ITM hard-negative mining, ITM, PQC.

Stage 1 (BLIP continual pre-training) uses `itc_loss` + `sample_hard_negatives` + `itm_loss`; stage 2 (query
alignment) uses `pqc_loss` (+ `l2sp_loss` against forgetting the pretrained weights, by option). Nothing here owns parameters or state: the model computes features, the train step
calls these functions and logs the named terms they return (docs/design.md section 5).

Shapes: B batch, D embedding dim (BLIP: 256), K feature-queue length, N explicit negative queries per product.
Temperatures divide similarities (logits = cos / temp), as in BLIP, which learns `temp` directly (init 0.07).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# BLIP's bounds on the learnable temperature: below 0.001 the logits overflow softmax's useful range, above 0.5
# the contrastive signal becomes too flat to learn from.
TEMP_MIN = 0.001
TEMP_MAX = 0.5


class ItcOutput(NamedTuple):
    loss: Tensor  # [] (loss_i2t + loss_t2i) / 2
    loss_i2t: Tensor  # [] image -> text cross-entropy
    loss_t2i: Tensor  # [] text -> image cross-entropy
    sim_i2t: Tensor  # [B, B(+K)] image-to-text logits, cos / temp (columns past B are the queue)
    sim_t2i: Tensor  # [B, B(+K)] text-to-image logits, cos / temp


class SoftTargets(NamedTuple):
    """BLIP momentum distillation: logits from the momentum encoders and the mixing weight alpha.

    sim_i2t_m / sim_t2i_m have the shape of `ItcOutput.sim_i2t` / `sim_t2i` ([B, B(+K)]) and are already divided
    by the temperature (BLIP: image_feat_m @ text_feat_all.T / temp). A plain tuple (sim_i2t_m, sim_t2i_m, alpha)
    is accepted too.
    """

    sim_i2t_m: Tensor
    sim_t2i_m: Tensor
    alpha: float


class ItmOutput(NamedTuple):
    loss: Tensor  # [] mean cross-entropy over the 3B pairs
    accuracy: Tensor  # [] share of pairs classified correctly (detached)


class PqcOutput(NamedTuple):
    loss: Tensor  # [] product-query contrastive loss
    pos_sim: Tensor  # [B] cosine(C_i, Q_i+) (detached; not divided by temp)
    accuracy: Tensor  # [] share of rows where Q_i+ beats every negative (detached)
    chance: Tensor  # [] mean over rows of log(1 + #negatives): the loss when every candidate scores alike


def clamp_temperature(temp: Tensor | float, min_temp: float = TEMP_MIN, max_temp: float = TEMP_MAX):
    """Clamp a temperature into [min_temp, max_temp] (BLIP: [0.001, 0.5]); call once per step before the losses.

    A tensor (the learnable `temp` parameter) is clamped IN PLACE under no_grad and returned, exactly as BLIP's
    `self.temp.clamp_(0.001, 0.5)`: the parameter itself is moved back into range, so it stays a leaf and its
    gradient is never cut. (An out-of-place `temp.clamp(...)` would give zero gradient whenever the value sits
    outside the range, freezing it there.) A float is returned clamped.
    """
    if isinstance(temp, Tensor):
        with torch.no_grad():
            temp.clamp_(min_temp, max_temp)
        return temp
    return min(max(float(temp), min_temp), max_temp)


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """mean_i -sum_j targets[i, j] * log_softmax(logits)[i, j]; logits, targets [B, C]."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _mixed_targets(sim_m: Tensor, alpha: float) -> Tensor:
    """alpha * softmax(sim_m) + (1 - alpha) * one-hot on the diagonal of the first B columns; sim_m [B, B+K]."""
    batch = sim_m.shape[0]
    with torch.no_grad():  # targets are teacher outputs: no gradient into the momentum encoders
        hard = torch.zeros_like(sim_m, dtype=torch.float32)
        hard[:, :batch].fill_diagonal_(1.0)
        return alpha * F.softmax(sim_m.detach().float(), dim=1) + (1.0 - alpha) * hard


def itc_loss(
    image_feat: Tensor,
    text_feat: Tensor,
    temp: Tensor | float,
    *,
    image_feat_all: Tensor | None = None,
    text_feat_all: Tensor | None = None,
    soft_targets: SoftTargets | tuple[Tensor, Tensor, float] | None = None,
) -> ItcOutput:
    """Symmetric image-text contrastive (InfoNCE) loss, BLIP's ITC.

        sim_i2t = norm(image_feat) @ norm(text_feat_all).T / temp        [B, B+K]
        sim_t2i = norm(text_feat)  @ norm(image_feat_all).T / temp       [B, B+K]
        loss    = (CE(sim_i2t, y_i2t) + CE(sim_t2i, y_t2i)) / 2,   CE(s, y) = mean_i -sum_j y_ij log_softmax(s_i)_j

    Targets y are one-hot on the diagonal of the first B columns (pair i matches column i), or with
    `soft_targets=(sim_i2t_m, sim_t2i_m, alpha)` BLIP's momentum distillation y = alpha * softmax(sim_m) +
    (1 - alpha) * one-hot.

    image_feat, text_feat: [B, D] projections of the online encoders (normalised here; already-normalised input is
        unchanged). temp: scalar tensor (learnable; clamp it with `clamp_temperature`) or float.
    image_feat_all, text_feat_all: [B+K, D] for the feature queue, both or neither: rows 0..B-1 are this batch's
        (momentum) features, rows B.. the queue. Without them the in-batch features are the candidates (K = 0).
    """
    if image_feat.ndim != 2 or image_feat.shape != text_feat.shape:
        raise ValueError(f"image_feat and text_feat must both be [B, D]; got {tuple(image_feat.shape)} and "
                         f"{tuple(text_feat.shape)}")
    if (image_feat_all is None) != (text_feat_all is None):
        raise ValueError("pass both image_feat_all and text_feat_all (the queue holds image and text features) "
                         "or neither")
    batch = image_feat.shape[0]

    image_feat = F.normalize(image_feat, dim=-1)  # [B, D]
    text_feat = F.normalize(text_feat, dim=-1)  # [B, D]
    if image_feat_all is None:
        image_feat_all, text_feat_all = image_feat, text_feat
    else:
        for name, feats in (("image_feat_all", image_feat_all), ("text_feat_all", text_feat_all)):
            if feats.ndim != 2 or feats.shape[0] < batch or feats.shape[1] != image_feat.shape[1]:
                raise ValueError(f"{name} must be [B+K, D] with B={batch}, D={image_feat.shape[1]}; "
                                 f"got {tuple(feats.shape)}")
        image_feat_all = F.normalize(image_feat_all, dim=-1)  # [B+K, D]
        text_feat_all = F.normalize(text_feat_all, dim=-1)  # [B+K, D]

    sim_i2t = image_feat @ text_feat_all.T / temp  # [B, B+K]
    sim_t2i = text_feat @ image_feat_all.T / temp  # [B, B+K]

    if soft_targets is None:
        # One-hot targets on the diagonal of the first B columns == class index i for row i.
        labels = torch.arange(batch, device=sim_i2t.device)  # [B]
        loss_i2t = F.cross_entropy(sim_i2t, labels)
        loss_t2i = F.cross_entropy(sim_t2i, labels)
    else:
        sim_i2t_m, sim_t2i_m, alpha = soft_targets
        if sim_i2t_m.shape != sim_i2t.shape or sim_t2i_m.shape != sim_t2i.shape:
            raise ValueError(f"soft_targets logits must match the similarity shapes {tuple(sim_i2t.shape)}; got "
                             f"{tuple(sim_i2t_m.shape)} and {tuple(sim_t2i_m.shape)}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"soft_targets alpha must lie in [0, 1]; got {alpha}")
        loss_i2t = _soft_cross_entropy(sim_i2t, _mixed_targets(sim_i2t_m, float(alpha)))
        loss_t2i = _soft_cross_entropy(sim_t2i, _mixed_targets(sim_t2i_m, float(alpha)))

    return ItcOutput((loss_i2t + loss_t2i) / 2, loss_i2t, loss_t2i, sim_i2t, sim_t2i)


def _sample_negatives(sim: Tensor, forbidden: Tensor, generator: torch.Generator | None, what: str,
                      uniform_share: float) -> Tensor:
    """One index per row drawn with probability (1 - u) * softmax(sim) + u * uniform over the allowed columns,
    u = uniform_share; sim, forbidden [B, B]."""
    impossible = forbidden.all(dim=1)  # [B]
    if impossible.any():
        rows = impossible.nonzero().flatten().tolist()
        raise ValueError(f"no allowed negative {what} for rows {rows}: every candidate is the positive or "
                         "marked same_item")
    # Masking logits with -inf before the softmax gives forbidden pairs exactly zero probability (BLIP adds 1e-4
    # and zeroes only the diagonal, which would still draw marked duplicates).
    probs = F.softmax(sim.float().masked_fill(forbidden, float("-inf")), dim=1)  # [B, B]
    if uniform_share:
        allowed = (~forbidden).float()  # [B, B]
        probs = (1.0 - uniform_share) * probs + uniform_share * allowed / allowed.sum(dim=1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]


def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    generator: torch.Generator | None = None,
    same_item: Tensor | None = None,
    uniform_share: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """BLIP's ITM hard-negative mining: one negative text per image and one negative image per text.

        P(neg text j | image i) = softmax_j(sim_i2t[i, j]) over j != i and not same_item[i, j]
        P(neg image j | text i) = softmax_j(sim_t2i[i, j]) over j != i and not same_item[j, i]

    uniform_share u in [0, 1] mixes in random negatives: P = (1 - u) * softmax + u * uniform over the same allowed
        candidates (u = 0: BLIP). Hard negatives alone can leave a freshly initialised ITM head nothing it can
        learn yet (at worst pairs the inputs cannot tell apart, whose best answer is the constant P(match) = 1/3);
        random ones add easy mismatches.

    sim_i2t, sim_t2i: [B, >=B] logits (e.g. `ItcOutput.sim_i2t`); only the first B columns are used, because only
        in-batch images/texts can be fed to the image-grounded text encoder (queue entries are features only).
    same_item: optional bool [B, B]; same_item[i, j] True means image i and text j are also a positive pair
        (duplicate titles or images); such pairs are never drawn in either direction.
    generator: optional torch.Generator (on sim's device) for reproducible draws.
    Returns (neg_text_idx [B], neg_image_idx [B]): neg_text_idx[i] is the text paired with image i,
    neg_image_idx[i] the image paired with text i. Raises ValueError when a row has no allowed negative.
    """
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share must lie in [0, 1]; got {uniform_share}")
    with torch.no_grad():
        batch = sim_i2t.shape[0]
        if sim_i2t.ndim != 2 or sim_t2i.shape[0] != batch or min(sim_i2t.shape[1], sim_t2i.shape[1]) < batch:
            raise ValueError(f"sim_i2t and sim_t2i must be [B, >=B]; got {tuple(sim_i2t.shape)} and "
                             f"{tuple(sim_t2i.shape)}")
        forbidden = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)  # [B, B] the positives
        if same_item is not None:
            if same_item.shape != (batch, batch):
                raise ValueError(f"same_item must be [B, B] = [{batch}, {batch}]; got {tuple(same_item.shape)}")
            forbidden = forbidden | same_item.to(device=sim_i2t.device, dtype=torch.bool)
        neg_text_idx = _sample_negatives(sim_i2t[:, :batch].detach(), forbidden, generator, "text", uniform_share)
        # Row i of sim_t2i is text i; text i and image j are a positive pair iff same_item[j, i]: transpose.
        neg_image_idx = _sample_negatives(sim_t2i[:, :batch].detach(), forbidden.T, generator, "image",
                                          uniform_share)
    return neg_text_idx, neg_image_idx


def itm_loss(itm_logits_pos: Tensor, itm_logits_neg: Tensor) -> ItmOutput:
    """Image-text matching: binary cross-entropy over positive and hard-negative pairs (BLIP: class 1 = match).

        logits = cat(itm_logits_pos, itm_logits_neg)   [3B, 2]
        labels = [1] * B + [0] * 2B
        loss   = mean CE(logits, labels);  accuracy = mean(argmax(logits) == labels)

    itm_logits_pos: [B, 2] for the matched pairs; itm_logits_neg: [2B, 2] for (image, negative text) and
    (negative image, text) pairs (any number of negative rows is accepted).
    """
    if itm_logits_pos.ndim != 2 or itm_logits_pos.shape[1] != 2 or itm_logits_neg.ndim != 2 \
            or itm_logits_neg.shape[1] != 2:
        raise ValueError(f"ITM logits must be [*, 2]; got {tuple(itm_logits_pos.shape)} and "
                         f"{tuple(itm_logits_neg.shape)}")
    logits = torch.cat([itm_logits_pos, itm_logits_neg], dim=0)  # [3B, 2]
    labels = torch.cat([
        torch.ones(itm_logits_pos.shape[0], dtype=torch.long, device=logits.device),
        torch.zeros(itm_logits_neg.shape[0], dtype=torch.long, device=logits.device),
    ])  # [3B]
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return ItmOutput(loss, accuracy)


def pqc_loss(
    product_emb: Tensor,
    pos_query_emb: Tensor,
    neg_query_emb: Tensor | None,
    temp: Tensor | float,
    *,
    in_batch_negatives: bool = True,
    neg_mask: Tensor | None = None,
    pos_query_ids: Tensor | None = None,
    neg_query_ids: Tensor | None = None,
) -> PqcOutput:
    """Product-query contrastive loss (DashCLIP stage 2, docs/design.md section 5).

        L = -(1/B) sum_i log( exp(s(C_i, Q_i+)/tau) / (exp(s(C_i, Q_i+)/tau) + sum_{q in Neg_i} exp(s(C_i, q)/tau)) )

    s = cosine (inputs are normalised here), tau = temp. Neg_i = the explicit negatives Q_ij- of product i, and with
    in_batch_negatives=True also every other product's positive Q_k+ and explicit negatives Q_kj- (k != i).

    product_emb: [B, D] multimodal projections C_i. pos_query_emb: [B, D]. neg_query_emb: [B, N, D] or None.
    neg_mask: [B, N] bool, False = padding (product with fewer than N negatives); ignored everywhere, including
        as an in-batch negative of other rows.
    pos_query_ids: [B] optional; a candidate with the same query id as Q_i+ is not a negative of row i (the same
        query can be the positive of several products in a batch). neg_query_ids: [B, N] optional, the same rule
        for explicit negatives (a query irrelevant to product k may be relevant to product i); needs pos_query_ids.
    accuracy: share of rows whose positive has a strictly higher similarity than every negative of that row.

    Nothing here depends on which side is the product: stage 2's query -> product direction (Stage2Config.symmetric)
    calls it with the queries as rows, their products as positives, each query's negative products as the explicit
    negatives and the query ids as pos_query_ids (a batch product that is another positive of the same query is
    then not a negative).
    """
    if product_emb.ndim != 2 or pos_query_emb.shape != product_emb.shape:
        raise ValueError(f"product_emb and pos_query_emb must both be [B, D]; got {tuple(product_emb.shape)} and "
                         f"{tuple(pos_query_emb.shape)}")
    batch, dim = product_emb.shape
    if neg_query_emb is None:
        if not in_batch_negatives:
            raise ValueError("pqc_loss needs negatives: pass neg_query_emb or set in_batch_negatives=True")
        if neg_mask is not None or neg_query_ids is not None:
            raise ValueError("neg_mask / neg_query_ids given without neg_query_emb")
        num_neg = 0
    else:
        if neg_query_emb.ndim != 3 or neg_query_emb.shape[0] != batch or neg_query_emb.shape[2] != dim:
            raise ValueError(f"neg_query_emb must be [B, N, D] = [{batch}, N, {dim}]; "
                             f"got {tuple(neg_query_emb.shape)}")
        num_neg = neg_query_emb.shape[1]
    if neg_mask is not None and neg_mask.shape != (batch, num_neg):
        raise ValueError(f"neg_mask must be [B, N] = [{batch}, {num_neg}]; got {tuple(neg_mask.shape)}")
    if pos_query_ids is not None and pos_query_ids.shape != (batch,):
        raise ValueError(f"pos_query_ids must be [B] = [{batch}]; got {tuple(pos_query_ids.shape)}")
    if neg_query_ids is not None:
        if pos_query_ids is None:
            raise ValueError("neg_query_ids is compared with pos_query_ids: pass both")
        if neg_query_ids.shape != (batch, num_neg):
            raise ValueError(f"neg_query_ids must be [B, N] = [{batch}, {num_neg}]; got {tuple(neg_query_ids.shape)}")

    device = product_emb.device
    products = F.normalize(product_emb, dim=-1)  # [B, D]
    positives = F.normalize(pos_query_emb, dim=-1)  # [B, D]
    pos_logit = (products * positives).sum(dim=-1) / temp  # [B]

    # Candidates for every row: the B positives, then the B*N explicit negatives flattened (column B + k*N + j is
    # Q_kj-). One matmul scores them all; a bool mask [B, B + B*N] then says which are negatives of which row.
    eye = torch.eye(batch, dtype=torch.bool, device=device)  # [B, B]
    # Positive columns: row i's own positive is the numerator, never a negative; the others only count in-batch.
    neg_among_pos = ~eye if in_batch_negatives else torch.zeros_like(eye)  # [B, B]
    if pos_query_ids is not None:
        ids = pos_query_ids.to(device)
        neg_among_pos = neg_among_pos & (ids[:, None] != ids[None, :])  # the same query is not its own negative
    candidates, negative = positives, neg_among_pos  # [B, D], [B, B]
    if num_neg:
        negatives = F.normalize(neg_query_emb, dim=-1).reshape(batch * num_neg, dim)  # [B*N, D]
        # Row i may use Q_kj- if it is not padding and (in-batch, or k == i).
        keep = (neg_mask.to(device=device, dtype=torch.bool) if neg_mask is not None
                else torch.ones(batch, num_neg, dtype=torch.bool, device=device)).reshape(1, -1)  # [1, B*N]
        neg_among_neg = keep if in_batch_negatives else keep & eye.repeat_interleave(num_neg, dim=1)  # [B|1, B*N]
        if neg_query_ids is not None:
            same = pos_query_ids.to(device)[:, None] == neg_query_ids.to(device).reshape(1, -1)  # [B, B*N]
            neg_among_neg = neg_among_neg & ~same
        candidates = torch.cat([positives, negatives], dim=0)  # [B + B*N, D]
        negative = torch.cat([neg_among_pos, neg_among_neg.expand(batch, -1)], dim=1)  # [B, B + B*N]
    logits = products @ candidates.T / temp  # [B, B + B*N]

    neg_logits = logits.masked_fill(~negative, float("-inf"))  # [B, C]
    # log(exp(p) + sum exp(n)) - p, computed stably; masked candidates contribute exp(-inf) = 0.
    log_denominator = torch.logsumexp(torch.cat([pos_logit[:, None], neg_logits], dim=1), dim=1)  # [B]
    loss = (log_denominator - pos_logit).mean()

    with torch.no_grad():
        pos_sim = (products * positives).sum(dim=-1)  # [B]
        # Compare in logit space (same order as cosine for temp > 0); a row without negatives counts as correct.
        accuracy = (pos_logit.detach() > neg_logits.detach().max(dim=1).values).float().mean()
        chance = torch.log1p(negative.sum(dim=1).float()).mean()
    return PqcOutput(loss, pos_sim, accuracy, chance)


def l2sp_loss(params: list[Tensor], anchors: list[Tensor], weight: float) -> Tensor:
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning"): pull fine-tuned
    weights toward their pretrained starting point instead of toward zero,

        weight / 2 * sum_k ||w_k - w0_k||^2

    params: the trained tensors; anchors: their starting values (same shapes, no gradient)."""
    if len(params) != len(anchors):
        raise ValueError(f"l2sp_loss: {len(params)} parameters but {len(anchors)} anchors")
    if not params:
        return torch.zeros(())
    total = sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors))
    return 0.5 * weight * total
