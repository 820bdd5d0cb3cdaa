"""embeddings.loss against hand-written numpy references, plus properties of the losses and of hard-negative mining."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embeddings.loss import (TEMP_MAX, TEMP_MIN, SoftTargets, clamp_temperature, itc_loss, itm_loss, l2sp_loss,
                             pqc_loss, sample_hard_negatives)

B, D, N, K = 5, 8, 3, 7
TOL = 1e-5


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _feats(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


# --------------------------------------------------------------------------------------- numpy references


def _norm(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _log_softmax(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


def _ref_itc(img, txt, temp, img_all=None, txt_all=None, soft=None):
    """Loops written straight from the BLIP formulas, in float64."""
    img, txt = _norm(img.astype(np.float64)), _norm(txt.astype(np.float64))
    img_all = img if img_all is None else _norm(img_all.astype(np.float64))
    txt_all = txt if txt_all is None else _norm(txt_all.astype(np.float64))
    b, c = img.shape[0], txt_all.shape[0]
    sim_i2t = np.array([[img[i] @ txt_all[j] / temp for j in range(c)] for i in range(b)])
    sim_t2i = np.array([[txt[i] @ img_all[j] / temp for j in range(c)] for i in range(b)])
    onehot = np.zeros((b, c))
    for i in range(b):
        onehot[i, i] = 1.0
    tgt_i2t = tgt_t2i = onehot
    if soft is not None:
        sim_i2t_m, sim_t2i_m, alpha = soft
        tgt_i2t = alpha * np.exp(_log_softmax(sim_i2t_m)) + (1 - alpha) * onehot
        tgt_t2i = alpha * np.exp(_log_softmax(sim_t2i_m)) + (1 - alpha) * onehot
    l_i2t = -np.mean([(tgt_i2t[i] * _log_softmax(sim_i2t)[i]).sum() for i in range(b)])
    l_t2i = -np.mean([(tgt_t2i[i] * _log_softmax(sim_t2i)[i]).sum() for i in range(b)])
    return (l_i2t + l_t2i) / 2, l_i2t, l_t2i, sim_i2t, sim_t2i


def _ref_pqc(prod, pos, neg, temp, in_batch, mask=None, pos_ids=None, neg_ids=None):
    """Row by row: gather row i's negatives explicitly, then -log(e^p / (e^p + sum e^n))."""
    prod, pos = _norm(prod.astype(np.float64)), _norm(pos.astype(np.float64))
    b = prod.shape[0]
    n = 0 if neg is None else neg.shape[1]
    neg = None if neg is None else _norm(neg.astype(np.float64))
    losses, correct = [], []
    for i in range(b):
        cands = []
        for k in range(b):
            if k != i and in_batch and (pos_ids is None or pos_ids[k] != pos_ids[i]):
                cands.append(pos[k])
            for j in range(n):
                if (k == i or in_batch) and (mask is None or mask[k, j]) \
                        and (neg_ids is None or neg_ids[k, j] != pos_ids[i]):
                    cands.append(neg[k, j])
        p = prod[i] @ pos[i]
        negs = np.array([prod[i] @ q for q in cands])
        losses.append(-math.log(math.exp(p / temp) / (math.exp(p / temp) + np.exp(negs / temp).sum())))
        correct.append(len(negs) == 0 or p > negs.max())
    return float(np.mean(losses)), float(np.mean(correct))


# ----------------------------------------------------------------------------------------------------- ITC


def test_itc_matches_reference():
    img, txt = _feats(B, D, seed=1), _feats(B, D, seed=2)
    out = itc_loss(_t(img), _t(txt), torch.tensor(0.07))
    loss, l_i2t, l_t2i, s_i2t, s_t2i = _ref_itc(img, txt, 0.07)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    assert out.loss_i2t.item() == pytest.approx(l_i2t, abs=TOL)
    assert out.loss_t2i.item() == pytest.approx(l_t2i, abs=TOL)
    assert abs(l_i2t - l_t2i) > 1e-3  # the two directions really differ on this data: both are tested
    np.testing.assert_allclose(out.sim_i2t.numpy(), s_i2t, atol=1e-4, rtol=TOL)
    np.testing.assert_allclose(out.sim_t2i.numpy(), s_t2i, atol=1e-4, rtol=TOL)


