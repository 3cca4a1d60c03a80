"""Which runs can be trained together as one stacked bundle: pure rules on run specs, no torch.

Kept apart from batched.py (the batched training loop) so that the runner can group a sweep's runs
into bundles without importing torch (~3 s of CPU on a 2-core machine, paid before any worker
starts); only `batched.worth_batching`, asked for groups of two runs or more, needs the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import Arch

#: Architectures trained as stacked bundles. `resnet` is not: its convolutions would need grouped
#: convolutions over (member, channel) groups, and its per-member GroupNorm/BatchNorm2d layouts, for
#: image runs that are compute-bound already (a width-16 ResNet step is far from dispatch-bound).
STACKABLE_ARCHS: frozenset[str] = frozenset({Arch.MLP.value, Arch.RESMLP.value})

#: Keys of a run's spec that members of one bundle may differ in (the optimizers are elementwise).
PER_MEMBER_KEYS = ("seed", "train.lr", "train.weight_decay")


def bundle_key(spec: RunSpec) -> str | None:
    """Runs with the same key can be trained as one bundle: everything but PER_MEMBER_KEYS is equal
    (device and experiment included). None for a run that is never batched (its arch)."""
    if spec.model.arch not in STACKABLE_ARCHS:
        return None
    d = spec.to_dict()
    for dotted in PER_MEMBER_KEYS:
        *sections, key = dotted.split(".")
        table: dict[str, Any] = d
        for section in sections:
            table = table[section]
        table.pop(key)
    return json.dumps(d, sort_keys=True)


def check_bundle(specs: Sequence[RunSpec]) -> None:
    """Refuse a bundle whose runs cannot be trained as one (see `bundle_key`)."""
    if not specs:
        raise ValueError("a bundle needs at least one run")
    keys = {bundle_key(spec) for spec in specs}
    if None in keys:
        raise ValueError(f"{specs[0].model.arch} runs are not trained in bundles (stackable: "
                         f"{', '.join(sorted(STACKABLE_ARCHS))})")
    if len(keys) > 1:
        raise ValueError(f"a bundle's runs may differ only in {', '.join(PER_MEMBER_KEYS)}")
    if len({spec.key for spec in specs}) < len(specs):
        raise ValueError("a bundle holds each run once")
