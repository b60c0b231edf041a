"""Faithful explanations: relevance of input tokens for a model's outputs.

- :func:`explain` (also ``attnkit.explain``) -> :class:`Explanation` ``relevance (T_out, T_in)``
  by AttnLRP, gradient-weighted rollout, attention flow, rollout, raw attention,
  input × gradient or integrated gradients (:data:`METHODS`);
- :mod:`.faithfulness`: the measures (deletion/insertion curves and AOPC, the pointing game,
  the randomisation check, bootstrap intervals);
- :mod:`.rules`: AttnLRP's rules as a :class:`~torch.overrides.TorchFunctionMode`.

A package named ``explain`` would shadow the function ``attnkit.explain``, hence ``relevance``.
"""

from __future__ import annotations

from attnkit.relevance.api import METHODS, Explanation, explain, explain_subject

__all__ = ["METHODS", "Explanation", "explain", "explain_subject"]