def test_itc_normalises_its_inputs():
    img, txt = _feats(B, D, seed=1), _feats(B, D, seed=2)
    scaled = itc_loss(_t(img * 3.0), _t(txt * 0.2), 0.07)
    assert scaled.loss.item() == pytest.approx(_ref_itc(img, txt, 0.07)[0], abs=TOL)


def test_itc_with_queue_matches_reference():
    img, txt = _feats(B, D, seed=3), _feats(B, D, seed=4)
    # Batch rows of the "all" features come from momentum encoders: close to, not equal to, the online ones.
    img_all = np.concatenate([img + 0.1 * _feats(B, D, seed=5), _feats(K, D, seed=6)])
    txt_all = np.concatenate([txt + 0.1 * _feats(B, D, seed=7), _feats(K, D, seed=8)])
    out = itc_loss(_t(img), _t(txt), torch.tensor(0.1), image_feat_all=_t(img_all), text_feat_all=_t(txt_all))
    loss, l_i2t, l_t2i, s_i2t, _ = _ref_itc(img, txt, 0.1, img_all, txt_all)
    assert out.sim_i2t.shape == out.sim_t2i.shape == (B, B + K)
    assert out.loss_i2t.item() == pytest.approx(l_i2t, abs=TOL)
    assert out.loss_t2i.item() == pytest.approx(l_t2i, abs=TOL)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    # The queue enlarges the denominator: the loss differs from the in-batch loss.
    assert abs(loss - _ref_itc(img, txt, 0.1, img_all[:B], txt_all[:B])[0]) > 1e-3


def test_itc_queue_needs_both_sides():
    img = _t(_feats(B, D))
    with pytest.raises(ValueError, match="both"):
        itc_loss(img, img, 0.07, image_feat_all=img)


def test_itc_with_soft_targets_matches_reference():
    img, txt = _feats(B, D, seed=9), _feats(B, D, seed=10)
    img_all = np.concatenate([img, _feats(K, D, seed=11)])
    txt_all = np.concatenate([txt, _feats(K, D, seed=12)])
    sim_i2t_m, sim_t2i_m = 3 * _feats(B, B + K, seed=13), 3 * _feats(B, B + K, seed=14)
    for alpha in (0.0, 0.4, 1.0):
        out = itc_loss(_t(img), _t(txt), torch.tensor(0.07), image_feat_all=_t(img_all),
                         text_feat_all=_t(txt_all),
                         soft_targets=SoftTargets(_t(sim_i2t_m), _t(sim_t2i_m), alpha))
        loss, l_i2t, l_t2i, _, _ = _ref_itc(img, txt, 0.07, img_all, txt_all, (sim_i2t_m, sim_t2i_m, alpha))
        assert out.loss_i2t.item() == pytest.approx(l_i2t, abs=TOL), alpha
        assert out.loss_t2i.item() == pytest.approx(l_t2i, abs=TOL), alpha
        assert out.loss.item() == pytest.approx(loss, abs=TOL), alpha
    # alpha = 0 is the hard-target loss; a plain tuple works like SoftTargets.
    hard = itc_loss(_t(img), _t(txt), 0.07, image_feat_all=_t(img_all), text_feat_all=_t(txt_all))
    zero = itc_loss(_t(img), _t(txt), 0.07, image_feat_all=_t(img_all), text_feat_all=_t(txt_all),
                      soft_targets=(_t(sim_i2t_m), _t(sim_t2i_m), 0.0))
    assert zero.loss.item() == pytest.approx(hard.loss.item(), abs=TOL)


def test_itc_soft_targets_send_no_gradient_to_the_teacher():
    img, txt = _t(_feats(B, D, seed=1)).requires_grad_(), _t(_feats(B, D, seed=2))
    sim_m = _t(_feats(B, B, seed=3)).requires_grad_()
    itc_loss(img, txt, 0.07, soft_targets=(sim_m, sim_m, 0.4)).loss.backward()
    assert img.grad is not None and sim_m.grad is None


