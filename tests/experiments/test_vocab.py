"""experiments.vocab: the aisles, their departments, and the words of the query grammar."""

from __future__ import annotations

import pytest

from experiments import vocab


def test_aisles_come_department_by_department_and_each_has_one_department():
    aisles = vocab.aisles()
    assert aisles[:5] == vocab.DEPARTMENTS["fresh"] and aisles[-1] == "pet care"
    assert len(set(aisles)) == len(aisles) == sum(len(a) for a in vocab.DEPARTMENTS.values())
    assert vocab.department_of("alcohol") == "drinks" and vocab.department_of("pet care") == "pets"
    with pytest.raises(KeyError, match="unknown aisle 'garden'"):
        vocab.department_of("garden")


def test_every_aisle_lists_types_with_distinct_canonical_names():
    assert set(vocab.AISLE_TYPES) == set(vocab.aisles())
    canonical = [entry.split("|")[0] for types in vocab.AISLE_TYPES.values() for entry in types]
    assert len(canonical) == len(set(canonical))
    assert all(len(types) >= 12 for types in vocab.AISLE_TYPES.values())  # WorldConfig.types_per_aisle's bound


def test_broad_intents_name_known_aisles_and_brands_are_plentiful():
    assert all(set(members) <= set(vocab.aisles()) for members in vocab.BROAD_INTENTS.values())
    assert len(vocab.BRAND_FIRST) * len(vocab.BRAND_SECOND) >= 8 * len(vocab.aisles())  # the default brands
    assert not set(vocab.HOUSE_BRANDS) & {f"{a} {b}" for a in vocab.BRAND_FIRST for b in vocab.BRAND_SECOND}