def test_aligned_pairs_give_lower_itc_loss_than_shuffled():
    img = _feats(6, D, seed=20)
    txt = img + 0.1 * _feats(6, D, seed=21)
    aligned = itc_loss(_t(img), _t(txt), 0.07).loss.item()
    shuffled = itc_loss(_t(img), _t(np.roll(txt, 1, axis=0)), 0.07).loss.item()
    assert aligned < 0.5 < math.log(6) < shuffled


def test_itc_gradients_reach_temperature_and_features():
    temp = torch.nn.Parameter(torch.tensor(0.07))
    img = _t(_feats(B, D, seed=1)).requires_grad_()
    txt = _t(_feats(B, D, seed=2)).requires_grad_()
    queue = _t(_feats(K, D, seed=3))
    out = itc_loss(img, txt, temp, image_feat_all=torch.cat([img.detach(), queue]),
                     text_feat_all=torch.cat([txt.detach(), queue]), soft_targets=(_t(_feats(B, B + K)),) * 2 + (0.4,))
    out.loss.backward()
    for g in (temp.grad, img.grad, txt.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# ------------------------------------------------------------------------------------------ temperature


def test_clamp_temperature_in_place_keeps_the_parameter_trainable():
    for start, expected in ((1.0, 0.5), (1e-5, 0.001), (0.07, 0.07)):
        temp = torch.nn.Parameter(torch.tensor(start))
        same = clamp_temperature(temp)
        assert same is temp and temp.is_leaf and temp.requires_grad
        assert temp.item() == pytest.approx(expected)
        itc_loss(_t(_feats(B, D, seed=1)), _t(_feats(B, D, seed=2)), temp).loss.backward()
        assert temp.grad is not None and temp.grad.item() != 0.0  # a gradient-cutting clamp would give 0
    assert clamp_temperature(2.0) == 0.5 and clamp_temperature(0.0) == 0.001 and clamp_temperature(0.2) == 0.2
    assert TEMP_MIN == 0.001 and TEMP_MAX == 0.5


# ----------------------------------------------------------------------------------------- hard negatives


def _sims_with_one_hard_negative(b=B, hard=10.0, pos=20.0, shift=1):
    """Logits: positives on the diagonal (largest), one strongly similar negative per row at (i + shift) % b."""
    sim = torch.zeros(b, b)
    sim.fill_diagonal_(pos)
    sim[torch.arange(b), (torch.arange(b) + shift) % b] = hard
    return sim


def test_hard_negatives_never_return_the_positive_and_prefer_the_most_similar():
    # i2t and t2i get different hard negatives so that mixing up the two directions fails.
    sim_i2t, sim_t2i = _sims_with_one_hard_negative(shift=1), _sims_with_one_hard_negative(shift=2)
    gen = torch.Generator().manual_seed(0)
    hits_t = hits_i = 0
    rows = torch.arange(B)
    for _ in range(200):
        neg_text, neg_image = sample_hard_negatives(sim_i2t, sim_t2i, generator=gen)
        assert neg_text.shape == neg_image.shape == (B,) and neg_text.dtype == torch.long
        assert (neg_text != rows).all() and (neg_image != rows).all()
        hits_t += (neg_text == (rows + 1) % B).sum().item()
        hits_i += (neg_image == (rows + 2) % B).sum().item()
    assert hits_t > 0.8 * 200 * B and hits_i > 0.8 * 200 * B


def test_hard_negatives_follow_softmax_of_similarity():
    sim = torch.tensor([[5.0, 1.0, 0.0, -1.0], [0.5, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [2.0, 1.0, 0.0, 5.0]])
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(4, 4)
    draws = 400
    for _ in range(draws):
        neg_text, _ = sample_hard_negatives(sim, sim.T.contiguous(), generator=gen)
        counts[torch.arange(4), neg_text] += 1
    expected = torch.softmax(sim.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")), dim=1)
    # Binomial sd <= 0.025 at 400 draws (and the seed is fixed); uniform sampling would be 0.33 off in row 0.
    assert (counts / draws - expected).abs().max() < 0.08


def test_hard_negatives_skip_pairs_marked_same_item():
    # Image 0 and text 2 are also a positive pair (duplicate title), and so are image 3 / text 1 — marked in one
    # direction only, so texts must use the transpose. Their sims are the largest off-diagonal ones.
    sim = torch.zeros(B, B)
    sim.fill_diagonal_(5.0)
    sim[0, 2] = sim[3, 1] = 8.0
    same_item = torch.zeros(B, B, dtype=torch.bool)
    same_item[0, 2] = same_item[3, 1] = True
    gen = torch.Generator().manual_seed(2)
    for _ in range(200):
        neg_text, neg_image = sample_hard_negatives(sim, sim.T.contiguous(), generator=gen, same_item=same_item)
        assert neg_text[0] != 2 and neg_text[3] != 1  # image 0 never gets text 2, image 3 never text 1
        assert neg_image[2] != 0 and neg_image[1] != 3  # text 2 never gets image 0, text 1 never image 3
        assert (neg_text != torch.arange(B)).all() and (neg_image != torch.arange(B)).all()


def test_hard_negatives_are_reproducible_gradient_free_and_ignore_queue_columns():
    sim = _t(_feats(B, B + K, seed=30)).requires_grad_()
    a = sample_hard_negatives(sim, sim, generator=torch.Generator().manual_seed(3))
    b = sample_hard_negatives(sim, sim, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not a[0].requires_grad and not a[1].requires_grad
    assert (a[0] < B).all() and (a[1] < B).all()  # queue columns have no in-batch image/text to pair with


def test_hard_negatives_refuse_rows_without_any_allowed_negative():
    with pytest.raises(ValueError, match="rows"):
        sample_hard_negatives(torch.zeros(3, 3), torch.zeros(3, 3), same_item=torch.ones(3, 3, dtype=torch.bool))


def test_hard_negatives_mix_in_a_uniform_share():
    sim = torch.tensor([[5.0, 9.0, 0.0, -1.0], [0.5, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 9.0], [2.0, 1.0, 0.0, 5.0]])
    same_item = torch.zeros(4, 4, dtype=torch.bool)
    same_item[3, 0] = True  # image 3 / text 0: a duplicate, never drawn even by the uniform part
    gen = torch.Generator().manual_seed(4)
    counts = torch.zeros(4, 4)
    draws, u = 400, 0.5
    for _ in range(draws):
        neg_text, _ = sample_hard_negatives(sim, sim.T.contiguous(), generator=gen, same_item=same_item,
                                              uniform_share=u)
        counts[torch.arange(4), neg_text] += 1
    forbidden = torch.eye(4, dtype=torch.bool) | same_item
    allowed = (~forbidden).float()
    expected = (1 - u) * torch.softmax(sim.masked_fill(forbidden, float("-inf")), dim=1) \
        + u * allowed / allowed.sum(1, keepdim=True)
    assert counts[3, 0] == 0 and (counts.diagonal() == 0).all()
    # Binomial sd <= 0.025 at 400 draws; pure hard negatives would put 0.98 on column 1 of row 0, not 0.66.
    assert (counts / draws - expected).abs().max() < 0.08


def test_hard_negatives_refuse_a_uniform_share_outside_0_1():
    with pytest.raises(ValueError, match="uniform_share"):
        sample_hard_negatives(torch.zeros(3, 3), torch.zeros(3, 3), uniform_share=1.5)


def _train_itm_on_look_alike_world(uniform_share: float, steps: int = 200) -> tuple[float, float]:
    """A world whose pictures show only the product type: G types x M brands, image = one-hot type, title = one-hot
    type + one-hot brand, and an ITC that has learned the types (sim 10 within a type, 0 across). A small MLP ITM
    head is trained with negatives from sample_hard_negatives. Returns (mean ITM loss of the last 50 steps,
    held-out AUC of P(match) for positives vs negatives of another type)."""
    G, M = 4, 8
    types = torch.arange(G).repeat_interleave(M)  # [G*M]
    brands = torch.arange(M).repeat(G)  # [G*M]
    image = F.one_hot(types, G).float()  # [G*M, G]: no brand in the picture
    title = torch.cat([F.one_hot(types, G), F.one_hot(brands, M)], dim=1).float()  # [G*M, G+M]
    sim = 10.0 * (types[:, None] == types[None, :]).float()  # [G*M, G*M]
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(2 * G + M, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    pair = lambda img, txt: head(torch.cat([image[img], title[txt]], dim=1))  # [n, 2] logits
    rows, losses = torch.arange(G * M), []
    for _ in range(steps):
        neg_text, neg_image = sample_hard_negatives(sim, sim, generator=gen, uniform_share=uniform_share)
        out = itm_loss(pair(rows, rows), pair(torch.cat([rows, neg_image]), torch.cat([neg_text, rows])))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    with torch.no_grad():
        other_type = (rows + M) % (G * M)  # the same brand of the next type
        p_pos = torch.softmax(pair(rows, rows), 1)[:, 1]
        p_neg = torch.softmax(pair(rows, other_type), 1)[:, 1]
    auc = (p_pos[:, None] > p_neg[None, :]).float().mean().item() \
        + 0.5 * (p_pos[:, None] == p_neg[None, :]).float().mean().item()
    return float(np.mean(losses[-50:])), auc


def test_random_negative_share_lets_itm_learn_when_hard_negatives_look_alike():
    # With hard negatives only, every negative is another brand of the same type, whose picture is the positive's,
    # so the best answer is the constant P(match) = 1/3 (loss = its entropy) and nothing is learned. A random
    # share adds other-type negatives, which the head must learn to reject.
    constant = -(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)  # 0.6365
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend on a shared CPU (10x slower)
    try:
        hard_loss, _ = _train_itm_on_look_alike_world(uniform_share=0.0)
        mixed_loss, mixed_auc = _train_itm_on_look_alike_world(uniform_share=0.5)
    finally:
        torch.set_num_threads(threads)
    assert hard_loss > constant - 0.03
    assert mixed_loss < constant - 0.1
    assert mixed_auc > 0.95


# ----------------------------------------------------------------------------------------------------- ITM


def test_itm_matches_reference():
    pos, neg = _feats(B, 2, seed=40), _feats(2 * B, 2, seed=41)
    out = itm_loss(_t(pos), _t(neg))
    logits = np.concatenate([pos, neg])
    labels = np.array([1] * B + [0] * 2 * B)
    ref = -np.mean([_log_softmax(logits)[r, labels[r]] for r in range(3 * B)])
    acc = np.mean([int(np.argmax(logits[r]) == labels[r]) for r in range(3 * B)])
    assert out.loss.item() == pytest.approx(ref, abs=TOL)
    assert out.accuracy.item() == pytest.approx(acc, abs=TOL)
    assert 0.0 < acc < 1.0  # the data mixes right and wrong answers


def test_itm_class_one_means_match():
    pos = torch.tensor([[-3.0, 3.0]]).repeat(B, 1)
    neg = torch.tensor([[3.0, -3.0]]).repeat(2 * B, 1)
    right = itm_loss(pos, neg)
    assert right.accuracy.item() == 1.0 and right.loss.item() < 0.01
    wrong = itm_loss(neg[:B], pos.repeat(2, 1))
    assert wrong.accuracy.item() == 0.0 and wrong.loss.item() > 5.0
    # 1 of 3 rows wrong, hand-computed: accuracy 2/3, loss = (softplus(6) + 2 softplus(-6)) / 3.
    mixed = itm_loss(torch.tensor([[3.0, -3.0]]), torch.tensor([[3.0, -3.0], [3.0, -3.0]]))
    assert mixed.accuracy.item() == pytest.approx(2 / 3)
    assert mixed.loss.item() == pytest.approx((math.log1p(math.exp(6)) + 2 * math.log1p(math.exp(-6))) / 3, abs=TOL)


# ----------------------------------------------------------------------------------------------------- PQC


def _pqc_data(b=B, seed=50):
    return _feats(b, D, seed=seed), _feats(b, D, seed=seed + 1), _feats(b, N, D, seed=seed + 2)


@pytest.mark.parametrize("in_batch", [False, True])
def test_pqc_matches_reference(in_batch):
    prod, pos, neg = _pqc_data()
    out = pqc_loss(_t(prod), _t(pos), _t(neg), torch.tensor(0.1), in_batch_negatives=in_batch)
    loss, acc = _ref_pqc(prod, pos, neg, 0.1, in_batch)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    assert out.accuracy.item() == pytest.approx(acc, abs=TOL)
    np.testing.assert_allclose(out.pos_sim.numpy(), (_norm(prod) * _norm(pos)).sum(-1), atol=TOL)


def test_pqc_in_batch_negatives_change_the_loss():
    prod, pos, neg = _pqc_data()
    own = _ref_pqc(prod, pos, neg, 0.1, in_batch=False)[0]
    both = _ref_pqc(prod, pos, neg, 0.1, in_batch=True)[0]
    assert both > own + 0.1  # so the two parametrised cases above test different denominators
    only_in_batch = pqc_loss(_t(prod), _t(pos), None, 0.1)
    assert only_in_batch.loss.item() == pytest.approx(_ref_pqc(prod, pos, None, 0.1, True)[0], abs=TOL)


@pytest.mark.parametrize("in_batch", [False, True])
def test_pqc_neg_mask_ignores_padding(in_batch):
    prod, pos, neg = _pqc_data(seed=60)
    mask = np.ones((B, N), dtype=bool)
    mask[0, 1:] = False  # product 0 has one negative, product 3 none
    mask[3, :] = False
    neg[~mask] = 50.0 * prod[0]  # padding that would dominate (and be "hard" for product 0) if it were counted
    out = pqc_loss(_t(prod), _t(pos), _t(neg), 0.1, in_batch_negatives=in_batch, neg_mask=torch.tensor(mask))
    loss, acc = _ref_pqc(prod, pos, neg, 0.1, in_batch, mask=mask)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    assert out.accuracy.item() == pytest.approx(acc, abs=TOL)
    assert abs(loss - _ref_pqc(prod, pos, neg, 0.1, in_batch)[0]) > 0.1


def test_pqc_duplicate_positive_queries_are_not_negatives_of_each_other():
    prod, pos, neg = _pqc_data(seed=70)
    ids = np.array([10, 11, 10, 12, 11])
    pos[2], pos[4] = pos[0], pos[1]  # rows 0 and 2 (and 1 and 4) share their positive query
    out = pqc_loss(_t(prod), _t(pos), _t(neg), 0.1, pos_query_ids=torch.tensor(ids))
    loss, acc = _ref_pqc(prod, pos, neg, 0.1, True, pos_ids=ids)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    assert out.accuracy.item() == pytest.approx(acc, abs=TOL)
    assert abs(loss - _ref_pqc(prod, pos, neg, 0.1, True)[0]) > 1e-3


def test_pqc_explicit_negatives_equal_to_a_positive_query_are_dropped():
    prod, pos, neg = _pqc_data(seed=80)
    pos_ids = np.arange(B) + 100
    neg_ids = np.arange(B * N).reshape(B, N)
    neg_ids[1, 0] = 100  # product 1's negative is product 0's positive query
    neg[1, 0] = pos[0]
    mask = np.ones((B, N), dtype=bool)
    mask[4, 2] = False
    out = pqc_loss(_t(prod), _t(pos), _t(neg), 0.1, neg_mask=torch.tensor(mask),
                     pos_query_ids=torch.tensor(pos_ids), neg_query_ids=torch.tensor(neg_ids))
    loss, _ = _ref_pqc(prod, pos, neg, 0.1, True, mask=mask, pos_ids=pos_ids, neg_ids=neg_ids)
    assert out.loss.item() == pytest.approx(loss, abs=TOL)
    assert abs(loss - _ref_pqc(prod, pos, neg, 0.1, True, mask=mask)[0]) > 1e-3


def test_pqc_accuracy_counts_rows_whose_positive_wins():
    prod = np.eye(4, D)
    pos = np.eye(4, D) + 0.1 * np.eye(4, D, k=1)
    neg = np.zeros((4, 1, D))
    neg[:, 0, 5] = 1.0  # orthogonal to every product: the positives win ...
    neg[2, 0] = prod[2] * 2  # ... except row 2, whose negative is exactly its product (cosine 1)
    out = pqc_loss(_t(prod), _t(pos), _t(neg), 0.1, in_batch_negatives=False)
    assert out.accuracy.item() == pytest.approx(0.75)


def test_aligned_pairs_give_lower_pqc_loss_than_shuffled():
    prod = _feats(6, D, seed=90)
    pos = prod + 0.1 * _feats(6, D, seed=91)
    neg = _feats(6, N, D, seed=92)
    aligned = pqc_loss(_t(prod), _t(pos), _t(neg), 0.07)
    shuffled = pqc_loss(_t(prod), _t(np.roll(pos, 1, axis=0)), _t(neg), 0.07)
    assert aligned.loss.item() < 0.5 < shuffled.loss.item()
    assert aligned.accuracy.item() == 1.0 and shuffled.accuracy.item() < 0.5


def test_pqc_gradients_reach_temperature_and_embeddings():
    prod, pos, neg = (_t(a).requires_grad_() for a in _pqc_data(seed=95))
    temp = torch.nn.Parameter(torch.tensor(0.07))
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0] = False
    pqc_loss(prod, pos, neg, temp, neg_mask=mask).loss.backward()
    for g in (temp.grad, prod.grad, pos.grad, neg.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.all(neg.grad[0] == 0)  # padding receives no gradient


def test_pqc_without_any_negatives_is_an_error():
    prod, pos, _ = _pqc_data()
    with pytest.raises(ValueError, match="negatives"):
        pqc_loss(_t(prod), _t(pos), None, 0.1, in_batch_negatives=False)


def test_pqc_chance_is_the_loss_of_an_encoder_that_scores_everything_alike():
    # collapsed embeddings: every product and query the same vector -> every logit equal -> loss = log(1 + #neg)
    same = torch.ones(B, D)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 1:] = False  # row 0 has 1 explicit negative; in-batch, every row sees the other rows' candidates
    out = pqc_loss(same, same, torch.ones(B, N, D), 0.1, neg_mask=mask)
    negatives = (B - 1) + int(mask.sum())  # other positives + every unpadded explicit negative
    assert out.chance.item() == pytest.approx(math.log(1 + negatives), abs=1e-6)
    assert out.loss.item() == pytest.approx(out.chance.item(), abs=1e-5)
    own = pqc_loss(same, same, torch.ones(B, N, D), 0.1, in_batch_negatives=False, neg_mask=mask)
    assert own.chance.item() == pytest.approx((math.log(2) + (B - 1) * math.log(1 + N)) / B, abs=1e-6)
    assert own.loss.item() == pytest.approx(own.chance.item(), abs=1e-5)


def test_l2sp_by_hand():
    w0 = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    w = [torch.tensor([1.5, 0.0], requires_grad=True), torch.tensor([[-0.5]], requires_grad=True)]
    # 0.3 / 2 * ((0.5^2 + 2^2) + 1^2) = 0.15 * 5.25
    out = l2sp_loss(w, w0, 0.3)
    assert out.item() == pytest.approx(0.7875)
    out.backward()
    torch.testing.assert_close(w[0].grad, 0.3 * (w[0].detach() - w0[0]))  # pulls toward the start, not toward 0
    assert l2sp_loss([t.detach().clone() for t in w0], w0, 0.3).item() == 0.0
    with pytest.raises(ValueError, match="2 parameters but 1 anchors"):
        l2sp_loss(w, w0[:1], 0.3)
